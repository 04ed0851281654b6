//! Read-only views of what the agent runs, for outputs and for other resources:
//! `localdr_service_status` and `localdr_balancer_status`.

pub mod balancer_status;
pub mod service_status;

use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType};

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
