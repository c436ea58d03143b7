//! PostgreSQL stopped under the running service: 503, never 500 or 404, and
//! recovery without a restart when it comes back.

use crate::support::{
    Backend, PgCluster, database_on, require_postgres, spawn_with, test_config, wait_until,
};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_503_and_heals_by_itself() {
    if !require_postgres() || std::env::var("TEST_DATABASE_URL").is_ok() {
        // With an external server the test cannot stop it.
        return;
    }
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = database_on(&cluster.admin_url()).await;
    let mut config = test_config(&url);
    config.db_timeout_ms = 500;
    let app = spawn_with(config, Backend::Postgres, None).await;
    assert_eq!(app.put_dob("steady", "1990-11-28").await.status(), 204);

    let stopper = std::thread::spawn({
        let dir = cluster.dir.clone();
        let port = cluster.port;
        move || PgCluster { dir, port }.stop_server("fast")
    });
    stopper.join().unwrap();

    for _ in 0..3 {
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
        assert_eq!(app.get("/readyz").await.status(), 503);
        assert_eq!(
            app.get("/healthz").await.status(),
            200,
            "liveness does no I/O"
        );
    }

    tokio::task::spawn_blocking({
        let dir = cluster.dir.clone();
        let port = cluster.port;
        move || PgCluster { dir, port }.start_server()
    })
    .await
    .unwrap();
    wait_until(
        "the service to recover",
        Duration::from_secs(15),
        || async { app.get("/readyz").await.status() == 200 },
    )
    .await;
    assert_eq!(
        app.message("steady").await,
        "Hello, steady! Your birthday is in 1 day"
    );
    assert_eq!(app.put_dob("after", "1990-01-01").await.status(), 204);
    // The PUT refused during the outage stored nothing.
    assert_eq!(app.get("/hello/during").await.status(), 404);
    app.stop().await;
    cluster.destroy();
}
