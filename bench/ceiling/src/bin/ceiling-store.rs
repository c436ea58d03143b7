//! The ceiling with the service's store: the bare hyper server of
//! `ceiling`, answering `/hello/{name}` from hello-birthday's own store
//! (`hello_birthday::store::StoreHandle`, the database `DATABASE_URL`
//! names, batching and all) with the service's own parsing and greeting,
//! and nothing else: no router, middleware, metrics, logs, limits or
//! deadlines. It is the least CPU per request that this design (hyper,
//! tokio, this store) can spend, so the service's figure minus this one is
//! what its HTTP layer costs, and this one minus the bare ceiling is what
//! the store costs.
//!
//! Routes: `GET /hello/{name}` 200 with the greeting or 404, `PUT
//! /hello/{name}` 204 after the store's commit (400 on a bad name, body or
//! date), `GET /healthz` and `GET /readyz` 200, anything else 404. A store
//! error is a 503. Configuration: the service's own variables (`PORT`,
//! `BIND_ADDR`, `DATABASE_URL`, `DB_POOL_SIZE`, ...), read by its parser.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use hello_birthday::config::Cli;
use hello_birthday::domain::{DateOfBirth, Username, greeting};
use hello_birthday::http::body::decode_put_body;
use hello_birthday::store::StoreHandle;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

type Answer = Response<Full<Bytes>>;

fn respond(status: StatusCode, body: Bytes) -> Answer {
    let json = !body.is_empty();
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if json {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    response
}

fn status(status: StatusCode) -> Answer {
    respond(status, Bytes::new())
}

fn today() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}

async fn get(store: &StoreHandle, user: &Username) -> Answer {
    match store.get(user).await {
        Ok(Some(dob)) => {
            let body = serde_json::json!({ "message": greeting(user, &dob, today()) });
            respond(StatusCode::OK, Bytes::from(body.to_string()))
        }
        Ok(None) => status(StatusCode::NOT_FOUND),
        Err(_) => status(StatusCode::SERVICE_UNAVAILABLE),
    }
}

async fn put(store: &StoreHandle, user: &Username, request: Request<Incoming>) -> Answer {
    let Ok(body) = request.into_body().collect().await else {
        return status(StatusCode::BAD_REQUEST);
    };
    let Ok(decoded) = decode_put_body(&body.to_bytes()) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let Ok(dob) = DateOfBirth::parse(&decoded.date_of_birth, today()) else {
        return status(StatusCode::BAD_REQUEST);
    };
    match store.upsert(user, dob).await {
        Ok(()) => status(StatusCode::NO_CONTENT),
        Err(_) => status(StatusCode::SERVICE_UNAVAILABLE),
    }
}

async fn handle(store: Arc<StoreHandle>, request: Request<Incoming>) -> Result<Answer, Infallible> {
    let path = request.uri().path();
    if let Some(name) = path.strip_prefix("/hello/") {
        let Ok(user) = Username::parse(name) else {
            return Ok(status(StatusCode::BAD_REQUEST));
        };
        return Ok(match *request.method() {
            Method::GET => get(&store, &user).await,
            Method::PUT => put(&store, &user, request).await,
            _ => status(StatusCode::METHOD_NOT_ALLOWED),
        });
    }
    Ok(match (request.method(), path) {
        (&Method::GET, "/readyz" | "/healthz") => {
            respond(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#))
        }
        _ => status(StatusCode::NOT_FOUND),
    })
}

fn main() -> anyhow::Result<()> {
    let config = Cli::parse().config;
    // Like the service: one worker per core the process may run on.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(async move {
            let store = Arc::new(StoreHandle::connect(&config).await?);
            serve(SocketAddr::new(config.bind_addr, config.port), store).await
        })
}

async fn serve(addr: SocketAddr, store: Arc<StoreHandle>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("ceiling-store listening on {}", listener.local_addr()?);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        stream.set_nodelay(true)?;
        let store = store.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(store.clone(), request));
            // Connection errors (client resets) are expected under load.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    store.close().await;
    Ok(())
}
