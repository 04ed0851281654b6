//! `localdr_balancer`'s `rate_limit` block, in both shapes users bring:
//! issue 4's `requests_per_minute` / `burst` / `by = "ip" | "header:<name>"`, and Kong's
//! rate-limiting plugin's `second` / `minute` / `hour` / `limit_by` / `header_name`
//! (resources.md). They may be mixed (`requests_per_minute` with `hour`); the two names of
//! one thing may not (`minute` with `requests_per_minute`, `limit_by` with `by`).
//!
//! The engine keeps one form ([`RateLimit`]); Read maps it back onto whichever names the
//! prior state used, so either spelling plans empty after apply and a hand edit of the
//! spec still shows as a diff.

use super::util::{fill, known, v};
use crate::schema::{number, string};
use localdr::spec::RateLimit;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    AttributeConstraint::{Optional, OptionalComputed},
    Block, Description, NestedBlock,
};
use tf_provider::value::Value;
use tf_provider::{map, AttributePath, Diagnostics};

type S = Value<String>;
type N = Value<i64>;

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct RateLimitBlock {
    pub requests_per_minute: N,
    pub burst: N,
    pub by: S,
    pub second: N,
    pub minute: N,
    pub hour: N,
    pub limit_by: S,
    pub header_name: S,
}

impl RateLimitBlock {
    /// The per-minute limit under either name.
    fn per_minute(&self) -> &N {
        if self.minute.is_null() {
            &self.requests_per_minute
        } else {
            &self.minute
        }
    }
}

pub fn schema() -> NestedBlock {
    NestedBlock::Optional(Block {
        version: 1,
        description: Description::plain(
            "Per-client limits: each set limit is a token bucket refilled evenly over its window, and a request must fit all of them; over a limit, 429 with Retry-After. Set at least one of `requests_per_minute` (or `minute`), `second`, `hour`.",
        ),
        attributes: map! {
            "requests_per_minute" => number(Optional, "Requests per client per minute (Kong's `minute`; set one of the two)."),
            "burst" => number(OptionalComputed, "Requests a client may make at once against the per-minute limit. Default requests_per_minute / 6."),
            "by" => string(OptionalComputed, "`ip` (default) or `header:<name>`; a client without the header is counted by its IP. Computed from `limit_by`/`header_name` when those are used."),
            "second" => number(Optional, "Requests per client per second (Kong)."),
            "minute" => number(Optional, "Requests per client per minute (Kong; same as `requests_per_minute`)."),
            "hour" => number(Optional, "Requests per client per hour (Kong)."),
            "limit_by" => string(Optional, "Kong's form of `by`: `ip` or `header` (with `header_name`)."),
            "header_name" => string(Optional, "The header clients are counted by when `limit_by = \"header\"`.")
        },
        ..Default::default()
    })
}

/// Plan what the configuration leaves out: `burst` from the per-minute limit, `by` from
/// `limit_by`/`header_name`.
pub fn defaults(r: &mut Value<RateLimitBlock>) {
    let Value::Value(r) = r else { return };
    match *r.per_minute() {
        Value::Value(rpm) => fill(&mut r.burst, (rpm / 6).max(1)),
        Value::Unknown if r.burst.is_null() => r.burst = Value::Unknown,
        _ => {}
    }
    if r.by.is_null() {
        r.by = match (&r.limit_by, &r.header_name) {
            (Value::Unknown, _) | (_, Value::Unknown) => Value::Unknown,
            (Value::Value(l), Value::Value(h)) if l == "header" => v(format!("header:{h}")),
            _ => v("ip".into()),
        };
    }
}

/// The engine's form; `None` when the block is absent.
pub fn to_spec(r: &Value<RateLimitBlock>) -> Result<Option<RateLimit>, String> {
    let Value::Value(r) = r else { return Ok(None) };
    let n = |x: &N, name: &str| -> Result<Option<u32>, String> {
        known(x)
            .map(|n| u32::try_from(n).map_err(|_| format!("rate_limit.{name} must be 1 or more")))
            .transpose()
    };
    let by = known(&r.by).unwrap_or_else(|| "ip".into());
    Ok(Some(RateLimit {
        per_second: n(&r.second, "second")?,
        requests_per_minute: n(r.per_minute(), "requests_per_minute")?,
        per_hour: n(&r.hour, "hour")?,
        burst: n(&r.burst, "burst")?,
        by,
    }))
}

/// The state for `spec`, spelled the way `prior` (the state before) spelled it.
pub fn from_spec(prior: &Value<RateLimitBlock>, spec: Option<&RateLimit>) -> Value<RateLimitBlock> {
    let Some(r) = spec else { return Value::Null };
    let (kong_minute, kong_by) = match prior {
        Value::Value(p) => (!p.minute.is_null(), !p.limit_by.is_null()),
        _ => (false, false),
    };
    let n = |x: Option<u32>| x.map_or(Value::Null, |x| v(x as i64));
    let header = r.by.strip_prefix("header:");
    v(RateLimitBlock {
        requests_per_minute: if kong_minute {
            Value::Null
        } else {
            n(r.requests_per_minute)
        },
        minute: if kong_minute {
            n(r.requests_per_minute)
        } else {
            Value::Null
        },
        second: n(r.per_second),
        hour: n(r.per_hour),
        burst: n(r.burst),
        by: v(r.by.clone()),
        limit_by: match (kong_by, header) {
            (false, _) => Value::Null,
            (true, Some(_)) => v("header".into()),
            (true, None) => v("ip".into()),
        },
        header_name: match (kong_by, header) {
            (true, Some(h)) => v(h.to_string()),
            _ => Value::Null,
        },
    })
}

/// Plan-time diagnostics, each on the attribute at fault.
pub fn check(diags: &mut Diagnostics, r: &Value<RateLimitBlock>) {
    let Value::Value(r) = r else { return };
    let at = AttributePath::new("rate_limit").index(0);
    let mut bad = |attr: &'static str, summary: String, detail: String| {
        diags.error(summary, detail, at.clone().attribute(attr));
    };
    for (k, x) in [
        ("requests_per_minute", &r.requests_per_minute),
        ("minute", &r.minute),
        ("second", &r.second),
        ("hour", &r.hour),
        ("burst", &r.burst),
    ] {
        if let Value::Value(n) = x {
            if !(1..=u32::MAX as i64).contains(n) {
                bad(
                    k,
                    format!("Invalid {k}"),
                    format!("{k} must be 1 or more; got {n}."),
                );
            }
        }
    }
    if !r.minute.is_null() && !r.requests_per_minute.is_null() {
        bad(
            "minute",
            "Conflicting rate limits".into(),
            "minute and requests_per_minute are the same limit: set one of them.".into(),
        );
    }
    if [&r.requests_per_minute, &r.minute, &r.second, &r.hour]
        .iter()
        .all(|x| x.is_null())
    {
        diags.error(
            "No rate limit set",
            "rate_limit needs at least one limit: requests_per_minute (or minute), second or hour.",
            at.clone(),
        );
    } else if !r.burst.is_null() && r.per_minute().is_null() {
        diags.error(
            "burst without a per-minute limit",
            "burst is how many requests a client may make at once against the per-minute limit: set requests_per_minute (or minute) too.",
            at.clone().attribute("burst"),
        );
    }
    let mut bad = |attr: &'static str, summary: String, detail: String| {
        diags.error(summary, detail, at.clone().attribute(attr));
    };
    if !r.by.is_null() && (!r.limit_by.is_null() || !r.header_name.is_null()) {
        bad(
            "limit_by",
            "Conflicting rate limit keys".into(),
            "by and limit_by/header_name say the same thing: use `by = \"header:<name>\"` or `limit_by = \"header\"` with `header_name`, not both.".into(),
        );
    }
    if let Some(e) = known(&r.by).and_then(key_error) {
        bad("by", "Invalid by".into(), format!("{e}."));
    }
    match (&r.limit_by, &r.header_name) {
        (Value::Value(l), _) if l != "ip" && l != "header" => bad(
            "limit_by",
            "Invalid limit_by".into(),
            format!("limit_by must be \"ip\" or \"header\"; got {l:?}."),
        ),
        (Value::Value(l), Value::Null) if l == "header" => bad(
            "header_name",
            "Missing header_name".into(),
            "limit_by = \"header\" needs header_name, the header clients are counted by.".into(),
        ),
        (Value::Value(l), Value::Value(_)) if l == "ip" => bad(
            "header_name",
            "header_name without limit_by = \"header\"".into(),
            "header_name is only used with limit_by = \"header\".".into(),
        ),
        (Value::Null, Value::Value(_)) => bad(
            "header_name",
            "header_name without limit_by = \"header\"".into(),
            "header_name is only used with limit_by = \"header\": set limit_by too.".into(),
        ),
        (Value::Value(_), Value::Value(h)) => {
            if let Some(e) = key_error(format!("header:{h}")) {
                bad("header_name", "Invalid header_name".into(), format!("{e}."));
            }
        }
        _ => {}
    }
}

/// Why `by` cannot key a rate limit, in the engine's words.
fn key_error(by: String) -> Option<String> {
    RateLimit {
        by,
        ..Default::default()
    }
    .key_header()
    .err()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(f: impl FnOnce(&mut RateLimitBlock)) -> Value<RateLimitBlock> {
        let mut b = RateLimitBlock::default();
        f(&mut b);
        v(b)
    }

    #[test]
    fn either_spelling_round_trips_through_the_spec() {
        for cfg in [
            block(|b| {
                b.requests_per_minute = v(120);
                b.by = v("header:X-Key".into());
            }),
            block(|b| {
                b.minute = v(120);
                b.second = v(5);
                b.hour = v(1000);
                b.limit_by = v("header".into());
                b.header_name = v("X-Key".into());
            }),
            block(|b| {
                b.hour = v(10);
                b.limit_by = v("ip".into());
            }),
        ] {
            let mut planned = cfg.clone();
            defaults(&mut planned);
            let spec = to_spec(&planned).unwrap().unwrap();
            assert_eq!(from_spec(&planned, Some(&spec)), planned, "{spec:?}");
        }
    }

    #[test]
    fn defaults_follow_the_per_minute_limit_and_the_kong_key() {
        let mut b = block(|b| {
            b.minute = v(600);
            b.limit_by = v("header".into());
            b.header_name = v("X-Key".into());
        });
        defaults(&mut b);
        let Value::Value(b) = b else { panic!() };
        assert_eq!((b.burst, b.by), (v(100), v("header:X-Key".to_string())));
        let mut b = block(|b| b.second = v(2));
        defaults(&mut b);
        let Value::Value(b) = b else { panic!() };
        assert_eq!((b.burst, b.by), (Value::Null, v("ip".to_string())));
    }
}
