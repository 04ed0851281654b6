//! Small helpers to write schemas as forms: one line per attribute.

use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Description};

pub fn attr(t: AttributeType, c: AttributeConstraint, desc: &str) -> Attribute {
    Attribute {
        attr_type: t,
        description: Description::plain(desc),
        constraint: c,
        sensitive: false,
        deprecated: false,
    }
}

pub fn string(c: AttributeConstraint, desc: &str) -> Attribute {
    attr(AttributeType::String, c, desc)
}
pub fn number(c: AttributeConstraint, desc: &str) -> Attribute {
    attr(AttributeType::Number, c, desc)
}
pub fn boolean(c: AttributeConstraint, desc: &str) -> Attribute {
    attr(AttributeType::Bool, c, desc)
}
