//! The `localdr` CLI against real files: restore by menu, number, id, latest and time;
//! safety copies; tfstate lineage/serial rules; damage found by verify and refused by
//! restore; entries escaping the target refused; metadata round trips.

use localdr_e2e::{flip_byte, localdr, localdr_stdin, ls};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn state_doc(serial: u64, lineage: &str) -> String {
    format!(
        r#"{{"version":4,"terraform_version":"1.11.4","serial":{serial},"lineage":"{lineage}","outputs":{{}},"resources":[]}}"#
    )
}

fn backup(vault: &Path, name: &str, flag: &str, src: &Path) -> serde_json::Value {
    let r = localdr(&[
        "backup",
        "--vault",
        s(vault),
        "--name",
        name,
        flag,
        s(src),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn metadata_round_trips_through_backup_and_restore() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("empty/deeper")).unwrap();
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::write(src.join("dir/exec.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        src.join("dir/exec.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::write(src.join("secret"), "s3cret").unwrap();
    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let big: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.join("big.bin"), big).unwrap();
    std::fs::write(src.join("zero"), "").unwrap();
    std::os::unix::fs::symlink("dir/exec.sh", src.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", src.join("dangling")).unwrap();
    std::fs::set_permissions(src.join("empty"), std::fs::Permissions::from_mode(0o710)).unwrap();
    let old = filetime::FileTime::from_unix_time(1_600_000_000, 123_456_789);
    filetime::set_file_times(src.join("secret"), old, old).unwrap();
    filetime::set_file_times(src.join("empty"), old, old).unwrap();
    filetime::set_symlink_file_times(src.join("rel-link"), old, old).unwrap();

    let vault = t.path().join("vault");
    backup(&vault, "src", "--path", &src);
    let out = t.path().join("out");
    let r = localdr(&["restore", "--vault", s(&vault), "--latest", "--to", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.all());

    for rel in [
        "",
        "empty",
        "empty/deeper",
        "dir",
        "dir/exec.sh",
        "secret",
        "big.bin",
        "zero",
        "rel-link",
        "dangling",
    ] {
        let a = std::fs::symlink_metadata(src.join(rel)).unwrap();
        let b = std::fs::symlink_metadata(out.join(rel)).unwrap();
        assert_eq!(a.file_type(), b.file_type(), "{rel}: type");
        assert_eq!(a.mode() & 0o7777, b.mode() & 0o7777, "{rel}: mode");
        assert_eq!(
            (a.mtime(), a.mtime_nsec()),
            (b.mtime(), b.mtime_nsec()),
            "{rel}: mtime"
        );
        if a.is_file() {
            assert_eq!(
                std::fs::read(src.join(rel)).unwrap(),
                std::fs::read(out.join(rel)).unwrap(),
                "{rel}"
            );
        }
        if a.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(src.join(rel)).unwrap(),
                std::fs::read_link(out.join(rel)).unwrap()
            );
        }
    }
}

#[test]
fn restore_menu_asks_and_keeps_a_safety_copy() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("notes.txt");
    let vault = t.path().join("vault");
    std::fs::write(&f, "version one").unwrap();
    backup(&vault, "notes", "--path", &f);
    std::fs::write(&f, "version two").unwrap();
    backup(&vault, "notes", "--path", &f);
    std::fs::write(&f, "version three (unsaved)").unwrap();

    // Declining the confirmation changes nothing.
    let r = localdr_stdin(&["restore", "--vault", s(&vault)], "1\nno\n");
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("  1) notes_") && r.stderr.contains("  2) notes_"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&f).unwrap(),
        "version three (unsaved)"
    );

    // Choosing 1 and confirming restores the oldest, keeping what was there.
    let r = localdr_stdin(&["restore", "--vault", s(&vault)], "1\nyes\n");
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "version one");
    let safety: Vec<String> = ls(t.path())
        .into_iter()
        .filter(|n| n.contains(".pre-restore-"))
        .collect();
    assert_eq!(safety.len(), 1, "{safety:?}");
    assert_eq!(
        std::fs::read_to_string(t.path().join(&safety[0])).unwrap(),
        "version three (unsaved)"
    );

    // A bad number is an error that changes nothing.
    let r = localdr_stdin(&["restore", "--vault", s(&vault)], "7\n");
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("between 1 and 2"), "{}", r.stderr);

    // --number, --id and --latest pick without asking.
    let r = localdr(&["restore", "--vault", s(&vault), "--number", "2", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "version two");
    let list: serde_json::Value =
        serde_json::from_str(&localdr(&["list", "--vault", s(&vault), "--json"]).stdout).unwrap();
    let first_id = list["snapshots"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(list["snapshots"][1]["number"], 2);
    let to = t.path().join("elsewhere.txt");
    let r = localdr(&[
        "restore",
        "--vault",
        s(&vault),
        "--id",
        &first_id,
        "--to",
        s(&to),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(std::fs::read_to_string(&to).unwrap(), "version one");
}

#[test]
fn point_in_time_restore_picks_the_newest_at_or_before() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("f");
    let vault = t.path().join("vault");
    let mut times = Vec::new();
    for i in 1..=3 {
        std::fs::write(&f, format!("v{i}")).unwrap();
        let j = backup(&vault, "f", "--path", &f);
        times.push(j["created_at"].as_str().unwrap().to_string());
    }
    // Exactly at the second snapshot's time → the second.
    let to = t.path().join("out");
    let r = localdr(&[
        "restore",
        "--vault",
        s(&vault),
        "--at",
        &times[1],
        "--to",
        s(&to),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(std::fs::read_to_string(&to).unwrap(), "v2");
    // Before the first → a clear error.
    let r = localdr(&[
        "restore",
        "--vault",
        s(&vault),
        "--at",
        "2000-01-01T00:00:00Z",
        "--to",
        s(&to),
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no snapshot was taken at or before"),
        "{}",
        r.stderr
    );
    let r = localdr(&["restore", "--vault", s(&vault), "--at", "yesterday"]);
    assert!(r.stderr.contains("RFC 3339"), "{}", r.stderr);
}

#[test]
fn tfstate_restore_refuses_other_lineage_and_older_serial() {
    let t = tempfile::tempdir().unwrap();
    let st = t.path().join("terraform.tfstate");
    let vault = t.path().join("vault");
    std::fs::write(&st, state_doc(5, "L-one")).unwrap();
    let j = backup(&vault, "st", "--tfstate", &st);
    assert_eq!(j["tfstate"]["serial"], 5);
    assert_eq!(j["tfstate"]["lineage"], "L-one");

    std::fs::write(&st, state_doc(9, "L-one")).unwrap();
    let r = localdr(&["restore", "--vault", s(&vault), "--latest"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("serial 5 is lower than the current state's 9"),
        "{}",
        r.stderr
    );

    std::fs::write(&st, state_doc(1, "L-two")).unwrap();
    let r = localdr(&["restore", "--vault", s(&vault), "--latest"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("lineage"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(&st).unwrap(),
        state_doc(1, "L-two"),
        "a refused restore must not touch the file"
    );

    let r = localdr(&["restore", "--vault", s(&vault), "--latest", "--force"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(std::fs::read_to_string(&st).unwrap(), state_doc(5, "L-one"));

    // Not a state at all: refused at backup time.
    let bad = t.path().join("bad.tfstate");
    std::fs::write(&bad, "{}").unwrap();
    let r = localdr(&[
        "backup",
        "--vault",
        s(&vault),
        "--name",
        "bad",
        "--tfstate",
        s(&bad),
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("not a usable Terraform state"),
        "{}",
        r.stderr
    );
}

#[test]
fn flipped_byte_is_found_by_verify_and_refused_by_restore() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("d");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), vec![b'a'; 100_000]).unwrap();
    let vault = t.path().join("vault");
    backup(&vault, "d", "--path", &src);
    assert_eq!(localdr(&["verify", "--vault", s(&vault)]).code, 0);
    let pack = vault.join("packs").join(&ls(&vault.join("packs"))[0]);
    flip_byte(&pack, 12);
    let r = localdr(&["verify", "--vault", s(&vault), "--json"]);
    assert_eq!(r.code, 1, "{}", r.all());
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["damaged"], 1);
    let out = t.path().join("out");
    let r = localdr(&["restore", "--vault", s(&vault), "--latest", "--to", s(&out)]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("damaged"), "{}", r.stderr);
    assert!(!out.exists());
    // A fresh backup does not reuse the damaged pack; forgetting the damaged snapshot
    // deletes its pack and leaves a vault that verifies.
    let damaged_id = ls(&vault.join("snapshots"))[0]
        .trim_end_matches(".json")
        .to_string();
    backup(&vault, "d", "--path", &src);
    assert_eq!(localdr(&["verify", "--vault", s(&vault)]).code, 1);
    let r = localdr(&["forget", "--vault", s(&vault), "--id", &damaged_id]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!ls(&vault.join("packs")).contains(&format!("{damaged_id}.pack")));
    assert_eq!(localdr(&["verify", "--vault", s(&vault)]).code, 0);
    let r = localdr(&[
        "forget",
        "--vault",
        s(&vault),
        "--id",
        "nope_2020-01-01_00-00-00",
    ]);
    assert_eq!(r.code, 1);
    assert!(!out.exists());
    assert!(
        ls(t.path()).iter().all(|n| !n.contains("localdr-restore")),
        "staging left behind: {:?}",
        ls(t.path())
    );

    // A damaged manifest is found too.
    std::fs::write(src.join("b"), "b").unwrap();
    backup(&vault, "d", "--path", &src);
    let newest = ls(&vault.join("snapshots")).pop().unwrap();
    let mp = vault.join("snapshots").join(&newest);
    let text = std::fs::read_to_string(&mp)
        .unwrap()
        .replacen("\"size\": 1", "\"size\": 2", 1);
    std::fs::write(&mp, text).unwrap();
    let id = newest.trim_end_matches(".json");
    let r = localdr(&["verify", "--vault", s(&vault), "--id", id]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("checksum"), "{}", r.stdout);
}

#[test]
fn entries_escaping_the_target_are_refused() {
    use localdr::vault::manifest::{EntryKind, Manifest};
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("d");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("payload"), "evil").unwrap();
    let vault = t.path().join("vault");
    backup(&vault, "d", "--path", &src);
    let mp = vault
        .join("snapshots")
        .join(&ls(&vault.join("snapshots"))[0]);
    let original = Manifest::load(&mp).unwrap();
    // Forge manifests (re-sealed, so only the path checks can stop them).
    for evil in ["../escaped", "/tmp/abs-escape", "sub/../../escaped"] {
        let mut m = original.clone();
        m.entries[1].path = evil.to_string();
        m.seal().unwrap();
        std::fs::write(&mp, serde_json::to_vec(&m).unwrap()).unwrap();
        let out = t.path().join("restore-here/out");
        let r = localdr(&["restore", "--vault", s(&vault), "--latest", "--to", s(&out)]);
        assert_eq!(r.code, 1, "{evil}: {}", r.all());
        assert!(r.stderr.contains("escape"), "{evil}: {}", r.stderr);
        assert!(!t.path().join("escaped").exists());
        assert!(!t.path().join("restore-here/escaped").exists());
        assert!(!out.exists());
    }
    // Beneath a symlink: `link -> <dir>`, then `link/pwned` would write outside the target.
    let mut m = original.clone();
    let mut link = m.entries[1].clone();
    link.kind = EntryKind::Symlink;
    link.path = "link".into();
    link.target = Some(s(t.path()).to_string());
    link.chunks.clear();
    link.hash = None;
    m.entries[1].path = "link/pwned".into();
    m.entries.insert(1, link);
    m.seal().unwrap();
    std::fs::write(&mp, serde_json::to_vec(&m).unwrap()).unwrap();
    let o2 = t.path().join("o2");
    let r = localdr(&["restore", "--vault", s(&vault), "--latest", "--to", s(&o2)]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("beneath the symlink"), "{}", r.stderr);
    assert!(!t.path().join("pwned").exists());
}

#[test]
fn verify_max_age_fails_when_the_newest_good_snapshot_is_old() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("f");
    std::fs::write(&f, "x").unwrap();
    let vault = t.path().join("vault");
    backup(&vault, "f", "--path", &f);
    assert_eq!(
        localdr(&["verify", "--vault", s(&vault), "--max-age", "1h"]).code,
        0
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = localdr(&["verify", "--vault", s(&vault), "--max-age", "1s"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("STALE"), "{}", r.stdout);
    let r = localdr(&["verify", "--vault", s(&vault), "--max-age", "soon"]);
    assert!(r.stderr.contains("--max-age"), "{}", r.stderr);
}

#[test]
fn retention_and_dr_copy_from_the_cli() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("f");
    let vault = t.path().join("vault");
    let dr = t.path().join("dr");
    for i in 0..5 {
        std::fs::write(&f, format!("v{i}")).unwrap();
        let r = localdr(&[
            "backup",
            "--vault",
            s(&vault),
            "--name",
            "f",
            "--path",
            s(&f),
            "--keep-last",
            "2",
            "--copy-to",
            s(&dr),
        ]);
        assert_eq!(r.code, 0, "{}", r.all());
    }
    assert_eq!(ls(&vault.join("snapshots")).len(), 2);
    assert_eq!(
        ls(&vault.join("packs")).len(),
        2,
        "packs of pruned snapshots are deleted"
    );
    assert_eq!(ls(&dr.join("snapshots")), ls(&vault.join("snapshots")));
    assert_eq!(localdr(&["verify", "--vault", s(&dr)]).code, 0);
    let r = localdr(&[
        "prune",
        "--vault",
        s(&vault),
        "--name",
        "f",
        "--keep-last",
        "1",
        "--dry-run",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["removed"].as_array().unwrap().len(), 1);
    assert_eq!(
        ls(&vault.join("snapshots")).len(),
        2,
        "a dry run removes nothing"
    );
    let r = localdr(&[
        "prune",
        "--vault",
        s(&vault),
        "--name",
        "f",
        "--keep-last",
        "1",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(ls(&vault.join("snapshots")).len(), 1);
}

#[test]
fn unchanged_files_are_not_stored_again() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("d");
    std::fs::create_dir(&src).unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("f{i}")), vec![i as u8; 50_000]).unwrap();
    }
    let vault = t.path().join("vault");
    let first = backup(&vault, "d", "--path", &src);
    assert!(first["added_bytes"].as_u64().unwrap() > 0);
    let second = backup(&vault, "d", "--path", &src);
    assert_eq!(second["added_bytes"], 0, "a no-change run writes no data");
    std::fs::write(src.join("f3"), "changed").unwrap();
    let third = backup(&vault, "d", "--path", &src);
    let added = third["added_bytes"].as_u64().unwrap();
    assert!(
        added > 0 && added < 1000,
        "only the changed file is stored: {added}"
    );
    let out = t.path().join("out");
    let r = localdr(&["restore", "--vault", s(&vault), "--latest", "--to", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(std::fs::read_to_string(out.join("f3")).unwrap(), "changed");
    assert_eq!(std::fs::read(out.join("f4")).unwrap(), vec![4u8; 50_000]);
}

/// `status` is what people reach for in an incident: a damaged schedule file is named on
/// stderr and the rest is still reported, in the table and in `--json`.
#[test]
fn status_names_a_damaged_schedule_and_reports_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let sd = localdr::statedir::StateDir::new(t.path());
    sd.write_schedule(&localdr::spec::BackupSchedule {
        api_version: localdr::spec::API_VERSION,
        name: "db".into(),
        vault: "/srv/vault".into(),
        cron: "0 3 * * *".into(),
        timezone: "UTC".into(),
        start_window: "1h".into(),
    })
    .unwrap();
    std::fs::write(sd.schedules_dir().join("x@000000000000.json"), "{bad").unwrap();
    let r = localdr(&["status", "--state-dir", s(t.path())]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("x@000000000000"), "{}", r.stderr);
    assert!(
        r.stdout
            .contains("backup db (/srv/vault): scheduled, but no agent runs it"),
        "{}",
        r.stdout
    );
    let j = localdr(&["status", "--json", "--state-dir", s(t.path())]);
    assert_eq!(j.code, 0, "{}", j.all());
    let j: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(j["backups"][0]["name"], "db", "{j}");
    assert_eq!(j["backups"][0]["cron"], "0 3 * * *", "{j}");
    assert_eq!(j["backups"].as_array().unwrap().len(), 1, "{j}");
}
