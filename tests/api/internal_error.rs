//! A 500 as it really happens: the database fails in a way the service
//! cannot classify (here the `users` table is dropped under the running
//! binary, as a bad manual migration would). The client gets problem+json
//! without a word of the cause, the metrics count the 500, and the log line
//! carries the whole cause chain for the operator.

use crate::lifecycle::start;
use crate::support::wait_until;
use std::time::Duration;

async fn assert_opaque_500(resp: reqwest::Response) {
    assert_eq!(resp.status(), 500);
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "a problem document"
    );
    let text = resp.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["type"], "urn:hello-birthday:problem:internal");
    assert_eq!(body["status"], 500);
    assert_eq!(body["title"], "Internal server error");
    let fields: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(fields.len(), 4, "type, title, status, detail only: {text}");
    for internal in [
        "table", "users", "sqlite", "SQL", "no such", "rusqlite", ".db",
    ] {
        assert!(
            !text.to_lowercase().contains(&internal.to_lowercase()),
            "the 500 body leaks {internal:?}: {text}"
        );
    }
}

fn counter(metrics: &str, method: &str, status: u16) -> u64 {
    let prefix = format!(
        r#"http_server_request_duration_seconds_count{{http_request_method="{method}",http_route="/hello/{{username}}",http_response_status_code="{status}"}} "#
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_answers_an_opaque_500_that_is_counted_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("broken.db");
    let mut server = start(&db, &[("DRAIN_SECONDS", "0")]);
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let put = |user: &str| {
        client
            .put(format!("{base}/hello/{user}"))
            .header("content-type", "application/json")
            .body(r#"{"dateOfBirth":"1990-05-17"}"#)
            .send()
    };
    assert_eq!(put("alice").await.unwrap().status(), 204);

    // Another process breaks the schema under the running service.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("DROP TABLE users")
        .unwrap();

    let got = client
        .get(format!("{base}/hello/alice"))
        .send()
        .await
        .unwrap();
    assert_opaque_500(got).await;
    assert_opaque_500(put("bob").await.unwrap()).await;

    let metrics = reqwest::get(format!("http://{}/metrics", server.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(counter(&metrics, "GET", 500), 1, "{metrics}");
    assert_eq!(counter(&metrics, "PUT", 500), 1, "{metrics}");

    // The operator's side: the cause chain, not just "database error".
    wait_until(
        "an error log line with the cause",
        Duration::from_secs(5),
        || async {
            server.logged(|v| {
                v["level"] == "ERROR"
                    && v["message"] == "database error"
                    && v["error"].as_str().is_some_and(|e| {
                        e.starts_with("database error: ") && e.contains("no such table: users")
                    })
            })
        },
    )
    .await;

    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}
