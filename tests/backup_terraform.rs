//! `localdr_backup` under the real Terraform binaries (1.0.3 and the modern one): the whole
//! lifecycle with drift made by hand, import, destroy, plan-time validation, and the
//! `localdr drift` detector.

use localdr_e2e::{both_terraforms, flip_byte, localdr, ls, Tf, TfVersion};
use std::path::Path;

const LIFECYCLE: &str = include_str!("fixtures/lifecycle/main.tf");

fn seed_sources(dir: &Path) {
    std::fs::write(
        dir.join("app.tfstate"),
        r#"{"version":4,"terraform_version":"1.11.4","serial":5,"lineage":"1b2c-lineage","outputs":{},"resources":[]}"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("data/sub")).unwrap();
    std::fs::write(dir.join("data/a.txt"), "alpha\n").unwrap();
    std::fs::write(dir.join("data/sub/b.bin"), vec![7u8; 300_000]).unwrap();
}

fn snapshot_files(dir: &Path, prefix: &str) -> Vec<String> {
    ls(&dir.join("vault/snapshots"))
        .into_iter()
        .filter(|f| f.starts_with(prefix))
        .collect()
}

fn lifecycle(v: TfVersion) {
    let tf = Tf::new(v, LIFECYCLE);
    let d = tf.path().to_path_buf();
    seed_sources(&d);
    tf.init();

    let p = tf.plan();
    assert_eq!(p.code, 2, "first plan creates:\n{}", p.all());
    assert!(p.stdout.contains("2 to add"), "{}", p.stdout);
    tf.apply();
    tf.assert_empty_plan("right after apply");
    let first = tf.output("state_snapshot");
    assert!(first.starts_with("state_"), "{first}");
    assert_eq!(ls(&d.join("dr/snapshots")), vec![format!("{first}.json")]);

    // 1. Delete the newest snapshot's manifest by hand.
    std::fs::remove_file(d.join(format!("vault/snapshots/{first}.json"))).unwrap();
    let p = tf.plan();
    assert_eq!(
        p.code,
        2,
        "a deleted snapshot must show in plan:\n{}",
        p.all()
    );
    assert!(
        p.stdout.contains("ensure_valid") && p.stdout.contains("false -> true"),
        "{}",
        p.stdout
    );
    assert!(
        p.all().contains("was deleted") || p.all().contains("no snapshot"),
        "{}",
        p.all()
    );
    tf.apply();
    tf.assert_empty_plan("after repairing a deleted snapshot");
    let repaired = tf.output("state_snapshot");
    assert_ne!(repaired, first);
    assert_eq!(
        localdr(&["verify", "--vault", d.join("vault").to_str().unwrap()]).code,
        0
    );

    // 2. Corrupt the newest data snapshot: flip a byte in its pack.
    let data_id = tf.output("data_snapshot");
    flip_byte(&d.join(format!("vault/packs/{data_id}.pack")), 10);
    let p = tf.plan();
    assert_eq!(
        p.code,
        2,
        "a corrupted snapshot must show in plan:\n{}",
        p.all()
    );
    assert!(p.all().contains("fails its checksum"), "{}", p.all());
    assert!(
        p.stdout
            .contains("localdr_backup.data will be updated in-place"),
        "{}",
        p.stdout
    );
    tf.apply();
    tf.assert_empty_plan("after repairing a corrupted snapshot");
    assert_ne!(tf.output("data_snapshot"), data_id);

    // 3. The DR copy disappears.
    for f in ls(&d.join("dr/snapshots")) {
        std::fs::remove_file(d.join("dr/snapshots").join(f)).unwrap();
    }
    let p = tf.plan();
    assert_eq!(
        p.code,
        2,
        "a missing DR copy must show in plan:\n{}",
        p.all()
    );
    assert!(p.all().contains("DR copy"), "{}", p.all());
    tf.apply();
    tf.assert_empty_plan("after restoring the DR copy");
    let newest = tf.output("state_snapshot");
    assert!(ls(&d.join("dr/snapshots")).contains(&format!("{newest}.json")));

    // 4. A trigger change takes a new snapshot in place (history kept).
    let before = tf.output("data_snapshot");
    let p = tf.run(&[
        "plan",
        "-no-color",
        "-var",
        "data_version=2",
        "-detailed-exitcode",
    ]);
    assert_eq!(p.code, 2, "{}", p.all());
    assert!(
        p.stdout
            .contains("localdr_backup.data will be updated in-place"),
        "{}",
        p.stdout
    );
    let data_snaps = snapshot_files(&d, "data_").len();
    tf.ok(&[
        "apply",
        "-auto-approve",
        "-no-color",
        "-var",
        "data_version=2",
    ]);
    assert_ne!(tf.output("data_snapshot"), before);
    assert_eq!(snapshot_files(&d, "data_").len(), data_snaps + 1);
    let p = tf.run(&[
        "plan",
        "-no-color",
        "-var",
        "data_version=2",
        "-detailed-exitcode",
    ]);
    assert_eq!(p.code, 0, "{}", p.all());

    // 5. Import: forget the resource, import it by <vault>:<name>, plan is empty.
    tf.ok(&["state", "rm", "localdr_backup.state"]);
    let vault_arg = "./vault:state";
    tf.ok(&[
        "import",
        "-no-color",
        "-var",
        "data_version=2",
        "localdr_backup.state",
        vault_arg,
    ]);
    // No resource changes (1.0.3 also re-adds the output that `state rm` dropped).
    let p = tf.run(&[
        "plan",
        "-no-color",
        "-var",
        "data_version=2",
        "-detailed-exitcode",
    ]);
    assert!(p.code == 0 || p.code == 2, "{}", p.all());
    assert!(
        !p.stdout.contains("will be") && !p.stdout.contains("must be"),
        "plan after import must change no resource:\n{}",
        p.all()
    );
    let state = tf.state_json();
    let res = &state["values"]["root_module"]["resources"];
    let imported = res
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == "localdr_backup.state")
        .unwrap();
    assert_eq!(imported["values"]["retention"][0]["keep_last"], 3);
    assert_eq!(imported["values"]["id"], vault_arg);

    // 6. Destroy removes the policies but keeps every snapshot.
    let kept = snapshot_files(&d, "state_").len() + snapshot_files(&d, "data_").len();
    tf.ok(&[
        "destroy",
        "-auto-approve",
        "-no-color",
        "-var",
        "data_version=2",
    ]);
    assert!(ls(&d.join("vault/policies")).is_empty());
    assert_eq!(
        snapshot_files(&d, "state_").len() + snapshot_files(&d, "data_").len(),
        kept
    );
    assert!(kept >= 4);
}

fn delete_on_destroy(v: TfVersion) {
    let tf = Tf::new(
        v,
        r#"
terraform {
  required_providers {
    localdr = { source = "localdr/localdr" }
  }
}
resource "localdr_backup" "x" {
  name  = "x"
  path  = "${path.module}/data"
  vault = "${path.module}/vault"
  copy { vault = "${path.module}/dr" }
  delete_snapshots_on_destroy = true
}
"#,
    );
    seed_sources(tf.path());
    tf.init();
    tf.apply();
    tf.assert_empty_plan("after apply");
    assert_eq!(ls(&tf.path().join("vault/snapshots")).len(), 1);
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert!(ls(&tf.path().join("vault/snapshots")).is_empty());
    assert!(ls(&tf.path().join("vault/packs")).is_empty());
    assert!(ls(&tf.path().join("dr/snapshots")).is_empty());
}

/// Each bad value fails at `plan` with a diagnostic that names the attribute.
fn invalid_values(v: TfVersion) {
    let header = r#"
terraform {
  required_providers {
    localdr = { source = "localdr/localdr" }
  }
}
"#;
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "negative retention",
            r#"resource "localdr_backup" "x" {
  name  = "x"
  path  = "${path.module}/data"
  vault = "${path.module}/vault"
  retention {
    keep_daily = -1
  }
}"#,
            &["Invalid keep_daily", "keep_daily = -1"],
        ),
        (
            "unknown source type",
            r#"resource "localdr_backup" "x" {
  name  = "x"
  ftp   = "ftp://example.com/data"
  vault = "${path.module}/vault"
}"#,
            &["Unsupported argument", "\"ftp\""],
        ),
        (
            "no source at all",
            r#"resource "localdr_backup" "x" {
  name  = "x"
  vault = "${path.module}/vault"
}"#,
            &["Missing source", "path"],
        ),
        (
            "two sources",
            r#"resource "localdr_backup" "x" {
  name    = "x"
  path    = "${path.module}/data"
  tfstate = "${path.module}/app.tfstate"
  vault   = "${path.module}/vault"
}"#,
            &["Conflicting sources", "tfstate"],
        ),
        (
            "vault inside the source",
            r#"resource "localdr_backup" "x" {
  name  = "x"
  path  = "${path.module}/data"
  vault = "${path.module}/data/vault"
}"#,
            &["Invalid vault", "vault = \"${path.module}/data/vault\""],
        ),
        (
            "missing source path",
            r#"resource "localdr_backup" "x" {
  name  = "x"
  path  = "${path.module}/no-such-dir"
  vault = "${path.module}/vault"
}"#,
            &["Source not found", "no-such-dir"],
        ),
        (
            "tfstate that is not a state",
            r#"resource "localdr_backup" "x" {
  name    = "x"
  tfstate = "${path.module}/data/a.txt"
  vault   = "${path.module}/vault"
}"#,
            &["Invalid tfstate", "not valid JSON"],
        ),
        (
            "bad keep_within",
            r#"resource "localdr_backup" "x" {
  name  = "x"
  path  = "${path.module}/data"
  vault = "${path.module}/vault"
  retention {
    keep_within = "forever"
  }
}"#,
            &["Invalid keep_within", "keep_within = \"forever\""],
        ),
        (
            "compression out of range",
            r#"resource "localdr_backup" "x" {
  name              = "x"
  path              = "${path.module}/data"
  vault             = "${path.module}/vault"
  compression_level = 40
}"#,
            &["Invalid compression_level", "compression_level = 40"],
        ),
        (
            "bad name",
            r#"resource "localdr_backup" "x" {
  name  = "a/b"
  path  = "${path.module}/data"
  vault = "${path.module}/vault"
}"#,
            &["Invalid name", "name  = \"a/b\""],
        ),
        (
            "unknown schedule time zone",
            r#"resource "localdr_backup" "x" {
  name              = "x"
  path              = "${path.module}/data"
  vault             = "${path.module}/vault"
  schedule          = "0 3 * * *"
  schedule_timezone = "Mars/Olympus"
}"#,
            &[
                "Invalid schedule_timezone",
                "unknown time zone \"Mars/Olympus\"",
                "schedule_timezone = \"Mars/Olympus\"",
            ],
        ),
        (
            "time zone without a schedule",
            r#"resource "localdr_backup" "x" {
  name              = "x"
  path              = "${path.module}/data"
  vault             = "${path.module}/vault"
  schedule_timezone = "Europe/Madrid"
}"#,
            &["schedule_timezone without a schedule"],
        ),
    ];
    // One init, then swap main.tf per case (same provider requirements).
    let tf = Tf::new(v, &format!("{header}\n{}", cases[0].1));
    seed_sources(tf.path());
    tf.init();
    for (what, body, want) in cases {
        std::fs::write(tf.path().join("main.tf"), format!("{header}\n{body}")).unwrap();
        let r = tf.run(&["plan", "-no-color", "-input=false"]);
        assert_eq!(r.code, 1, "{what}: plan must fail:\n{}", r.all());
        for w in *want {
            assert!(
                r.all().contains(w),
                "{what}: expected {w:?} in:\n{}",
                r.all()
            );
        }
        assert!(
            !r.all().contains("panicked") && !r.all().contains("stack backtrace"),
            "{what}: {}",
            r.all()
        );
        assert!(
            !tf.path().join("vault").exists(),
            "{what}: nothing may be written at plan"
        );
    }
}

/// `localdr drift` runs the real plans, reports the drifted attribute, exits 2; clean → 0.
fn drift_report(v: TfVersion) {
    let tf = Tf::new(v, LIFECYCLE);
    let d = tf.path().to_path_buf();
    seed_sources(&d);
    tf.init();
    tf.apply();
    let run_drift = || {
        let mut c = std::process::Command::new(localdr_e2e::bin("localdr"));
        c.args([
            "drift",
            "--json",
            "--dir",
            d.to_str().unwrap(),
            "--terraform",
        ])
        .arg(&tf.bin)
        .env("TF_CLI_CONFIG_FILE", localdr_e2e::cli_config());
        localdr_e2e::Run::from(c.output().unwrap())
    };
    let clean = run_drift();
    assert_eq!(clean.code, 0, "{}", clean.all());
    let id = tf.output("state_snapshot");
    flip_byte(&d.join(format!("vault/packs/{id}.pack")), 3);
    let r = run_drift();
    assert_eq!(r.code, 2, "drift must exit 2:\n{}", r.all());
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["drifted"], true);
    let drifted: Vec<&serde_json::Value> = report["drift"].as_array().unwrap().iter().collect();
    assert!(
        drifted
            .iter()
            .any(|x| x["address"] == "localdr_backup.state"
                && x["attributes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["attribute"] == "ensure_valid")),
        "drift must name localdr_backup.state.ensure_valid: {report:#}"
    );
    let reports = ls(&d.join("logs"));
    assert_eq!(reports.len(), 2, "one report per run: {reports:?}");
    assert!(reports
        .iter()
        .all(|f| f.starts_with("drift_") && f.ends_with(".json")));
    tf.apply();
    assert_eq!(run_drift().code, 0);
}

const CATALOG: &str = r#"
terraform {
  required_providers {
    localdr = { source = "localdr/localdr" }
  }
}
resource "localdr_backup" "d" {
  name  = "d"
  path  = "${path.module}/data.txt"
  vault = "${path.module}/vault"
  copy {
    vault = "${path.module}/dr"
  }
}
data "localdr_backups" "d" {
  vault      = localdr_backup.d.vault
  name       = localdr_backup.d.name
  depends_on = [localdr_backup.d]
}
output "count" { value = data.localdr_backups.d.snapshot_count }
output "latest_id" { value = data.localdr_backups.d.latest_id }
output "snapshot_id" { value = localdr_backup.d.snapshot_id }
output "age" { value = data.localdr_backups.d.latest_age_seconds }
output "latest_copies" { value = data.localdr_backups.d.latest_copies }
output "first" { value = jsonencode(data.localdr_backups.d.snapshots[0]) }
output "damaged" { value = jsonencode(data.localdr_backups.d.damaged) }
"#;

/// `localdr_backups` reads what a vault holds after the backup made it: the newest good
/// snapshot (the one the resource recorded), its age and DR copy, every snapshot checked,
/// and damaged manifests; a vault that does not exist fails plan naming `vault`.
fn catalog_data_source(v: TfVersion) {
    let tf = Tf::new(v, CATALOG);
    let d = tf.path().to_path_buf();
    std::fs::write(d.join("data.txt"), "catalogued\n").unwrap();
    tf.init();
    tf.apply();
    assert_eq!(tf.output("count"), "1");
    let id = tf.output("snapshot_id");
    assert_eq!(tf.output("latest_id"), id);
    assert_eq!(tf.output("latest_copies"), "1");
    let age: i64 = tf.output("age").parse().unwrap();
    assert!((0..600).contains(&age), "age {age}");
    let first: serde_json::Value = serde_json::from_str(&tf.output("first")).unwrap();
    assert_eq!(first["number"], 1);
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["verified"], true);
    assert_eq!(first["size_bytes"], 11);
    assert_eq!(first["kind"], "path");
    assert_eq!(first["copies"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(tf.output("damaged"), "[]");

    // A manifest of this name that does not parse is reported, not listed.
    std::fs::write(
        d.join("vault/snapshots/d_2020-01-01_00-00-00.json"),
        "{ not json",
    )
    .unwrap();
    tf.ok(&[
        "apply",
        "-refresh-only",
        "-auto-approve",
        "-input=false",
        "-no-color",
    ]);
    let damaged: serde_json::Value = serde_json::from_str(&tf.output("damaged")).unwrap();
    assert_eq!(damaged[0]["id"], "d_2020-01-01_00-00-00", "{damaged}");
    assert_eq!(tf.output("count"), "1");
    assert_eq!(tf.output("latest_id"), id);

    let missing = Tf::new(
        v,
        r#"
terraform {
  required_providers {
    localdr = { source = "localdr/localdr" }
  }
}
data "localdr_backups" "x" {
  vault = "${path.module}/no-such-vault"
}
"#,
    );
    missing.init();
    let e = missing.plan_errors();
    assert!(
        e.contains("Could not read the vault") && e.contains("not a localdr vault"),
        "{e}"
    );
    assert!(e.contains("vault"), "{e}");
    // A name the resources would refuse is refused here too, at plan.
    let main = std::fs::read_to_string(missing.path().join("main.tf")).unwrap();
    std::fs::write(
        missing.path().join("main.tf"),
        main.replace("/no-such-vault\"", "\"\n  name  = \"no spaces/allowed\""),
    )
    .unwrap();
    let e = missing.plan_errors();
    assert!(
        e.contains("Invalid name") && e.contains("may contain only"),
        "{e}"
    );
}

both_terraforms!(
    lifecycle,
    delete_on_destroy,
    invalid_values,
    drift_report,
    catalog_data_source
);

/// The key (file stem) of the schedule the agent has for the backup into `<dir>/<vault>`.
fn schedule_key(sd: &std::path::Path, vault: &str) -> String {
    let want = format!("/{vault}");
    let mut found = Vec::new();
    for e in std::fs::read_dir(sd.join("schedules")).unwrap() {
        let p = e.unwrap().path();
        let s: localdr::spec::BackupSchedule =
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        if s.vault.ends_with(&want) {
            found.push(p.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    assert_eq!(found.len(), 1, "one schedule file for {vault}: {found:?}");
    found.pop().unwrap()
}

/// The agent takes scheduled snapshots (a seconds-level cron here) and applies retention
/// after each: the newest `keep_last` remain, marked as taken by the schedule. A backup of
/// the same name into another vault has a schedule of its own, which neither disturbs.
#[test]
fn scheduled_backups_run_in_the_agent_with_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().join("state");
    let tf = Tf::new(
        TfVersion::New,
        &format!(
            r#"
{head}resource "localdr_backup" "data" {{
  name     = "data"
  path     = "${{path.root}}/data"
  vault    = "${{path.root}}/vault"
  schedule = "* * * * * *"
  retention {{
    keep_last = 3
  }}
}}
resource "localdr_backup" "nas" {{
  name     = "data"
  path     = "${{path.root}}/data"
  vault    = "${{path.root}}/nas"
  schedule = "0 4 * * *"
}}
"#,
            head = localdr_e2e::terraform_head(Some(&sd))
        ),
    );
    struct StopAgent(std::path::PathBuf);
    impl Drop for StopAgent {
        fn drop(&mut self) {
            let _ = localdr(&["agent", "stop", "--state-dir", self.0.to_str().unwrap()]);
        }
    }
    let _stop = StopAgent(sd.clone());
    let d = tf.path().to_path_buf();
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::write(d.join("data/a.txt"), "alpha").unwrap();
    tf.init();
    tf.apply();
    tf.assert_empty_plan("with the schedules handed to the agent");
    let key = schedule_key(&sd, "vault");
    let nas_key = schedule_key(&sd, "nas");
    assert!(
        key.starts_with("data@") && nas_key != key,
        "{key} {nas_key}"
    );
    let vault = d.join("vault");
    let scheduled = |v: &std::path::Path| -> Vec<String> {
        let vault = localdr::vault::Vault::at(v).unwrap();
        let (good, _) = vault.manifests(Some("data")).unwrap();
        good.iter()
            .filter(|m| m.origin == "schedule")
            .map(|m| m.id.clone())
            .collect()
    };
    let start = std::time::Instant::now();
    loop {
        let st = localdr::statedir::StateDir::new(&sd)
            .read_schedule_status(&key)
            .unwrap();
        if st.as_ref().is_some_and(|s| s.runs >= 5) {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "5 scheduled runs did not happen: {st:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Retention after each run: exactly the 3 newest are kept, all taken by the schedule.
    let vault_h = localdr::vault::Vault::at(&vault).unwrap();
    let all = vault_h.snapshot_ids(Some("data")).unwrap();
    assert!(
        all.len() <= 4,
        "retention keeps 3 (+1 if a run is mid-way): {all:?}"
    );
    let sched = scheduled(&vault);
    assert!(sched.len() >= 2, "{sched:?}");
    let l = localdr(&["list", "--vault", vault.to_str().unwrap()]);
    assert!(l.stdout.contains("schedule"), "{}", l.stdout);
    let s = localdr(&["status", "--state-dir", sd.to_str().unwrap()]);
    assert!(
        s.stdout
            .contains(&format!("backup data ({}): next run", vault.display())),
        "{}",
        s.stdout
    );
    let sj = localdr(&["status", "--json", "--state-dir", sd.to_str().unwrap()]);
    let sj: serde_json::Value = serde_json::from_str(&sj.stdout).unwrap();
    let crons: Vec<&str> = sj["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["cron"].as_str().unwrap())
        .collect();
    assert_eq!(crons.len(), 2, "{sj}");
    assert!(
        crons.contains(&"0 4 * * *") && crons.contains(&"* * * * * *"),
        "{sj}"
    );

    // A daily 03:00 read in New York: the agent's next run is 03:00 there, which is 08:00
    // UTC in winter (EST) and 07:00 in summer (EDT); the plan after it is empty.
    let main = std::fs::read_to_string(d.join("main.tf")).unwrap();
    std::fs::write(
        d.join("main.tf"),
        main.replace(
            "schedule = \"* * * * * *\"",
            "schedule          = \"0 3 * * *\"\n  schedule_timezone = \"America/New_York\"",
        ),
    )
    .unwrap();
    tf.apply();
    tf.assert_empty_plan("with a schedule in a time zone");
    let schedule: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sd.join(format!("schedules/{key}.json"))).unwrap())
            .unwrap();
    assert_eq!(schedule["timezone"], "America/New_York", "{schedule}");
    let start = std::time::Instant::now();
    loop {
        let next = localdr::statedir::StateDir::new(&sd)
            .read_schedule_status(&key)
            .unwrap()
            .and_then(|s| s.next_run)
            .unwrap_or_default();
        if next.contains("T08:00:00") || next.contains("T07:00:00") {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "the agent's next run is not 03:00 in New York: {next:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // The agent runs what its schedule file says: a hand edit of it is drift.
    let mut edited = schedule.clone();
    edited["cron"] = "*/5 * * * *".into();
    edited["timezone"] = "UTC".into();
    std::fs::write(
        sd.join(format!("schedules/{key}.json")),
        serde_json::to_vec(&edited).unwrap(),
    )
    .unwrap();
    let p = tf.plan();
    assert_eq!(p.code, 2, "{}", p.all());
    assert!(
        p.stdout.contains("\"*/5 * * * *\" -> \"0 3 * * *\"")
            && p.stdout.contains("+ schedule_timezone")
            && p.stdout.contains("\"America/New_York\""),
        "{}",
        p.stdout
    );
    tf.apply();
    tf.assert_empty_plan("after repairing the hand-edited schedule");
    let read = |key: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(sd.join(format!("schedules/{key}.json"))).unwrap())
            .unwrap()
    };
    assert_eq!(read(&key), schedule);
    // The other vault's backup taken off its schedule: this one's stays as it is.
    let main = std::fs::read_to_string(d.join("main.tf")).unwrap();
    std::fs::write(
        d.join("main.tf"),
        main.replace("  schedule = \"0 4 * * *\"\n", ""),
    )
    .unwrap();
    tf.apply();
    tf.assert_empty_plan("with one of the two backups unscheduled");
    assert!(!sd.join(format!("schedules/{nas_key}.json")).exists());
    assert_eq!(read(&key), schedule);
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    // Without the schedule the agent has nothing to do and exits.
    let start = std::time::Instant::now();
    while localdr::statedir::StateDir::new(&sd).agent_running() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "the agent did not exit after destroy"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let kept = localdr::vault::Vault::at(&vault)
        .unwrap()
        .snapshot_ids(Some("data"))
        .unwrap();
    assert_eq!(
        kept.len(),
        3,
        "after the last run retention leaves 3: {kept:?}"
    );
}
