//! The benchmark's ceiling: the cheapest HTTP/1.1 server that answers the
//! service's routes, with no storage, no routing framework, no logging and no
//! metrics. It uses the same hyper 1 stack and the same tokio runtime shape as
//! hello-birthday (multi-thread, one worker per available core), so the gap
//! between the two is the cost of what the service adds on top of HTTP.
//!
//! Routes: `GET /hello/{name}` 200 with a fixed JSON body of the service's
//! size, `PUT /hello/{name}` 204 after reading the whole body, `GET /healthz`
//! and `GET /readyz` 200, anything else 404.
//!
//! Configuration: `PORT` (default 5000) and `BIND_ADDR` (default 127.0.0.1).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Same length as a typical answer of the service for a seeded user.
const GREETING: &[u8] = br#"{"message":"Hello, useraaaaa! Your birthday is in 123 days"}"#;
const READY: &[u8] = br#"{"status":"ready"}"#;
const HEALTHY: &[u8] = br#"{"status":"ok"}"#;

fn respond(status: StatusCode, body: &'static [u8]) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body)));
    *response.status_mut() = status;
    if !body.is_empty() {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    response
}

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    let is_hello = path
        .strip_prefix("/hello/")
        .is_some_and(|name| !name.is_empty());
    let response = match (request.method(), path) {
        (&Method::GET, _) if is_hello => respond(StatusCode::OK, GREETING),
        (&Method::PUT, _) if is_hello => {
            // Read the body like the service must before it can answer.
            match request.into_body().collect().await {
                Ok(_) => respond(StatusCode::NO_CONTENT, b""),
                Err(_) => respond(StatusCode::BAD_REQUEST, b""),
            }
        }
        (&Method::GET, "/readyz") => respond(StatusCode::OK, READY),
        (&Method::GET, "/healthz") => respond(StatusCode::OK, HEALTHY),
        _ => respond(StatusCode::NOT_FOUND, b""),
    };
    Ok(response)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value.parse().unwrap_or_else(|_| {
            eprintln!("ceiling: invalid {name}={value:?}");
            std::process::exit(2);
        }),
        Err(_) => default,
    }
}

fn main() -> std::io::Result<()> {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("ceiling: bare hyper server for the benchmark (env PORT, BIND_ADDR)");
        return Ok(());
    }
    let port: u16 = env_or("PORT", 5000);
    let bind: std::net::IpAddr = env_or("BIND_ADDR", std::net::IpAddr::from([127, 0, 0, 1]));
    // Like the service: one worker per core the process may run on, so under
    // `taskset -c 0` this is a single worker thread.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(serve(SocketAddr::new(bind, port)))
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("ceiling listening on {}", listener.local_addr()?);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = sigterm.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        // Responses are written in one piece; no point waiting for more data.
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            // Connection errors (client resets) are expected under load.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}
