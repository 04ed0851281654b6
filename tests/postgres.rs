//! PostgreSQL as a source, against a real PostgreSQL server started for the test: the
//! seed's usuarios/productos/pedidos schema, backed up through real `terraform apply` and
//! the CLI, mutated, restored to a new database and over the original, drilled; bad
//! passwords, a stopped server and an unknown database give clear errors without the
//! password in them.

use localdr_e2e::{localdr, localdr_stdin, PgServer, Tf, TfVersion};
use std::path::Path;

const SCHEMA: &str = "
create table usuarios (usuario_id serial primary key, nombre varchar(100) not null, email varchar(100) unique not null, fecha_registro timestamp default now());
create table productos (producto_id serial primary key, nombre varchar(100) not null, precio numeric(10,2) not null, stock integer default 0);
create table pedidos (pedido_id serial primary key, usuario_id integer not null references usuarios on delete cascade, producto_id integer not null references productos on delete cascade, cantidad integer not null, fecha_pedido timestamp default now());
insert into usuarios (nombre, email) select 'user ' || i, 'u' || i || '@example.com' from generate_series(1, 200) i;
insert into productos (nombre, precio, stock) select 'product ' || i, i * 1.5, i from generate_series(1, 50) i;
insert into pedidos (usuario_id, producto_id, cantidad) select 1 + i % 200, 1 + i % 50, 1 + i % 7 from generate_series(1, 1000) i;
";

fn seed(pg: &PgServer) {
    pg.psql("postgres", "create database tienda");
    pg.psql("tienda", SCHEMA);
}

fn counts(pg: &PgServer, db: &str) -> String {
    pg.psql(
        db,
        "select (select count(*) from usuarios) || ',' || (select count(*) from productos) || ',' || (select count(*) from pedidos) || ',' || (select sum(precio) from productos)",
    )
}

fn pwfile(dir: &Path, pw: &str) -> String {
    let p = dir.join("pgpass.txt");
    std::fs::write(&p, format!("{pw}\n")).unwrap();
    p.display().to_string()
}

#[test]
fn terraform_backup_then_restore_to_new_and_original_database() {
    let pg = PgServer::start();
    seed(&pg);
    let before = counts(&pg, "tienda");
    let tf = Tf::new(
        TfVersion::New,
        &format!(
            r#"
{head}variable "password" {{
  type      = string
  sensitive = true
}}
resource "localdr_backup" "db" {{
  name  = "tienda"
  vault = "${{path.root}}/vault"
  postgres {{
    host     = "127.0.0.1"
    port     = {port}
    database = "tienda"
    user     = "postgres"
    password = var.password
  }}
  rpo = "1h"
  rto = "5m"
}}
output "snapshot" {{
  value = localdr_backup.db.snapshot_id
}}
"#,
            head = localdr_e2e::terraform_head(None),
            port = pg.port
        ),
    );
    tf.init();
    let pw_var = format!("password={}", pg.password);
    let r = tf.ok(&["apply", "-auto-approve", "-no-color", "-var", &pw_var]);
    assert!(
        !r.all().contains(&pg.password),
        "password leaked into apply output"
    );
    let p = tf.run(&["plan", "-detailed-exitcode", "-no-color", "-var", &pw_var]);
    assert_eq!(p.code, 0, "plan after apply:\n{}", p.all());

    // The password file the provider keeps for the agent and the CLI: deleting it is drift,
    // and apply writes it again (never into the plan's output).
    let secret = tf.path().join(".localdr/secrets/tienda.password");
    assert!(secret.exists(), "{}", secret.display());
    std::fs::remove_file(&secret).unwrap();
    let p = tf.run(&["plan", "-detailed-exitcode", "-no-color", "-var", &pw_var]);
    assert_eq!(p.code, 2, "{}", p.all());
    assert!(
        flat(&p.all()).contains("database password file") && flat(&p.all()).contains("is missing"),
        "{}",
        p.all()
    );
    assert!(!p.all().contains(&pg.password), "password leaked into plan");
    tf.ok(&["apply", "-auto-approve", "-no-color", "-var", &pw_var]);
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap().trim(),
        pg.password
    );
    let p = tf.run(&["plan", "-detailed-exitcode", "-no-color", "-var", &pw_var]);
    assert_eq!(
        p.code,
        0,
        "plan after repairing the password file:\n{}",
        p.all()
    );
    let state = std::fs::read_to_string(tf.path().join("terraform.tfstate")).unwrap();
    let vault = tf.path().join("vault");
    for f in walk(&vault) {
        let s = std::fs::read(&f).unwrap();
        assert!(
            !String::from_utf8_lossy(&s).contains(&pg.password),
            "password found in {}",
            f.display()
        );
    }
    // Terraform itself keeps sensitive values in state (as it does for every provider);
    // ours must not add it anywhere else.
    let _ = state;

    // Mutate, then restore into a new database: the old content, the source untouched.
    pg.psql(
        "tienda",
        "delete from pedidos where pedido_id <= 400; update productos set precio = 0;",
    );
    let mutated = counts(&pg, "tienda");
    assert_ne!(mutated, before);
    let v = vault.to_str().unwrap();
    let pwf = pwfile(tf.path(), &pg.password);
    let r = localdr(&[
        "restore",
        "--vault",
        v,
        "--name",
        "tienda",
        "--latest",
        "--to-database",
        "tienda_restored",
        "--pg-password-file",
        &pwf,
        "--yes",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(counts(&pg, "tienda_restored"), before);
    assert_eq!(counts(&pg, "tienda"), mutated);
    // Restoring to a database that exists is refused.
    let r = localdr(&[
        "restore",
        "--vault",
        v,
        "--name",
        "tienda",
        "--latest",
        "--to-database",
        "tienda_restored",
        "--pg-password-file",
        &pwf,
        "--yes",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);

    // Over the original, after confirming: a safety snapshot first, then the old content.
    let r = localdr_stdin(
        &[
            "restore",
            "--vault",
            v,
            "--name",
            "tienda",
            "--latest",
            "--pg-password-file",
            &pwf,
        ],
        "yes\n",
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("ORIGINAL database"),
        "the confirmation says where: {}",
        r.stderr
    );
    assert!(r.stdout.contains("tienda.pre-restore_"), "{}", r.stdout);
    assert_eq!(counts(&pg, "tienda"), before);
    // The safety snapshot holds the mutated data: restoring it gives it back.
    let r = localdr(&[
        "restore",
        "--vault",
        v,
        "--name",
        "tienda.pre-restore",
        "--latest",
        "--to-database",
        "tienda_safety",
        "--pg-password-file",
        &pwf,
        "--yes",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(counts(&pg, "tienda_safety"), mutated);

    // A drill: scratch database, row counts compared, removed, RTO and RPO measured.
    let r = localdr(&[
        "drill",
        "--vault",
        v,
        "--backup",
        "tienda",
        "--pg-password-file",
        &pwf,
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    let d: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(d["passed"], true, "{d}");
    assert!(
        d["checks"]
            .to_string()
            .contains("public.pedidos: 1000 rows"),
        "{d}"
    );
    println!(
        "FIGURE drill: RTO {:.2} s, RPO {:.0} s",
        d["rto_seconds"].as_f64().unwrap(),
        d["rpo_seconds"].as_f64().unwrap()
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "select count(*) from pg_database where datname like 'localdr_drill%'"
        ),
        "0"
    );
    // An RPO of 1 ms cannot be met.
    let r = localdr(&[
        "drill",
        "--vault",
        v,
        "--backup",
        "tienda",
        "--pg-password-file",
        &pwf,
        "--rpo",
        "1ms",
    ]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("RPO missed"), "{}", r.stdout);

    tf.ok(&["destroy", "-auto-approve", "-no-color", "-var", &pw_var]);
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn bad_connections_fail_at_plan_naming_the_attribute_without_the_password() {
    let pg = PgServer::start();
    seed(&pg);
    let tf = Tf::new(TfVersion::New, "");
    let tf_dir = tf.path().to_path_buf();
    // The password comes from a variable, as it would in real use (Terraform quotes the
    // configuration line in errors; a literal there would show up for that reason alone).
    let cfg = |port: u16, db: &str, pw: &str| {
        std::fs::write(tf_dir.join("terraform.tfvars"), format!("pw = \"{pw}\"\n")).unwrap();
        format!(
            r#"
{head}variable "pw" {{
  type      = string
  sensitive = true
}}
resource "localdr_backup" "db" {{
  name  = "tienda"
  vault = "${{path.root}}/vault"
  postgres {{
    port     = {port}
    database = "{db}"
    password = var.pw
  }}
}}
"#,
            head = localdr_e2e::terraform_head(None)
        )
    };
    std::fs::write(
        tf.path().join("main.tf"),
        cfg(pg.port, "tienda", "WrongPassword123"),
    )
    .unwrap();
    tf.init();
    let p = tf.run(&["plan", "-no-color"]);
    assert_eq!(p.code, 1, "{}", p.all());
    assert!(
        flat(&p.stderr).contains("password authentication failed"),
        "{}",
        p.stderr
    );
    assert!(
        flat(&p.stderr).contains("postgres[0].password") || flat(&p.stderr).contains("password ="),
        "{}",
        p.stderr
    );
    assert!(
        !p.all().contains("WrongPassword123"),
        "password leaked:\n{}",
        p.all()
    );

    std::fs::write(
        tf.path().join("main.tf"),
        cfg(pg.port, "nosuchdb", &pg.password),
    )
    .unwrap();
    let p = tf.run(&["plan", "-no-color"]);
    assert_eq!(p.code, 1, "{}", p.all());
    assert!(
        flat(&p.stderr).contains("database \"nosuchdb\" does not exist"),
        "{}",
        p.stderr
    );

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::fs::write(
        tf.path().join("main.tf"),
        cfg(closed, "tienda", &pg.password),
    )
    .unwrap();
    let p = tf.run(&["plan", "-no-color"]);
    assert_eq!(p.code, 1, "{}", p.all());
    assert!(
        flat(&p.stderr).contains("not accepting connections"),
        "{}",
        p.stderr
    );
    assert!(
        !p.all().contains(&pg.password),
        "password leaked:\n{}",
        p.all()
    );

    // sslmode reaches the client tools: this server has no TLS, so `require` is refused
    // by libpq and named on sslmode; `disable` connects; a value libpq does not know is
    // refused before any connection.
    let with_sslmode = |mode: &str| {
        cfg(pg.port, "tienda", &pg.password).replace(
            "password = var.pw",
            &format!("password = var.pw\n    sslmode  = \"{mode}\""),
        )
    };
    std::fs::write(tf.path().join("main.tf"), with_sslmode("require")).unwrap();
    let p = tf.run(&["plan", "-no-color"]);
    assert_eq!(p.code, 1, "{}", p.all());
    assert!(
        flat(&p.stderr).contains("server does not support SSL")
            && flat(&p.stderr).contains("sslmode = \"require\""),
        "{}",
        p.stderr
    );
    std::fs::write(tf.path().join("main.tf"), with_sslmode("disable")).unwrap();
    let p = tf.run(&["plan", "-no-color"]);
    assert_eq!(p.code, 0, "{}", p.all());
    std::fs::write(tf.path().join("main.tf"), with_sslmode("sometimes")).unwrap();
    let p = tf.run(&["plan", "-no-color"]);
    assert_eq!(p.code, 1, "{}", p.all());
    assert!(
        flat(&p.stderr).contains(
            "sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full"
        ),
        "{}",
        p.stderr
    );
    assert!(
        !flat(&p.stderr).contains("PostgreSQL check failed"),
        "{}",
        p.stderr
    );
}

/// Terraform wraps diagnostics at 80 columns: join the lines before searching.
fn flat(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
