//! Cron expressions and time zones as users write them in schedules: 5 fields (minute
//! first) or 6 (second first), and `UTC` or an IANA zone name. Parsing lives here, below
//! both the spec checks and the agent that evaluates schedules.

use anyhow::{anyhow, Result};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// Parse a cron expression: 5 fields (minute first) or 6 (second first).
pub fn parse_cron(expr: &str) -> Result<Cron> {
    let fields = expr.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(anyhow!(
            "invalid cron {expr:?}: expected 5 fields (\"0 22 * * *\") or 6 with seconds first (\"*/10 * * * * *\"); got {fields}"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| anyhow!("invalid cron {expr:?}: {e}"))
}

/// `UTC` or an IANA zone name such as `Europe/Madrid`.
pub fn parse_zone(name: &str) -> Result<Tz> {
    name.parse::<Tz>().map_err(|_| {
        anyhow!("unknown time zone {name:?}: use \"UTC\" or an IANA name like \"Europe/Madrid\"")
    })
}
