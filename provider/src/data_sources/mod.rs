//! Read-only views for outputs, checks and other resources: what the agent runs
//! (`localdr_service_status`, `localdr_balancer_status`) and what a vault holds
//! (`localdr_backups`).

pub mod backups;
pub mod balancer_status;
pub mod service_status;

pub use crate::resources::util::v;
use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

/// A data source's `name` follows the same rules as the resources' names.
pub fn check_name(diags: &mut Diagnostics, name: &Value<String>) {
    if let Value::Value(n) = name {
        if let Err(e) = localdr::naming::validate_name(n) {
            diags.error("Invalid name", format!("{e}."), AttributePath::new("name"));
        }
    }
}

/// The configured name, or an error when it is not known yet.
pub fn known_name(diags: &mut Diagnostics, name: &Value<String>) -> Option<String> {
    match name {
        Value::Value(n) => Some(n.clone()),
        _ => {
            diags.root_error_short("name is not known");
            None
        }
    }
}

/// A computed list of objects with these (name, type) fields.
pub fn object_list(fields: &[(&str, AttributeType)], desc: &str) -> Attribute {
    crate::schema::attr(
        AttributeType::List(Box::new(AttributeType::Object(
            fields
                .iter()
                .map(|(k, t)| (k.to_string(), t.clone()))
                .collect(),
        ))),
        AttributeConstraint::Computed,
        desc,
    )
}
