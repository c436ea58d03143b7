//! OpenTelemetry traces end to end: the real binary, configured only by the
//! standard `OTEL_*` variables, exports to an OTLP http/protobuf receiver
//! this test runs on loopback. Its own test binary (and process), because
//! the tracer is global to a process: each case starts the service binary.

use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

/// Every span the receiver was sent, and how many export requests came.
#[derive(Default)]
struct Received {
    spans: Vec<(String, Span)>,
    requests: usize,
}

/// An OTLP/HTTP receiver on 127.0.0.1:0: decodes `/v1/traces` bodies.
async fn receiver() -> (SocketAddr, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Received::default()));
    let sink = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let sink = sink.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let ctype = req.headers().get("content-type").cloned();
                        let body = req.into_body().collect().await?.to_bytes();
                        assert_eq!(path, "/v1/traces");
                        assert_eq!(ctype.unwrap(), "application/x-protobuf");
                        let decoded =
                            ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
                        let mut sink = sink.lock().unwrap();
                        sink.requests += 1;
                        for rs in decoded.resource_spans {
                            let service = rs
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|kv| kv.key == "service.name")
                                .map(text)
                                .unwrap_or_default();
                            for ss in rs.scope_spans {
                                for span in ss.spans {
                                    sink.spans.push((service.clone(), span));
                                }
                            }
                        }
                        Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                            hyper::body::Bytes::new(),
                        )))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (addr, got)
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key == key).map(text)
}

/// Every attribute value of a span, to check no personal data is in them.
fn values(span: &Span) -> Vec<String> {
    span.attributes
        .iter()
        .filter_map(|kv| kv.value.as_ref().map(|v: &AnyValue| format!("{v:?}")))
        .chain([span.name.clone()])
        .collect()
}

struct Service {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
    _dir: tempfile::TempDir,
}

impl Service {
    fn start(otel: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hello-birthday"));
        for (k, _) in std::env::vars() {
            if k.starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("PORT", "0")
            .env("METRICS_PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .env(
                "DATABASE_URL",
                format!("sqlite://{}/db.sqlite", dir.path().display()),
            )
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info")
            .env_remove("RUST_LOG")
            .env("REQUEST_LOG", "all")
            .env("DRAIN_SECONDS", "0")
            .envs(otel.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("the service binary starts");
        let lines = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        let listening = wait_for(Duration::from_secs(20), "the listening line", || {
            lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l["message"] == "listening")
                .cloned()
        });
        let addr = listening["addr"].as_str().unwrap().parse().unwrap();
        Self {
            child,
            addr,
            lines,
            _dir: dir,
        }
    }

    fn line(&self, message: &str) -> Option<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l["message"] == message)
            .cloned()
    }

    fn threads(&self) -> Vec<String> {
        let dir = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|s| s.trim().to_owned())
            .collect()
    }

    /// SIGTERM and wait: a clean exit exports whatever is still queued.
    fn stop(mut self) -> Vec<serde_json::Value> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "{exit:?}");
        // The reader thread sees EOF once the process is gone.
        std::thread::sleep(Duration::from_millis(50));
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn exporting_to(addr: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        ("OTEL_SERVICE_NAME", "hb-under-test".into()),
        // Batches leave every 100 ms instead of every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_traceparent_continues_that_trace_and_the_database_span_is_its_child() {
    let (receiver, got) = receiver().await;
    let svc = Service::start(&exporting_to(receiver));
    let client = reqwest::Client::new();
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN}-01");
    let resp = client
        .put(format!("http://{}/hello/Alice", svc.addr))
        .header("content-type", "application/json")
        .header("traceparent", &traceparent)
        .header("tracestate", "vendor=opaque")
        .body(r#"{"dateOfBirth":"1990-01-02"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    // And one without: a new trace, its span a root.
    let resp = client
        .get(format!("http://{}/hello/Alice", svc.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let spans = wait_for(Duration::from_secs(10), "four spans", || {
        let g = got.lock().unwrap();
        (g.spans.len() >= 4).then(|| g.spans.clone())
    });
    assert!(spans.iter().all(|(service, _)| service == "hb-under-test"));
    let server: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    let put = server
        .iter()
        .find(|s| s.name == "PUT /hello/{username}")
        .expect("a PUT span");
    assert_eq!(hex(&put.trace_id), TRACE_ID);
    assert_eq!(hex(&put.parent_span_id), PARENT_SPAN);
    assert_eq!(put.trace_state, "vendor=opaque");
    assert_eq!(attr(put, "http.request.method").as_deref(), Some("PUT"));
    assert_eq!(
        attr(put, "http.route").as_deref(),
        Some("/hello/{username}")
    );
    assert_eq!(
        attr(put, "http.response.status_code").as_deref(),
        Some("204")
    );

    let db = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "upsert users")
        .expect("a database span");
    assert_eq!(db.kind, SpanKind::Client as i32);
    assert_eq!(db.trace_id, put.trace_id);
    assert_eq!(
        db.parent_span_id, put.span_id,
        "the database span is the request span's child"
    );
    assert_eq!(attr(db, "db.system.name").as_deref(), Some("sqlite"));
    assert!(db.start_time_unix_nano >= put.start_time_unix_nano);
    assert!(db.end_time_unix_nano <= put.end_time_unix_nano);

    let get = server
        .iter()
        .find(|s| s.name == "GET /hello/{username}")
        .expect("a GET span");
    assert_ne!(hex(&get.trace_id), TRACE_ID);
    assert!(get.parent_span_id.is_empty(), "no traceparent: a root span");
    let get_db = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "get users")
        .unwrap();
    assert_eq!(get_db.parent_span_id, get.span_id);

    // No personal data in any span: neither the name nor the date of birth.
    for (_, span) in &spans {
        for v in values(span) {
            assert!(!v.contains("Alice") && !v.contains("1990"), "{v}");
        }
    }
    // The request log line carries the trace id.
    let lines = svc.stop();
    let logged: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "request" && l["route"] == "/hello/{username}")
        .map(|l| {
            (
                l["method"].as_str().unwrap().to_owned(),
                l["trace_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        logged.contains(&("PUT".into(), TRACE_ID.into())),
        "{logged:?}"
    );
    assert!(
        logged.contains(&("GET".into(), hex(&get.trace_id))),
        "{logged:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_unless_configured() {
    let (receiver, got) = receiver().await;
    let client = reqwest::Client::new();
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN}-01");
    // No OTEL_* at all: no exporter thread; the caller's trace id is still logged.
    let svc = Service::start(&[]);
    assert_eq!(
        svc.line("OpenTelemetry traces are not exported").unwrap()["traces"],
        "off"
    );
    let threads = svc.threads();
    assert!(
        !threads.iter().any(|t| t.contains("OpenTelemetry")),
        "{threads:?}"
    );
    let resp = client
        .get(format!("http://{}/hello/Nobody", svc.addr))
        .header("traceparent", &traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let lines = svc.stop();
    let line = lines.iter().find(|l| l["message"] == "request").unwrap();
    assert_eq!(line["trace_id"], TRACE_ID);

    // An endpoint, but OTEL_TRACES_EXPORTER=none: still nothing, even after
    // the clean exit that would flush a batch.
    let mut otel = exporting_to(receiver);
    otel.push(("OTEL_TRACES_EXPORTER", "none".into()));
    let svc = Service::start(&otel);
    for _ in 0..5 {
        let resp = client
            .get(format!("http://{}/healthz", svc.addr))
            .header("traceparent", &traceparent)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    svc.stop();

    // The control: the same receiver does get spans once export is on, so
    // the silence above is the configuration's doing.
    let svc = Service::start(&exporting_to(receiver));
    assert!(svc.threads().iter().any(|t| t.contains("OpenTelemetry")));
    let resp = client
        .get(format!("http://{}/healthz", svc.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    svc.stop();
    let g = got.lock().unwrap();
    assert!(g.requests >= 1);
    assert!(
        g.spans
            .iter()
            .all(|(_, s)| s.name == "GET /healthz" && hex(&s.trace_id) != TRACE_ID),
        "only the last service exported"
    );
}
