//! openapi.yaml and the server agree: every operation it documents exists,
//! every method it does not document is refused, and every answer the server
//! gives to a table of requests is a documented status with the documented
//! media type.

use crate::support::{Backend, TestApp, spawn};
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};

fn spec() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("openapi.yaml parses")
}

/// Follows a local `$ref`.
fn resolve<'a>(root: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .trim_start_matches("#/")
            .split('/')
            .fold(root, |node, key| &node[key]),
        None => v,
    }
}

const METHODS: [&str; 5] = ["get", "put", "delete", "post", "patch"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_matches_the_server() {
    let spec = spec();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let app = spawn(Backend::Sqlite).await;
    app.put_dob("known", "1990-01-01").await;

    let paths = spec["paths"].as_mapping().unwrap();
    let mut seen: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (path, item) in paths {
        let path = path.as_str().unwrap();
        let concrete = path.replace("{username}", "known");
        for method in METHODS {
            let op = &item[method];
            let resp = request(&app, method, &concrete).await;
            let status = resp.status().as_u16();
            if op.is_null() {
                assert_eq!(
                    status, 405,
                    "{method} {path} is undocumented, so it must be refused"
                );
                continue;
            }
            assert_ne!(status, 405, "{method} {path} is documented but refused");
            check_documented(&spec, op, method, path, &resp);
            seen.entry((path.into(), method.into()))
                .or_default()
                .insert(status.to_string());
        }
    }

    // A request per documented client-side outcome.
    let cases: [(&str, &str, &str, Option<&str>, &str); 10] = [
        (
            "put",
            "/hello/{username}",
            "/hello/someone",
            Some(r#"{"dateOfBirth":"1990-01-01"}"#),
            "application/json",
        ),
        (
            "put",
            "/hello/{username}",
            "/hello/someone",
            Some(r#"{"dateOfBirth":"2999-01-01"}"#),
            "application/json",
        ),
        (
            "put",
            "/hello/{username}",
            "/hello/someone",
            Some(r#"{"dateOfBirth":"1990-01-01"}"#),
            "text/plain",
        ),
        (
            "put",
            "/hello/{username}",
            "/hello/someone",
            Some(&*Box::leak(
                format!(r#"{{"dateOfBirth":"{}"}}"#, "x".repeat(5000)).into_boxed_str(),
            )),
            "application/json",
        ),
        ("get", "/hello/{username}", "/hello/someone", None, ""),
        ("get", "/hello/{username}", "/hello/nobody", None, ""),
        ("get", "/hello/{username}", "/hello/b4d", None, ""),
        ("delete", "/hello/{username}", "/hello/someone", None, ""),
        ("delete", "/hello/{username}", "/hello/someone", None, ""),
        ("delete", "/hello/{username}", "/hello/b4d", None, ""),
    ];
    for (method, template, path, body, ct) in cases {
        let resp = send(&app, method, path, body, ct).await;
        let op = &spec["paths"][template][method];
        check_documented(&spec, op, method, template, &resp);
        seen.entry((template.into(), method.into()))
            .or_default()
            .insert(resp.status().as_u16().to_string());
    }

    // Every documented status was produced here, except the server-side ones
    // that other tests provoke (outage, disk full, panics), and 408, which
    // takes a client that stalls its body (tests/hardening).
    let elsewhere = ["408", "500", "503", "507"];
    for (path, item) in paths {
        for method in METHODS {
            let Some(responses) = item[method]["responses"].as_mapping() else {
                continue;
            };
            for status in responses.keys().map(|k| k.as_str().unwrap().to_owned()) {
                if elsewhere.contains(&status.as_str()) {
                    continue;
                }
                let key = (path.as_str().unwrap().to_owned(), method.to_owned());
                assert!(
                    seen.get(&key).is_some_and(|s| s.contains(&status)),
                    "{method} {} documents {status}, which no request here produced",
                    key.0
                );
            }
        }
    }
    app.stop().await;
}

fn check_documented(spec: &Value, op: &Value, method: &str, path: &str, resp: &reqwest::Response) {
    let status = resp.status().as_u16().to_string();
    let documented = resolve(spec, &op["responses"][status.as_str()]);
    assert!(
        !documented.is_null(),
        "{method} {path} answered {status}, which is not documented"
    );
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    match documented["content"].as_mapping() {
        Some(content) => {
            let ct = ct.unwrap_or_else(|| panic!("{method} {path} {status} has no content-type"));
            assert!(
                content.contains_key(Value::from(ct.as_str())),
                "{method} {path} {status}: {ct} is not a documented media type"
            );
        }
        None => assert!(ct.is_none(), "{method} {path} {status} documents no body"),
    }
}

async fn request(app: &TestApp, method: &str, path: &str) -> reqwest::Response {
    let body = (method == "put").then_some(r#"{"dateOfBirth":"1990-01-01"}"#);
    send(app, method, path, body, "application/json").await
}

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<&str>,
    ct: &str,
) -> reqwest::Response {
    let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut req = app.client.request(m, app.url(path));
    if let Some(b) = body {
        req = req.header("content-type", ct).body(b.to_owned());
    }
    req.send().await.unwrap()
}
