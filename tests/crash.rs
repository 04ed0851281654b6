//! Crash safety: `kill -9` a backup at many points while it writes; afterwards `list` shows
//! only complete snapshots, `verify` passes, restore gives the complete data, and the next
//! run removes the leftovers (temp files, packs no manifest references).

use localdr_e2e::{bin, localdr, ls};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Kills the child on drop, so a failing assertion never leaves a backup running.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn snapshot_count(vault: &Path) -> usize {
    let r = localdr(&["list", "--vault", s(vault), "--json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        j["damaged"].as_array().unwrap().is_empty(),
        "damaged snapshot listed: {j}"
    );
    j["snapshots"].as_array().unwrap().len()
}

#[test]
fn kill_9_mid_backup_never_leaves_a_listed_partial_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // Compressible text at a slow zstd level: a backup that takes long enough to be hit
    // while the pack is being written, then while it is renamed and the manifest written.
    let line = b"2024-01-01T00:00:00Z INFO req=0123456789abcdef service.handler latency_ms=12 status=200\n";
    let mut big = Vec::with_capacity(24 << 20);
    let mut i: u64 = 0;
    while big.len() < (24 << 20) {
        big.extend_from_slice(line);
        big.extend_from_slice(format!("{i}\n").as_bytes());
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
    }
    std::fs::write(src.join("big.log"), &big).unwrap();
    for k in 0..200 {
        std::fs::write(src.join(format!("small-{k}.txt")), format!("file {k}\n")).unwrap();
    }
    let vault = t.path().join("vault");

    // A complete snapshot first, so there is something to stay intact.
    let r = localdr(&[
        "backup",
        "--vault",
        s(&vault),
        "--name",
        "src",
        "--path",
        s(&src),
        "--compression-level",
        "1",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    // Touch the big file so the next runs re-read it instead of reusing it.
    let start = Instant::now();
    let mut killed_with_temp = 0;
    let mut completed = 1;
    for round in 0..8u64 {
        std::fs::write(src.join("small-0.txt"), format!("round {round}\n")).unwrap();
        filetime::set_file_mtime(
            src.join("big.log"),
            filetime::FileTime::from_unix_time(1_700_000_000 + round as i64, 0),
        )
        .unwrap();
        let child = Child(
            Command::new(bin("localdr"))
                .args([
                    "backup",
                    "--vault",
                    s(&vault),
                    "--name",
                    "src",
                    "--path",
                    s(&src),
                    "--compression-level",
                    "19",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut child = child;
        // Kill at increasing points: 20 ms, 70 ms, … into the run.
        std::thread::sleep(Duration::from_millis(20 + round * 50));
        let had_temp = ls(&vault.join("packs")).iter().any(|f| f.starts_with('.'));
        // SAFETY: sending SIGKILL to our own child's pid.
        unsafe { libc::kill(child.0.id() as i32, libc::SIGKILL) };
        let status = child.0.wait().unwrap();
        if status.success() {
            completed += 1;
        } else if had_temp {
            killed_with_temp += 1;
        }
        // Whatever point it died at: only complete snapshots are listed, and they verify.
        assert_eq!(snapshot_count(&vault), completed, "round {round}");
        let v = localdr(&["verify", "--vault", s(&vault)]);
        assert_eq!(
            v.code,
            0,
            "round {round}: verify after kill -9:\n{}",
            v.all()
        );
    }
    assert!(
        killed_with_temp >= 1,
        "no kill landed while a pack was being written"
    );
    assert!(start.elapsed() < Duration::from_secs(240));

    // A killed run may leave a temp pack (and an unreferenced pack if it died between the
    // pack rename and the manifest). Plant both kinds too, then one good run cleans up.
    std::fs::write(
        vault.join("packs/.src_2020-01-01_00-00-00.pack.tmp-1"),
        b"partial",
    )
    .unwrap();
    std::fs::write(vault.join("packs/src_2020-01-01_00-00-00.pack"), b"orphan").unwrap();
    std::fs::write(vault.join("snapshots/.src_2020.json.tmp-1"), b"{").unwrap();
    let r = localdr(&[
        "backup",
        "--vault",
        s(&vault),
        "--name",
        "src",
        "--path",
        s(&src),
        "--compression-level",
        "1",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    let packs = ls(&vault.join("packs"));
    assert!(
        packs.iter().all(|f| !f.starts_with('.')),
        "temp files left: {packs:?}"
    );
    assert!(
        !packs.contains(&"src_2020-01-01_00-00-00.pack".to_string()),
        "orphan pack left"
    );
    assert!(ls(&vault.join("snapshots"))
        .iter()
        .all(|f| !f.starts_with('.')));
    assert_eq!(localdr(&["verify", "--vault", s(&vault)]).code, 0);

    let out = t.path().join("out");
    assert_eq!(
        localdr(&["restore", "--vault", s(&vault), "--latest", "--to", s(&out)]).code,
        0
    );
    assert_eq!(std::fs::read(out.join("big.log")).unwrap(), big);
}

#[test]
fn a_second_writer_waits_for_the_vault_lock() {
    let t = tempfile::tempdir().unwrap();
    let vault = t.path().join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    let f = t.path().join("f");
    std::fs::write(&f, "x").unwrap();
    // Hold the lock from this process, as a running backup would.
    let lock = localdr::vault::lock::acquire(&vault, true).unwrap();
    let r = Command::new(bin("localdr"))
        .args([
            "backup",
            "--vault",
            s(&vault),
            "--name",
            "f",
            "--path",
            s(&f),
        ])
        .env("LOCALDR_LOCK_TIMEOUT", "300ms")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("locked by another localdr process"), "{err}");
    drop(lock);
    assert_eq!(
        localdr(&[
            "backup",
            "--vault",
            s(&vault),
            "--name",
            "f",
            "--path",
            s(&f)
        ])
        .code,
        0
    );
}
