//! The API contract, row by row, on both backends.

use crate::support::{Backend, TestApp, spawn};
use serde_json::Value;
use time::macros::date;

/// Runs each listed test body against SQLite and against PostgreSQL.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let app = super::spawn(super::Backend::Sqlite).await;
                super::$name(&app).await;
                app.stop().await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(hb_skip_postgres, ignore = "HB_SKIP_POSTGRES=1")]
            async fn $name() {
                if !crate::support::require_postgres() { return; }
                let app = super::spawn(super::Backend::Postgres).await;
                super::$name(&app).await;
                app.stop().await;
            })*
        }
    };
}

both_backends!(
    greets_with_days_left,
    feb_29_birthdays_through_the_api,
    put_is_an_upsert,
    unknown_user_is_404,
    delete_erases,
    bad_usernames_are_400_on_every_method,
    usernames_are_case_sensitive,
    bad_dates_are_400_and_store_nothing,
    bad_bodies_are_400_and_store_nothing,
    content_type_must_be_json,
    large_bodies_are_413,
    wrong_method_is_405_with_allow,
    unknown_routes_are_404,
    concurrent_puts_of_one_user_never_fail,
    health_and_readiness,
    metrics_are_labelled_by_route_template,
    security_headers,
);

/// Asserts an RFC 9457 problem with the given status; returns its body.
async fn assert_problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(ct, "application/problem+json");
    let body: Value = resp.json().await.expect("a JSON problem body");
    assert_eq!(body["status"], status);
    for field in ["type", "title", "detail"] {
        assert!(
            body[field].as_str().is_some_and(|s| !s.is_empty()),
            "problem has {field}: {body}"
        );
    }
    body
}

async fn greets_with_days_left(app: &TestApp) {
    // Today is pinned to 2026-11-27.
    assert_eq!(app.put_dob("test", "1990-09-16").await.status(), 204);
    assert_eq!(
        app.message("test").await,
        "Hello, test! Your birthday is in 293 days"
    );
    app.put_dob("tomorrow", "1990-11-28").await;
    assert_eq!(
        app.message("tomorrow").await,
        "Hello, tomorrow! Your birthday is in 1 day"
    );
    app.put_dob("today", "2000-11-27").await;
    assert_eq!(app.message("today").await, "Hello, today! Happy birthday!");
    app.put_dob("yesterday", "2026-11-26").await;
    assert_eq!(
        app.message("yesterday").await,
        "Hello, yesterday! Your birthday is in 364 days"
    );
    // The answer follows the calendar, not the moment of the PUT.
    app.clock.set(date!(2027 - 09 - 15));
    assert_eq!(
        app.message("test").await,
        "Hello, test! Your birthday is in 1 day"
    );
    app.clock.set(date!(2027 - 09 - 16));
    assert_eq!(app.message("test").await, "Hello, test! Happy birthday!");
}

async fn feb_29_birthdays_through_the_api(app: &TestApp) {
    app.clock.set(date!(2027 - 02 - 27));
    assert_eq!(app.put_dob("leap", "2000-02-29").await.status(), 204);
    assert_eq!(
        app.message("leap").await,
        "Hello, leap! Your birthday is in 1 day"
    );
    app.clock.set(date!(2027 - 02 - 28));
    assert_eq!(app.message("leap").await, "Hello, leap! Happy birthday!");
    app.clock.set(date!(2027 - 03 - 01));
    assert_eq!(
        app.message("leap").await,
        "Hello, leap! Your birthday is in 365 days"
    );
    app.clock.set(date!(2028 - 02 - 29));
    assert_eq!(app.message("leap").await, "Hello, leap! Happy birthday!");
    // Feb 29 of a common year is no date at all.
    assert_problem(app.put_dob("leap", "2023-02-29").await, 400).await;
}

async fn put_is_an_upsert(app: &TestApp) {
    let first = app.put_dob("alice", "1990-01-01").await;
    assert_eq!(first.status(), 204);
    assert_eq!(first.text().await.unwrap(), "", "204 has no body");
    assert_eq!(app.put_dob("alice", "1990-11-28").await.status(), 204);
    assert_eq!(
        app.message("alice").await,
        "Hello, alice! Your birthday is in 1 day"
    );
}

async fn unknown_user_is_404(app: &TestApp) {
    let body = assert_problem(app.get("/hello/nobody").await, 404).await;
    assert_eq!(body["title"], "User not found");
}

async fn delete_erases(app: &TestApp) {
    app.put_dob("bob", "1980-05-05").await;
    let del = app
        .client
        .delete(app.url("/hello/bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    assert_problem(app.get("/hello/bob").await, 404).await;
    let again = app
        .client
        .delete(app.url("/hello/bob"))
        .send()
        .await
        .unwrap();
    assert_problem(again, 404).await;
}

async fn bad_usernames_are_400_on_every_method(app: &TestApp) {
    let long = "a".repeat(65);
    for path in [
        "/hello/al1ce".to_owned(),
        "/hello/al_ice".to_owned(),
        "/hello/al%20ice".to_owned(),
        "/hello/%C3%A9".to_owned(),
        "/hello/%FF".to_owned(),
        "/hello/alice%00".to_owned(),
        "/hello/".to_owned(),
        format!("/hello/{long}"),
    ] {
        let url = app.url(&path);
        let get = app.client.get(&url).send().await.unwrap();
        assert_eq!(
            assert_problem(get, 400).await["title"],
            "Invalid username",
            "GET {path}"
        );
        let put = app
            .client
            .put(&url)
            .header("content-type", "application/json")
            .body(r#"{"dateOfBirth":"1990-01-01"}"#)
            .send()
            .await
            .unwrap();
        assert_problem(put, 400).await;
        let del = app.client.delete(&url).send().await.unwrap();
        assert_problem(del, 400).await;
    }
    // 64 letters is still a name.
    let max = "b".repeat(64);
    assert_eq!(app.put_dob(&max, "1990-01-01").await.status(), 204);
}

async fn usernames_are_case_sensitive(app: &TestApp) {
    app.put_dob("Alice", "1990-11-28").await;
    app.put_dob("alice", "1990-11-29").await;
    assert_eq!(
        app.message("Alice").await,
        "Hello, Alice! Your birthday is in 1 day"
    );
    assert_eq!(
        app.message("alice").await,
        "Hello, alice! Your birthday is in 2 days"
    );
    assert_problem(app.get("/hello/ALICE").await, 404).await;
}

async fn bad_dates_are_400_and_store_nothing(app: &TestApp) {
    app.put_dob("carol", "1990-01-01").await;
    for dob in [
        "2026-11-27", // today
        "2026-11-28", // future
        "2999-01-01",
        "2023-02-29",
        "2021-04-31",
        "2021-13-01",
        "0000-01-01",
        "1990-1-01",
        "1990/01/01",
        "19900101",
        "1990-01-01T00:00:00Z",
        " 1990-01-01",
        "",
    ] {
        let body = assert_problem(app.put_dob("carol", dob).await, 400).await;
        assert_eq!(body["title"], "Invalid date of birth", "{dob:?}");
        assert_problem(app.put_dob("dave", dob).await, 400).await;
    }
    assert_eq!(
        app.message("carol").await,
        "Hello, carol! Your birthday is in 35 days"
    );
    assert_problem(app.get("/hello/dave").await, 404).await;
}

async fn bad_bodies_are_400_and_store_nothing(app: &TestApp) {
    for body in [
        "",
        "not json",
        "{",
        "[]",
        r#"["1990-01-01"]"#,
        "null",
        "{}",
        r#"{"dateOfBirth": 19900101}"#,
        r#"{"dateOfBirth": null}"#,
        r#"{"dateOfBirth": "1990-01-01", "name": "x"}"#,
        r#"{"dateofbirth": "1990-01-01"}"#,
        r#"{"dateOfBirth": "1990-01-01"} trailing"#,
    ] {
        let problem = assert_problem(app.put("erin", body).await, 400).await;
        assert_eq!(problem["title"], "Invalid request body", "{body:?}");
    }
    assert_problem(app.get("/hello/erin").await, 404).await;
}

async fn content_type_must_be_json(app: &TestApp) {
    let body = r#"{"dateOfBirth":"1990-01-01"}"#;
    let url = app.url("/hello/frank");
    let none = app.client.put(&url).body(body).send().await.unwrap();
    assert_problem(none, 415).await;
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonp",
    ] {
        let resp = app
            .client
            .put(&url)
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_problem(resp, 415).await;
    }
    assert_problem(app.get("/hello/frank").await, 404).await;
    let charset = app
        .client
        .put(&url)
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(charset.status(), 204);
}

async fn large_bodies_are_413(app: &TestApp) {
    let padding = " ".repeat(5000);
    let big = format!(r#"{{"dateOfBirth":"1990-01-01"{padding}}}"#);
    assert_problem(app.put("gina", &big).await, 413).await;
    // Without a Content-Length (chunked), the limit still holds.
    let stream = futures_stream(big.into_bytes());
    let chunked = app
        .client
        .put(app.url("/hello/gina"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_problem(chunked, 413).await;
    assert_problem(app.get("/hello/gina").await, 404).await;
}

fn futures_stream(
    bytes: Vec<u8>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(512).map(|c| Ok(c.to_vec())).collect();
    futures_util::stream::iter(chunks)
}

async fn wrong_method_is_405_with_allow(app: &TestApp) {
    for method in [reqwest::Method::POST, reqwest::Method::PATCH] {
        let resp = app
            .client
            .request(method.clone(), app.url("/hello/alice"))
            .send()
            .await
            .unwrap();
        let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
        for m in ["GET", "PUT", "DELETE"] {
            assert!(allow.contains(m), "{method} Allow: {allow}");
        }
        assert_problem(resp, 405).await;
    }
    let resp = app.client.post(app.url("/healthz")).send().await.unwrap();
    assert!(resp.headers().contains_key("allow"));
    assert_problem(resp, 405).await;
}

async fn unknown_routes_are_404(app: &TestApp) {
    for path in ["/", "/hello", "/hello/alice/extra", "/metrics", "/nope"] {
        assert_problem(app.get(path).await, 404).await;
    }
}

async fn concurrent_puts_of_one_user_never_fail(app: &TestApp) {
    let mut tasks = Vec::new();
    for i in 0..64 {
        let client = app.client.clone();
        let url = app.url("/hello/racer");
        tasks.push(tokio::spawn(async move {
            let day = 1 + i % 28;
            client
                .put(url)
                .header("content-type", "application/json")
                .body(format!(r#"{{"dateOfBirth":"1990-01-{day:02}"}}"#))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 204);
    }
    let msg = app.message("racer").await;
    assert!(
        msg.starts_with("Hello, racer! Your birthday is in "),
        "{msg}"
    );
}

async fn health_and_readiness(app: &TestApp) {
    let live = app.get("/healthz").await;
    assert_eq!(live.status(), 200);
    let v: Value = live.json().await.unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["revision"].as_str().is_some_and(|r| !r.is_empty()));
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
}

async fn metrics_are_labelled_by_route_template(app: &TestApp) {
    app.put_dob("metricsuser", "1990-01-01").await;
    app.message("metricsuser").await;
    app.get("/hello/nobodyhere").await;
    app.get("/some/random/path").await;
    let text = reqwest::get(format!("http://{}/metrics", app.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The OpenTelemetry HTTP server histogram counts every answer by
    // method, route and status; there is no second requests counter.
    let count = |method: &str, route: &str, status: u16| {
        format!(
            r#"http_server_request_duration_seconds_count{{http_request_method="{method}",http_route="{route}",http_response_status_code="{status}"}} 1"#
        )
    };
    assert!(
        text.contains(&count("PUT", "/hello/{username}", 204)),
        "{text}"
    );
    assert!(
        text.contains(&count("GET", "/hello/{username}", 404)),
        "{text}"
    );
    assert!(text.contains(&count("GET", "unmatched", 404)), "{text}");
    assert!(text.contains(
        r#"http_server_request_duration_seconds_bucket{le="+Inf",http_request_method="PUT",http_route="/hello/{username}",http_response_status_code="204"} 1"#
    ), "{text}");
    assert!(text.contains(
        r#"http_server_request_duration_seconds_bucket{le="0.1",http_request_method="PUT""#
    ));
    assert!(!text.contains("http_requests_total"), "{text}");
    assert!(text.contains(r#"http_server_active_requests{http_request_method="GET"} 0"#));
    let system = match app.backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgresql",
    };
    assert!(text.contains(&format!(
        r#"db_client_operation_duration_seconds_count{{db_operation_name="upsert",db_system_name="{system}"}} 1"#
    )));
    assert!(text.contains(r#"db_client_connection_count{db_client_connection_state="used"} "#));
    assert!(text.contains(r#"db_client_connection_count{db_client_connection_state="idle"} "#));
    assert!(text.contains("db_client_connection_max "));
    assert!(text.contains("hello_birthday_db_up 1"));
    assert!(text.contains("hello_birthday_build_info{"));
    assert!(text.contains("process_resident_memory_bytes"));
    for leaked in ["metricsuser", "nobodyhere", "random", "1990"] {
        assert!(
            !text.contains(leaked),
            "raw path data {leaked:?} in metrics"
        );
    }
    let backend = match app.backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert!(text.contains(&format!("backend=\"{backend}\"")));
}

async fn security_headers(app: &TestApp) {
    for resp in [app.get("/hello/nobody").await, app.get("/healthz").await] {
        let h = resp.headers();
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        assert!(!h.contains_key("server"), "no server banner");
        assert!(
            !h.contains_key("access-control-allow-origin"),
            "CORS is off"
        );
        assert!(h.contains_key("x-request-id"));
    }
}
