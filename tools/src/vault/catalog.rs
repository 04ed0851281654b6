//! What a vault holds, checked: every snapshot (of one name, or all) with whether it
//! passes a quick verification (manifest checksum, its packs present with the size and
//! stat key of their last full hash) and which DR vaults named by its policy hold a copy.
//! It is what an HCL data source or a monitoring script wants: "is there a good recent
//! snapshot, and is it in the DR vault" without reading every byte (`verify` does that).

use super::verify::{Depth, Verifier};
use super::Vault;
use anyhow::Result;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One snapshot in the catalog; `number` counts from 1, oldest first, as `list` and
/// `restore --number` do.
#[derive(Debug, Clone)]
pub struct Item {
    pub number: usize,
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub kind: String,
    pub file_count: u64,
    pub size_bytes: u64,
    pub checksum: String,
    /// Problems the quick verification found; empty when the snapshot is good.
    pub problems: Vec<String>,
    /// DR vaults (from the name's policy) that hold a good copy of this snapshot.
    pub copies: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub items: Vec<Item>,
    /// Manifests that could not be read: (id, why).
    pub damaged: Vec<super::Damaged>,
}

impl Catalog {
    /// The newest snapshot that passed verification.
    pub fn latest_good(&self) -> Option<&Item> {
        self.items.iter().rev().find(|i| i.problems.is_empty())
    }
}

/// The catalog of `vault`, under its read lock. A vault that does not exist is an error
/// (a typo in a path should not read as "no snapshots").
pub fn catalog(vault: &Vault, name: Option<&str>) -> Result<Catalog> {
    if !vault.exists() {
        anyhow::bail!(
            "{} is not a localdr vault (no snapshots/ directory)",
            vault.root().display()
        );
    }
    let _lock = vault.lock_for_read()?;
    let (good, damaged) = vault.manifests(name)?;
    // The DR vaults each name's policy names, opened once, each with one verifier (its
    // quick-check cache is read once, not once per snapshot).
    let mut dr_vaults: Vec<(PathBuf, Vault)> = Vec::new();
    let mut copies_of: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for m in &good {
        if copies_of.contains_key(m.name.as_str()) {
            continue;
        }
        let mut at = Vec::new();
        if let Some(p) = vault.load_policy(&m.name)? {
            for c in &p.copies {
                let path = p.resolve(&c.vault);
                let i = match dr_vaults.iter().position(|(q, _)| *q == path) {
                    Some(i) => i,
                    None => {
                        dr_vaults.push((path.clone(), Vault::at(&path)?));
                        dr_vaults.len() - 1
                    }
                };
                at.push(i);
            }
        }
        copies_of.insert(&m.name, at);
    }
    let mut dr_verifiers: Vec<Option<Verifier>> = dr_vaults
        .iter()
        .map(|(_, dr)| dr.exists().then(|| Verifier::new(dr, Depth::Quick)))
        .collect();
    let mut verifier = Verifier::new(vault, Depth::Quick);
    let mut items = Vec::with_capacity(good.len());
    for (i, m) in good.iter().enumerate() {
        let problems = verifier.check_snapshot(m);
        let copies = copies_of[m.name.as_str()]
            .iter()
            .filter(|&&d| {
                dr_verifiers[d]
                    .as_mut()
                    .is_some_and(|v| v.check_id(&m.id).is_ok())
            })
            .map(|&d| dr_vaults[d].0.clone())
            .collect();
        items.push(Item {
            number: i + 1,
            id: m.id.clone(),
            name: m.name.clone(),
            created_at: m.created_at,
            kind: m.source.kind.as_str().to_string(),
            file_count: m.file_count,
            size_bytes: m.size_bytes,
            checksum: m.checksum.clone(),
            problems,
            copies,
        });
    }
    Ok(Catalog { items, damaged })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::SourceKind;
    use crate::vault::policy::{CopyPolicy, Policy};
    use crate::vault::run::run;

    #[test]
    fn lists_numbers_checks_each_snapshot_and_finds_its_dr_copies() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("data.txt");
        let mut policy = Policy::new("d", SourceKind::Path, src.to_str().unwrap().into());
        policy.copies = vec![CopyPolicy {
            vault: t.path().join("dr").to_str().unwrap().into(),
            retention: None,
        }];
        let vault = Vault::at(&t.path().join("v")).unwrap();
        assert!(
            catalog(&vault, None).is_err(),
            "a missing vault is an error"
        );
        let mut ids = Vec::new();
        for body in ["one", "two", "three"] {
            std::fs::write(&src, body).unwrap();
            ids.push(run(&vault, &policy, true, false).unwrap().manifest.id);
        }
        let c = catalog(&vault, Some("d")).unwrap();
        let got: Vec<_> = c.items.iter().map(|i| (i.number, i.id.clone())).collect();
        assert_eq!(
            got,
            vec![
                (1, ids[0].clone()),
                (2, ids[1].clone()),
                (3, ids[2].clone())
            ]
        );
        assert!(c
            .items
            .iter()
            .all(|i| i.problems.is_empty() && i.copies.len() == 1));
        assert_eq!(c.latest_good().unwrap().id, ids[2]);
        assert_eq!(c.items[2].size_bytes, 5);

        // The newest one's data damaged, the middle one's DR copy gone.
        let newest = vault.load(&ids[2]).unwrap();
        let pack = vault.pack_path(&newest.packs[0].id);
        let len = std::fs::metadata(&pack).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&pack)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let dr = Vault::at(&t.path().join("dr")).unwrap();
        std::fs::remove_file(dr.manifest_path(&ids[1])).unwrap();
        let c = catalog(&vault, Some("d")).unwrap();
        assert!(!c.items[2].problems.is_empty());
        assert!(c.items[1].problems.is_empty() && c.items[1].copies.is_empty());
        assert_eq!(c.latest_good().unwrap().id, ids[1]);
        // Another name's filter sees nothing.
        assert!(catalog(&vault, Some("other")).unwrap().items.is_empty());
    }
}
