//! Human durations as users write them in HCL and on the command line: `90s`, `5m`, `24h`,
//! `7d`, `2w`, `1h30m`. Terraform numbers are integers only, so durations travel as strings.

use anyhow::{bail, Result};
use std::time::Duration;

/// Parse a duration such as `24h` or `1h30m`. Units: s, m, h, d, w (and ms).
pub fn parse(text: &str) -> Result<Duration> {
    let s = text.trim();
    if s.is_empty() {
        bail!("empty duration: expected e.g. \"30s\", \"5m\", \"24h\", \"7d\"");
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut saw_unit = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            unit = "ms".into();
        }
        if num.is_empty() {
            bail!("invalid duration {text:?}: a number must come before {unit:?}");
        }
        let n: u64 = num
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid duration {text:?}: number too large"))?;
        num.clear();
        let ms = match unit.as_str() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            other => bail!(
                "invalid duration {text:?}: unknown unit {other:?} (valid: ms, s, m, h, d, w)"
            ),
        };
        total = total.saturating_add(n.saturating_mul(ms));
        saw_unit = true;
    }
    if !num.is_empty() || !saw_unit {
        bail!("invalid duration {text:?}: every number needs a unit, e.g. \"30s\", \"24h\"");
    }
    Ok(Duration::from_millis(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse("2w").unwrap(), Duration::from_secs(14 * 86_400));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        for bad in ["", "10", "h", "5y", "-1h"] {
            assert!(parse(bad).is_err(), "{bad:?} should fail");
        }
        assert!(parse("5y")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
    }
}
