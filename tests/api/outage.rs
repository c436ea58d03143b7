//! PostgreSQL stopped under the running service: API requests answer 503 +
//! Retry-After, never 500 or 404, while readiness stays 200 (a shared
//! database outage is not this instance's fault: the load balancer must not
//! take every instance out at once); recovery without a restart when the
//! database comes back. And a process started while the database is down
//! does not exit: it serves (503, not yet ready) and comes into service by
//! itself once the database returns.
//!
//! These tests stop and start the server, so they always run their own
//! cluster, even when `TEST_DATABASE_URL` names a shared one.

use crate::support::{
    Backend, PgCluster, TestApp, database_on, fresh_postgres_database, require_postgres,
    require_postgres_binaries, spawn_with, test_config, wait_until,
};
use hello_birthday::app::Application;
use std::time::Duration;

fn stop(cluster: &PgCluster) {
    let (dir, port) = (cluster.dir.clone(), cluster.port);
    std::thread::spawn(move || PgCluster { dir, port }.stop_server("fast"))
        .join()
        .unwrap();
}

async fn start(cluster: &PgCluster) {
    let (dir, port) = (cluster.dir.clone(), cluster.port);
    tokio::task::spawn_blocking(move || PgCluster { dir, port }.start_server())
        .await
        .unwrap();
}

async fn assert_unavailable(app: &TestApp, ready: u16) {
    for resp in [
        app.get("/hello/steady").await,
        app.put_dob("during", "1990-01-01").await,
    ] {
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["title"], "Database unavailable");
        assert!(
            !body["detail"].as_str().unwrap().contains("postgres"),
            "no internals: {body}"
        );
    }
    assert_eq!(app.get("/readyz").await.status(), ready);
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "liveness does no I/O"
    );
}

async fn gauge(app: &TestApp, name: &str) -> Option<String> {
    let text = app
        .client
        .get(format!("http://{}/metrics", app.metrics_addr))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hb_skip_postgres, ignore = "HB_SKIP_POSTGRES=1")]
async fn postgres_outage_is_503_and_heals_by_itself() {
    if !require_postgres_binaries() {
        return;
    }
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = database_on(&cluster.admin_url()).await;
    let mut config = test_config(&url);
    config.db_timeout = Duration::from_millis(500);
    let app = spawn_with(config, Backend::Postgres, None).await;
    assert_eq!(app.put_dob("steady", "1990-11-28").await.status(), 204);
    assert_eq!(
        gauge(&app, "hello_birthday_db_up").await.as_deref(),
        Some("1")
    );

    stop(&cluster);
    for _ in 0..3 {
        // A shared database outage is not this instance's fault.
        assert_unavailable(&app, 200).await;
    }
    // The deep check, for people and alarms, does see the outage; the
    // readiness gauge, like /readyz, does not.
    assert_eq!(
        gauge(&app, "hello_birthday_db_up").await.as_deref(),
        Some("0")
    );
    assert_eq!(
        gauge(&app, "hello_birthday_ready").await.as_deref(),
        Some("1")
    );

    start(&cluster).await;
    wait_until(
        "the service to recover",
        Duration::from_secs(15),
        || async { app.get("/hello/steady").await.status() == 200 },
    )
    .await;
    assert_eq!(
        app.message("steady").await,
        "Hello, steady! Your birthday is in 1 day"
    );
    assert_eq!(app.put_dob("after", "1990-01-01").await.status(), 204);
    // The PUT refused during the outage stored nothing.
    assert_eq!(app.get("/hello/during").await.status(), 404);
    assert_eq!(
        gauge(&app, "hello_birthday_db_up").await.as_deref(),
        Some("1")
    );
    app.stop().await;
    cluster.destroy();
}

/// A replacement launched while the database is away (RDS failover or
/// maintenance) must not exit: it serves, stays ready, answers the API with
/// 503 and connects, migrates and serves once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hb_skip_postgres, ignore = "HB_SKIP_POSTGRES=1")]
async fn started_during_an_outage_comes_into_service_by_itself() {
    if !require_postgres_binaries() {
        return;
    }
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    // An empty database: the migrations have not run yet.
    let url = database_on(&cluster.admin_url()).await;
    stop(&cluster);

    let mut config = test_config(&url);
    config.db_timeout = Duration::from_millis(500);
    let app = spawn_with(config, Backend::Postgres, None).await;
    // Started, but not yet in service: it has never reached its database
    // (a wrong URL or password must never get traffic either).
    assert_unavailable(&app, 503).await;
    assert_eq!(
        gauge(&app, "hello_birthday_ready").await.as_deref(),
        Some("0")
    );
    assert_eq!(
        gauge(&app, "hello_birthday_db_up").await.as_deref(),
        Some("0")
    );

    start(&cluster).await;
    let back = std::time::Instant::now();
    wait_until(
        "the instance to connect and migrate",
        Duration::from_secs(20),
        || async { app.put_dob("after", "1990-01-01").await.status() == 204 },
    )
    .await;
    eprintln!(
        "first 204 {:.2}s after the database started",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert_eq!(
        gauge(&app, "hello_birthday_ready").await.as_deref(),
        Some("1")
    );
    assert_eq!(app.get("/hello/during").await.status(), 404);
    assert_eq!(
        gauge(&app, "hello_birthday_db_up").await.as_deref(),
        Some("1")
    );
    app.stop().await;
    cluster.destroy();
}

/// A server that answers and refuses is no outage: waiting would not help,
/// so start-up fails at once (systemd restarts with a re-read configuration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hb_skip_postgres, ignore = "HB_SKIP_POSTGRES=1")]
async fn a_database_that_does_not_exist_fails_start_up_at_once() {
    if !require_postgres() {
        return;
    }
    let url = fresh_postgres_database().await;
    let (base, _) = url.rsplit_once('/').unwrap();
    let started = std::time::Instant::now();
    let err = Application::build(test_config(&format!("{base}/no_such_database")))
        .await
        .err()
        .expect("start-up fails");
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
