//! `localdr drift`: a drift detector for cron or CI. Runs the real `terraform plan
//! -refresh-only` (what changed outside Terraform) and a normal plan (what apply would do),
//! reads both through `terraform show -json`, names each resource and attribute that differs,
//! writes a timestamped JSON report under `logs/`, and exits 2 when anything drifted.

use super::{print_json, table};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Args, Debug)]
pub struct DriftArgs {
    /// The Terraform root module to check.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Where to write the report (default: <dir>/logs).
    #[arg(long, value_name = "DIR")]
    pub logs: Option<PathBuf>,
    /// The terraform binary (default: $LOCALDR_TERRAFORM, else `terraform` on PATH).
    #[arg(long)]
    pub terraform: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One attribute that differs.
fn attr(path: &str, before: &Value, after: &Value) -> Value {
    json!({"attribute": path, "before": before, "after": after})
}

/// Paths where `before` and `after` differ, with sensitive values redacted.
pub fn diff_attributes(
    before: &Value,
    after: &Value,
    unknown: &Value,
    sensitive: &Value,
    prefix: &str,
    out: &mut Vec<Value>,
) {
    let is_true = |v: &Value| v.as_bool() == Some(true);
    if is_true(unknown) {
        out.push(attr(
            prefix,
            &redact(before, sensitive),
            &json!("(known after apply)"),
        ));
        return;
    }
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                diff_attributes(
                    b.get(k).unwrap_or(&Value::Null),
                    a.get(k).unwrap_or(&Value::Null),
                    unknown.get(k).unwrap_or(&Value::Null),
                    sensitive.get(k).unwrap_or(&Value::Null),
                    &p,
                    out,
                );
            }
        }
        (Value::Array(b), Value::Array(a)) if b.len() == a.len() => {
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                diff_attributes(
                    bv,
                    av,
                    unknown.get(i).unwrap_or(&Value::Null),
                    sensitive.get(i).unwrap_or(&Value::Null),
                    &format!("{prefix}[{i}]"),
                    out,
                );
            }
        }
        _ => {
            if before != after {
                out.push(attr(
                    prefix,
                    &redact(before, sensitive),
                    &redact(after, sensitive),
                ));
            }
        }
    }
}

fn redact(v: &Value, sensitive: &Value) -> Value {
    if sensitive.as_bool() == Some(true) {
        json!("(sensitive)")
    } else {
        v.clone()
    }
}

/// Summaries of a `terraform show -json` list (`resource_drift` or `resource_changes`).
fn summarize(list: Option<&Value>, skip_noop: bool) -> Vec<Value> {
    let mut out = Vec::new();
    for rc in list.and_then(|v| v.as_array()).into_iter().flatten() {
        let change = &rc["change"];
        let actions: Vec<String> = change["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        if skip_noop && (actions.is_empty() || actions.iter().all(|a| a == "no-op" || a == "read"))
        {
            continue;
        }
        let mut attrs = Vec::new();
        diff_attributes(
            &change["before"],
            &change["after"],
            &change["after_unknown"],
            &merge_sensitive(&change["before_sensitive"], &change["after_sensitive"]),
            "",
            &mut attrs,
        );
        out.push(json!({
            "address": rc["address"],
            "type": rc["type"],
            "actions": actions,
            "attributes": attrs,
        }));
    }
    out
}

fn merge_sensitive(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Bool(true), _) | (_, Value::Bool(true)) => Value::Bool(true),
        (Value::Object(x), Value::Object(y)) => {
            let mut m = x.clone();
            for (k, v) in y {
                let merged = merge_sensitive(x.get(k).unwrap_or(&Value::Null), v);
                m.insert(k.clone(), merged);
            }
            Value::Object(m)
        }
        (Value::Null, o) | (o, Value::Null) => o.clone(),
        (x, _) => x.clone(),
    }
}

struct Terraform {
    bin: PathBuf,
    dir: PathBuf,
}

impl Terraform {
    fn run(&self, args: &[&str]) -> Result<std::process::Output> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("-chdir={}", self.dir.display()))
            .args(args)
            .env("TF_IN_AUTOMATION", "1");
        cmd.output()
            .with_context(|| format!("could not run {} (set --terraform)", self.bin.display()))
    }

    /// `plan -json -out` then `show -json`; returns the plan document.
    fn plan(&self, extra: &[&str], out: &Path) -> Result<Value> {
        let out_s = out.display().to_string();
        let mut args = vec![
            "plan",
            "-input=false",
            "-no-color",
            "-json",
            "-lock-timeout=60s",
        ];
        args.extend_from_slice(extra);
        let out_arg = format!("-out={out_s}");
        args.push(&out_arg);
        let o = self.run(&args)?;
        if !o.status.success() {
            let mut msgs = Vec::new();
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                if let Ok(v) = serde_json::from_str::<Value>(line) {
                    if v["type"] == "diagnostic" && v["diagnostic"]["severity"] == "error" {
                        msgs.push(format!(
                            "{}: {}",
                            v["diagnostic"]["summary"].as_str().unwrap_or(""),
                            v["diagnostic"]["detail"].as_str().unwrap_or("")
                        ));
                    }
                }
            }
            if msgs.is_empty() {
                msgs.push(String::from_utf8_lossy(&o.stderr).trim().to_string());
            }
            bail!(
                "terraform plan {} failed: {}",
                extra.join(" "),
                msgs.join("; ")
            );
        }
        let s = self.run(&["show", "-json", "-no-color", &out_s])?;
        if !s.status.success() {
            bail!(
                "terraform show -json failed: {}",
                String::from_utf8_lossy(&s.stderr).trim()
            );
        }
        serde_json::from_slice(&s.stdout).context("terraform show -json printed invalid JSON")
    }
}

pub fn run(a: DriftArgs) -> Result<i32> {
    let dir = crate::sources::absolute(&a.dir)?;
    if !dir.is_dir() {
        bail!("--dir {} is not a directory", dir.display());
    }
    let bin = a
        .terraform
        .clone()
        .or_else(|| std::env::var_os("LOCALDR_TERRAFORM").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("terraform"));
    let tf = Terraform {
        bin,
        dir: dir.clone(),
    };
    let tmp =
        std::env::temp_dir().join(format!("localdr-drift-{}", crate::atomic::unique_suffix()));
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<(Value, Value)> {
        let refresh = tf.plan(&["-refresh-only"], &tmp.join("refresh.tfplan"))?;
        let normal = tf.plan(&[], &tmp.join("normal.tfplan"))?;
        Ok((refresh, normal))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    let (refresh, normal) = result?;
    let drift = summarize(refresh.get("resource_drift"), false);
    let changes = summarize(normal.get("resource_changes"), true);
    let drifted = !drift.is_empty() || !changes.is_empty();
    let now = chrono::Utc::now();
    let report = json!({
        "generated_at": now,
        "dir": dir,
        "terraform_version": normal["terraform_version"],
        "drifted": drifted,
        "drift": drift,
        "changes": changes,
    });
    let logs = a.logs.clone().unwrap_or_else(|| dir.join("logs"));
    let path = logs.join(format!(
        "drift_{}.json",
        now.format("%Y-%m-%d_%H-%M-%S_%3f")
    ));
    crate::atomic::write_json(&path, &report)?;
    if a.json {
        print_json(&report)?;
    } else {
        let mut t = table();
        t.set_header(vec!["RESOURCE", "SEEN BY", "ACTION", "ATTRIBUTES"]);
        for (label, list) in [("refresh", &drift), ("plan", &changes)] {
            for r in list {
                let attrs: Vec<String> = r["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| {
                        format!(
                            "{}: {} -> {}",
                            x["attribute"].as_str().unwrap_or(""),
                            x["before"],
                            x["after"]
                        )
                    })
                    .collect();
                let actions: Vec<&str> = r["actions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                    .collect();
                t.add_row(vec![
                    r["address"].as_str().unwrap_or("").to_string(),
                    label.to_string(),
                    actions.join(","),
                    attrs.join("\n"),
                ]);
            }
        }
        if drifted {
            println!("{t}");
            println!(
                "DRIFT: {} drifted outside Terraform, {} to change; report {}",
                drift.len(),
                changes.len(),
                path.display()
            );
        } else {
            println!("no drift; report {}", path.display());
        }
    }
    Ok(if drifted { 2 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_changed_attributes_and_redacts_sensitive() {
        let before = json!({"a": 1, "b": {"c": true, "pw": "x"}, "l": [1, 2]});
        let after = json!({"a": 1, "b": {"c": false, "pw": "y"}, "l": [1, 3]});
        let sens = json!({"b": {"pw": true}});
        let mut out = Vec::new();
        diff_attributes(&before, &after, &Value::Null, &sens, "", &mut out);
        let paths: Vec<&str> = out
            .iter()
            .map(|v| v["attribute"].as_str().unwrap())
            .collect();
        assert_eq!(paths, vec!["b.c", "b.pw", "l[1]"]);
        assert_eq!(out[1]["after"], json!("(sensitive)"));
    }
}
