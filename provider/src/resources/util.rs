//! Helpers the resources and data sources share.

use tf_provider::value::Value;

/// A known value (state is built from these everywhere).
pub fn v<T>(x: T) -> Value<T> {
    Value::Value(x)
}

/// Plan an attribute the configuration left out to its default.
pub fn fill<T: Clone>(slot: &mut Value<T>, default: T) {
    if slot.is_null() {
        *slot = Value::Value(default);
    }
}

/// The value when known and not null.
pub fn known<T: Clone>(v: &Value<T>) -> Option<T> {
    match v {
        Value::Value(x) => Some(x.clone()),
        _ => None,
    }
}

/// Run blocking engine work off the async runtime; a panic becomes an error, not a
/// cancelled request.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(e) => Err(format!("internal error: {e}")),
    }
}
