//! Terraform state files: validation and the lineage/serial rules a restore must respect.
//!
//! A state's `lineage` names one state's history; `serial` grows with every write. Putting
//! back a state of another lineage, or an older serial over a newer one, silently loses
//! infrastructure from Terraform's view, so restore refuses both unless forced.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a backup records about a state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TfstateInfo {
    pub version: u64,
    pub serial: u64,
    pub lineage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terraform_version: Option<String>,
}

#[derive(Deserialize)]
struct Head {
    version: Option<serde_json::Value>,
    serial: Option<serde_json::Value>,
    lineage: Option<serde_json::Value>,
    terraform_version: Option<serde_json::Value>,
}

/// Parse a state document and return its identity, or say what is wrong with it.
pub fn parse(data: &[u8]) -> Result<TfstateInfo> {
    let head: Head = serde_json::from_slice(data)
        .context("not a Terraform state: the file is not valid JSON")?;
    let version = head
        .version
        .and_then(|v| v.as_u64())
        .context("not a Terraform state: no numeric \"version\" field")?;
    if !(3..=4).contains(&version) {
        bail!("unsupported Terraform state format version {version} (supported: 3 and 4)");
    }
    let serial = head
        .serial
        .and_then(|v| v.as_u64())
        .context("not a Terraform state: no numeric \"serial\" field")?;
    let lineage = head
        .lineage
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|l| !l.is_empty())
        .context("not a Terraform state: no \"lineage\" field")?;
    Ok(TfstateInfo {
        version,
        serial,
        lineage,
        terraform_version: head
            .terraform_version
            .and_then(|v| v.as_str().map(str::to_owned)),
    })
}

/// Read and validate a state file.
pub fn inspect(path: &Path) -> Result<TfstateInfo> {
    let data = std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    parse(&data).with_context(|| format!("{} is not a usable Terraform state", path.display()))
}

/// May the state `snapshot` be written over the state `current`?
pub fn check_restore(current: &TfstateInfo, snapshot: &TfstateInfo, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    if current.lineage != snapshot.lineage {
        bail!(
            "refusing to restore: the snapshot's lineage {} differs from the current state's {} \
             (it is another state's history); use --force to override",
            snapshot.lineage,
            current.lineage
        );
    }
    if snapshot.serial < current.serial {
        bail!(
            "refusing to restore: the snapshot's serial {} is lower than the current state's {} \
             (Terraform would treat it as stale); use --force to override",
            snapshot.serial,
            current.serial
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(serial: u64, lineage: &str) -> TfstateInfo {
        TfstateInfo {
            version: 4,
            serial,
            lineage: lineage.into(),
            terraform_version: None,
        }
    }

    #[test]
    fn parses_a_v4_state() {
        let s = br#"{"version":4,"terraform_version":"1.11.4","serial":7,"lineage":"abc","outputs":{},"resources":[]}"#;
        let i = parse(s).unwrap();
        assert_eq!((i.serial, i.lineage.as_str()), (7, "abc"));
        assert_eq!(i.terraform_version.as_deref(), Some("1.11.4"));
    }

    #[test]
    fn rejects_what_is_not_a_state() {
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"{"version":4,"serial":1}"#)
            .unwrap_err()
            .to_string()
            .contains("lineage"));
        assert!(parse(br#"{"version":4,"lineage":"x"}"#)
            .unwrap_err()
            .to_string()
            .contains("serial"));
        assert!(parse(br#"{"version":9,"serial":1,"lineage":"x"}"#).is_err());
    }

    #[test]
    fn restore_rules_for_lineage_and_serial() {
        let cur = info(10, "L1");
        assert!(check_restore(&cur, &info(10, "L1"), false).is_ok());
        assert!(check_restore(&cur, &info(12, "L1"), false).is_ok());
        let older = check_restore(&cur, &info(9, "L1"), false).unwrap_err();
        assert!(older.to_string().contains("serial 9 is lower"));
        let other = check_restore(&cur, &info(10, "L2"), false).unwrap_err();
        assert!(other.to_string().contains("lineage"));
        assert!(check_restore(&cur, &info(1, "L2"), true).is_ok());
    }
}
