//! OpenTelemetry traces: a server span per request, a client span per
//! database call, W3C `traceparent`/`tracestate` continued, OTLP
//! http/protobuf export.
//!
//! Off unless configured, by the standard variables only:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! or `OTEL_TRACES_EXPORTER=otlp` for the default `http://localhost:4318`)
//! turns export on; `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`
//! keeps it off whatever else is set. The SDK reads the rest itself:
//! `OTEL_SERVICE_NAME` (default `hello-birthday`), `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER` and `_ARG` (default `parentbased_always_on`),
//! `OTEL_BSP_*` (batching), `OTEL_EXPORTER_OTLP_{HEADERS,TIMEOUT}`.
//!
//! The OpenTelemetry API is used directly rather than through
//! `tracing-opentelemetry`: the request path keeps no `tracing` span (its
//! log line is written by hand, see `telemetry`), and with export off the
//! whole module costs one relaxed load per request and per database call.
//!
//! What a span carries: the method, the route template, the status, the
//! database system and operation. Never the date of birth, never the
//! username nor the raw path that holds it (see `docs/decisions.md`).

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::future::Future;
use std::sync::OnceLock;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether spans are being made (export configured at start-up).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// What the environment asks for: `Some(why)` when export is on.
fn export_requested(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<String>> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match set("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        Some("none") => return Ok(None),
        Some("otlp") | None => {}
        Some(other) => {
            anyhow::bail!("OTEL_TRACES_EXPORTER {other:?} is not supported (otlp or none)")
        }
    }
    let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .or_else(|| set("OTEL_TRACES_EXPORTER").map(|_| "http://localhost:4318".into()));
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    let protocol =
        set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(p) = protocol.filter(|p| p.trim() != "http/protobuf") {
        anyhow::bail!("OTEL_EXPORTER_OTLP_PROTOCOL {p:?} is not supported (http/protobuf)");
    }
    // The exporter is built without TLS (a TLS stack of its own would double
    // the binary's crypto code): spans go to a collector on the host or in
    // the VPC over plain HTTP, and the collector forwards them over TLS.
    if !endpoint.trim().starts_with("http://") {
        anyhow::bail!(
            "OTLP endpoint {endpoint:?}: only http:// is supported (send spans to a local collector)"
        );
    }
    Ok(Some(endpoint))
}

/// Flushes and stops the exporter when dropped.
pub struct TraceGuard(Option<SdkTracerProvider>);

impl TraceGuard {
    /// Exports the spans still queued; blocks up to the exporter timeout.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Starts export if the environment asks for it. Call once, before serving.
pub fn init() -> anyhow::Result<TraceGuard> {
    let Some(endpoint) = export_requested(|name| std::env::var(name).ok())? else {
        tracing::info!(traces = "off", "OpenTelemetry traces are not exported");
        return Ok(TraceGuard(None));
    };
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .map_err(|e| anyhow::anyhow!("building the OTLP exporter for {endpoint}: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder()
        .with_attribute(KeyValue::new("service.version", crate::build::VERSION));
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named {
        resource = resource.with_service_name("hello-birthday");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("hello-birthday");
    TRACER
        .set(tracer)
        .map_err(|_| anyhow::anyhow!("traces initialised twice"))?;
    tracing::info!(traces = "otlp", %endpoint, "exporting OpenTelemetry traces");
    Ok(TraceGuard(Some(provider)))
}

struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// One request's trace: its server span (when exporting) and the trace id
/// for the log line (also from a caller's `traceparent` when not).
pub struct RequestTrace {
    cx: Option<Context>,
    trace_id: Option<TraceId>,
}

impl RequestTrace {
    /// Continues the caller's `traceparent`/`tracestate` if valid, else
    /// starts a trace (the sampler decides whether it is recorded).
    pub fn start(
        headers: &axum::http::HeaderMap,
        method: &'static str,
        route: &'static str,
    ) -> Self {
        let has_parent = headers.contains_key("traceparent");
        let Some(tracer) = TRACER.get() else {
            // Not exporting: still log a caller's trace id, so the line can
            // be found from the caller's trace.
            let trace_id = has_parent
                .then(|| TraceContextPropagator::new().extract(&Headers(headers)))
                .map(|cx| cx.span().span_context().trace_id())
                .filter(|id| *id != TraceId::INVALID);
            return Self { cx: None, trace_id };
        };
        let parent = if has_parent {
            TraceContextPropagator::new().extract(&Headers(headers))
        } else {
            Context::new()
        };
        let name = if route == "unmatched" {
            method.to_owned()
        } else {
            format!("{method} {route}")
        };
        let mut attributes = vec![KeyValue::new("http.request.method", method)];
        if route != "unmatched" {
            attributes.push(KeyValue::new("http.route", route));
        }
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        let trace_id = Some(span.span_context().trace_id());
        Self {
            cx: Some(parent.with_span(span)),
            trace_id,
        }
    }

    /// The request's future with this trace as its current context, so the
    /// database spans beneath it find their parent.
    pub fn scope<F: Future>(&self, fut: F) -> opentelemetry::context::WithContext<F> {
        use opentelemetry::context::FutureExt as _;
        fut.with_context(self.cx.clone().unwrap_or_default())
    }

    /// 32 hex digits, for the log line.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.trace_id
    }

    /// Records the status and ends the span.
    pub fn finish(self, status: u16) {
        let Some(cx) = self.cx else { return };
        let span = cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        // Server spans: only 5xx is an error (a 4xx is the client's).
        if status >= 500 {
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

/// Runs one database call under a client span, child of the request's.
pub async fn db_call<T, E, F>(
    backend: &'static str,
    operation: &'static str,
    fut: F,
) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    let Some(tracer) = TRACER.get() else {
        return fut.await;
    };
    let system = crate::metrics::db_system_name(backend);
    let parent = Context::current();
    let mut span = tracer
        .span_builder(format!("{operation} users"))
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("db.system.name", system),
            KeyValue::new("db.operation.name", operation),
            KeyValue::new("db.collection.name", "users"),
        ])
        .start_with_context(tracer, &parent);
    let result = fut.await;
    if result.is_err() {
        span.set_status(Status::error(""));
    }
    span.end();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn export_is_off_unless_an_endpoint_or_the_exporter_is_named() {
        assert_eq!(export_requested(env(&[])).unwrap(), None);
        assert_eq!(
            export_requested(env(&[
                ("OTEL_SERVICE_NAME", "x"),
                ("OTEL_TRACES_SAMPLER", "always_on")
            ]))
            .unwrap(),
            None
        );
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")];
        assert_eq!(
            export_requested(env(&on)).unwrap().as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert_eq!(
            export_requested(env(&[("OTEL_TRACES_EXPORTER", "otlp")]))
                .unwrap()
                .as_deref(),
            Some("http://localhost:4318")
        );
        let traces_endpoint = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://b:4318/v1/traces",
            ),
        ];
        assert_eq!(
            export_requested(env(&traces_endpoint)).unwrap().as_deref(),
            Some("http://b:4318/v1/traces")
        );
    }

    #[test]
    fn none_or_disabled_wins_and_unsupported_settings_are_refused() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(
            export_requested(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])).unwrap(),
            None
        );
        assert_eq!(
            export_requested(env(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")])).unwrap(),
            None
        );
        assert!(export_requested(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")])).is_err());
        assert!(
            export_requested(env(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])).is_err()
        );
        assert!(
            export_requested(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")])).is_err()
        );
        assert!(
            export_requested(env(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            ]))
            .unwrap()
            .is_some()
        );
    }

    #[test]
    fn a_callers_trace_id_is_kept_for_the_log_when_not_exporting() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let t = RequestTrace::start(&headers, "GET", "/hello/{username}");
        assert_eq!(
            t.trace_id().unwrap().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        headers.insert("traceparent", "00-zz-00f067aa0ba902b7-01".parse().unwrap());
        assert!(
            RequestTrace::start(&headers, "GET", "/healthz")
                .trace_id()
                .is_none()
        );
        assert!(
            RequestTrace::start(&axum::http::HeaderMap::new(), "GET", "/healthz")
                .trace_id()
                .is_none()
        );
    }
}
