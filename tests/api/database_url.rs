//! One reading of `DATABASE_URL`: the service, `hello-birthday database
//! --env` and the backup and restore scripts (which ask the binary) accept
//! the same forms and refuse the same ones, with the same reason and
//! without printing the password.

use crate::support::{fresh_postgres_database, require_postgres, test_config};
use hello_birthday::domain::{DateOfBirth, Username};
use hello_birthday::store::Store;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use time::{Date, Month};

const BIN: &str = env!("CARGO_BIN_EXE_hello-birthday");

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// `program args` with only PATH, the binary and `env` in its environment,
/// from `dir`.
fn run(program: &Path, args: &[&str], env: &[(&str, &str)], dir: &Path) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HELLO_BIRTHDAY_BIN", BIN)
        .env("TMPDIR", dir)
        .current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()))
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn alice() -> (Username, DateOfBirth) {
    let dob = Date::from_calendar_date(1990, Month::January, 2).unwrap();
    (
        Username::parse("Alice").unwrap(),
        DateOfBirth::from_stored(dob),
    )
}

/// The CLI tools the scripts need, installed by scripts/setup.sh dev.
fn require_tools() {
    for tool in ["sqlite3", "jq"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "{tool} not found: run scripts/setup.sh dev");
    }
}

#[test]
fn refused_urls_are_refused_alike_by_the_service_and_the_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("backups");
    let dest = dest.to_str().unwrap();
    for (url, reason) in [
        (
            "sqlite://hb.db?mode=ro",
            "a sqlite URL takes no ?parameters",
        ),
        ("sqlite:", "a sqlite URL needs a file path"),
        ("hb.db", "must start with sqlite://"),
        ("postgress://hb:secret@h/db", "must start with sqlite://"),
        (
            "postgres://hb:secret@h/db?sslrootcert=/ca.pem",
            "unknown option `sslrootcert`",
        ),
        ("postgres://hb:secret@/db", "a postgres URL needs a host"),
    ] {
        let env = [("DATABASE_URL", url)];
        let service = run(Path::new(BIN), &[], &env, dir.path());
        let asked = run(Path::new(BIN), &["database", "--env"], &env, dir.path());
        let backup = run(&script("backup.sh"), &["--to", dest], &env, dir.path());
        let restore = run(&script("restore.sh"), &["--from", dest], &env, dir.path());
        for (who, out) in [
            ("the service", &service),
            ("database --env", &asked),
            ("backup.sh", &backup),
            ("restore.sh", &restore),
        ] {
            let all = text(out);
            assert!(!out.status.success(), "{who} accepted {url}: {all}");
            assert!(all.contains(reason), "{who} on {url}: {all}");
            assert!(!all.contains("secret"), "{who} printed the password: {all}");
        }
        // Refused at start-up: the usage status, before anything is opened.
        assert_eq!(service.status.code(), Some(2), "{}", text(&service));
        assert!(service.stdout.is_empty(), "{}", text(&service));
        assert!(
            !Path::new(dest).exists(),
            "backup.sh wrote before refusing {url}"
        );
        assert!(
            !dir.path().join("hb.db").exists(),
            "{url}: a file was created"
        );
    }
}

#[tokio::test]
async fn every_sqlite_form_backs_up_and_restores() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let abs = dir.path().join("src.db");
    let store = Store::connect(&test_config(&format!("sqlite://{}", abs.display())))
        .await
        .unwrap();
    let (user, dob) = alice();
    store.upsert(&user, dob).await.unwrap();
    store.close().await;

    // Relative (to the working directory) and absolute, with both prefixes.
    let manifest = run(
        &script("backup.sh"),
        &["--to", "backups"],
        &[("DATABASE_URL", "sqlite:src.db")],
        dir.path(),
    );
    assert!(manifest.status.success(), "{}", text(&manifest));
    assert!(
        String::from_utf8_lossy(&manifest.stderr).contains("backing up sqlite:src.db"),
        "{}",
        text(&manifest)
    );
    for (n, url) in [
        "sqlite:restored/a.db".to_owned(),
        "sqlite://restored/b.db".to_owned(),
        format!("sqlite:{}/restored/c.db", dir.path().display()),
        format!("sqlite://{}/restored/d.db", dir.path().display()),
    ]
    .iter()
    .enumerate()
    {
        let out = run(
            &script("restore.sh"),
            &["--from", "backups"],
            &[("DATABASE_URL", url)],
            dir.path(),
        );
        assert!(out.status.success(), "{url}: {}", text(&out));
        let file = dir
            .path()
            .join("restored")
            .join(["a", "b", "c", "d"][n].to_owned() + ".db");
        let restored = Store::connect(&test_config(&format!("sqlite://{}", file.display())))
            .await
            .unwrap();
        assert_eq!(restored.get(&user).await.unwrap(), Some(dob), "{url}");
        restored.close().await;
    }
}

/// Without --database-url, the scripts read the URL where the service does:
/// DATABASE_URL_FILE, else the systemd credential, and refuse what it
/// refuses (both DATABASE_URL and DATABASE_URL_FILE; a bad URL in a file).
#[tokio::test]
async fn the_scripts_read_the_url_from_a_file_or_the_credential() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&test_config(&format!(
        "sqlite://{}",
        dir.path().join("src.db").display()
    )))
    .await
    .unwrap();
    let (user, dob) = alice();
    store.upsert(&user, dob).await.unwrap();
    store.close().await;
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };

    let src_file = write("src.url", "sqlite:src.db\n");
    let backup = run(
        &script("backup.sh"),
        &["--to", "backups"],
        &[("DATABASE_URL_FILE", &src_file)],
        dir.path(),
    );
    assert!(backup.status.success(), "{}", text(&backup));
    assert!(
        String::from_utf8_lossy(&backup.stderr).contains("backing up sqlite:src.db"),
        "{}",
        text(&backup)
    );

    let file = write("restored.url", "sqlite:restored/file.db\n");
    write("creds/database-url", "sqlite:restored/credential.db");
    let creds = dir.path().join("creds");
    let creds = creds.to_str().unwrap();
    // DATABASE_URL beside the credential is taken as given, without the
    // service's warning (the backup unit verifies into a scratch database so).
    for (name, env) in [
        ("file", vec![("DATABASE_URL_FILE", file.as_str())]),
        ("credential", vec![("CREDENTIALS_DIRECTORY", creds)]),
        (
            "env",
            vec![
                ("DATABASE_URL", "sqlite:restored/env.db"),
                ("CREDENTIALS_DIRECTORY", creds),
            ],
        ),
    ] {
        let out = run(
            &script("restore.sh"),
            &["--from", "backups"],
            &env,
            dir.path(),
        );
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert!(!text(&out).contains("not read"), "{name}: {}", text(&out));
        let db = dir.path().join(format!("restored/{name}.db"));
        let restored = Store::connect(&test_config(&format!("sqlite://{}", db.display())))
            .await
            .unwrap();
        assert_eq!(restored.get(&user).await.unwrap(), Some(dob), "{name}");
        restored.close().await;
    }

    let bad = write("bad.url", "postgres://hb:s3cr3tpw@/db\n");
    let never = dir.path().join("restored/never.db");
    let never_url = format!("sqlite://{}", never.display());
    for (env, reason) in [
        (
            vec![
                ("DATABASE_URL", never_url.as_str()),
                ("DATABASE_URL_FILE", file.as_str()),
            ],
            "keep the secret in one place",
        ),
        (
            vec![("DATABASE_URL_FILE", bad.as_str())],
            "a postgres URL needs a host",
        ),
        (vec![], "no database URL"),
    ] {
        let out = run(
            &script("restore.sh"),
            &["--from", "backups"],
            &env,
            dir.path(),
        );
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{env:?}: {all}");
        assert!(all.contains(reason), "{env:?}: {all}");
        assert!(!all.contains("s3cr3tpw"), "printed the password: {all}");
    }
    assert!(!never.exists(), "restore.sh wrote while refusing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hb_skip_postgres, ignore = "HB_SKIP_POSTGRES=1")]
async fn postgres_backs_up_and_restores_through_the_libpq_variables() {
    if !require_postgres() {
        return;
    }
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let src = fresh_postgres_database().await;
    let dst = fresh_postgres_database().await;
    let store = Store::connect(&test_config(&src)).await.unwrap();
    let (user, dob) = alice();
    store.upsert(&user, dob).await.unwrap();
    store.close().await;

    // The other scheme, and parameters that become PGSSLMODE and PGAPPNAME.
    let src = src.replacen("postgres://", "postgresql://", 1);
    let dst = format!("{dst}?sslmode=disable&application_name=hb%20restore");
    let backup = run(
        &script("backup.sh"),
        &["--to", "backups"],
        &[("DATABASE_URL", &src)],
        dir.path(),
    );
    assert!(backup.status.success(), "{}", text(&backup));
    let restore = run(
        &script("restore.sh"),
        &["--from", "backups"],
        &[("DATABASE_URL", &dst)],
        dir.path(),
    );
    assert!(restore.status.success(), "{}", text(&restore));
    assert!(
        String::from_utf8_lossy(&restore.stdout).contains("for 1 rows"),
        "{}",
        text(&restore)
    );
    let restored = Store::connect(&test_config(&dst)).await.unwrap();
    assert_eq!(restored.get(&user).await.unwrap(), Some(dob));
    restored.close().await;
}
