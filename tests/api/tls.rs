//! PostgreSQL over TLS, as RDS with `rds.force_ssl` requires: the server
//! certificate must chain to a CA the service trusts (DATABASE_CA_FILE).

use crate::support::{
    Backend, PgCluster, database_on, require_postgres_binaries, spawn_with, test_config,
};
use hello_birthday::app::Application;
use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a server certificate for 127.0.0.1 signed by it.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
}

/// Needs a cluster of its own (its certificates), `TEST_DATABASE_URL` or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hb_skip_postgres, ignore = "HB_SKIP_POSTGRES=1")]
async fn postgres_tls_is_verified_against_the_configured_ca() {
    if !require_postgres_binaries() {
        return;
    }
    let cluster = tokio::task::spawn_blocking(PgCluster::init).await.unwrap();
    let certs = cluster.dir.join("certs");
    std::fs::create_dir(&certs).unwrap();
    make_certs(&certs);
    for f in ["server.pem", "server.key"] {
        let p = certs.join(f);
        cluster.give(&p);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let extra = format!(
        "-c ssl=on -c ssl_cert_file={0}/server.pem -c ssl_key_file={0}/server.key",
        certs.display()
    );
    let c2 = PgCluster {
        dir: cluster.dir.clone(),
        port: cluster.port,
    };
    tokio::task::spawn_blocking(move || c2.start_server_with(&extra))
        .await
        .unwrap();
    let url = format!(
        "{}?sslmode=require",
        database_on(&cluster.admin_url()).await
    );

    // Trusting the CA: connects and serves.
    let mut config = test_config(&url);
    config.database_ca_file = Some(certs.join("ca.pem"));
    let app = spawn_with(config, Backend::Postgres, None).await;
    assert_eq!(app.put_dob("secure", "1990-01-01").await.status(), 204);
    assert_eq!(app.get("/hello/secure").await.status(), 200);
    app.stop().await;

    // Without the CA the certificate is not trusted: refuse to start.
    let err = Application::build(test_config(&url))
        .await
        .err()
        .expect("an untrusted server");
    let chain = format!("{err:#}");
    assert!(chain.to_lowercase().contains("certificate"), "{chain}");
    cluster.destroy();
}
