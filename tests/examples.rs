//! Every example folder is valid HCL for the provider as built: `terraform validate` (which
//! also runs the provider's own configuration checks) under both Terraform versions.

use localdr_e2e::{both_terraforms, repo_root, Tf, TfVersion};

fn examples_validate(v: TfVersion) {
    let root = repo_root().join("examples");
    let mut checked = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let tfs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "tf"))
            .collect();
        if tfs.is_empty() {
            continue;
        }
        let tf = Tf::new(v, "");
        std::fs::remove_file(tf.path().join("main.tf")).unwrap();
        for f in &tfs {
            std::fs::copy(f, tf.path().join(f.file_name().unwrap())).unwrap();
        }
        tf.init();
        let r = tf.run(&["validate", "-no-color"]);
        assert_eq!(r.code, 0, "{}: {}", dir.display(), r.all());
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} example folders found");
}

both_terraforms!(examples_validate);
