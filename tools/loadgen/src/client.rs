//! One keep-alive HTTP/1.1 connection to one loopback target, and the answer
//! to one request or why there was none. Shared by the load and the check.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request counts as failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// The server answered with a status outside 2xx.
    Status,
    /// The TCP connection could not be opened.
    Connect,
    /// The connection broke while the request was in flight.
    Io,
    /// No complete answer within `--timeout-ms`.
    Timeout,
    /// A 200 whose greeting does not match any value this client wrote.
    Mismatch,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Status => "status",
            Failure::Connect => "connect",
            Failure::Io => "io",
            Failure::Timeout => "timeout",
            Failure::Mismatch => "mismatch",
        }
    }
}

/// Where requests go: a loopback socket address and the Host header to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub host_header: String,
}

/// `http://HOST:PORT[/...]` with HOST a loopback IP or `localhost`: load
/// goes to this machine only.
pub fn parse_target(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once("]:").ok_or("expected [::1]:PORT")?;
        (h.to_string(), p)
    } else {
        let (h, p) = authority
            .rsplit_once(':')
            .ok_or("the URL needs an explicit port")?;
        (h.to_string(), p)
    };
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| format!("host {host:?} is not an IP address"))?
    };
    if !ip.is_loopback() {
        return Err(format!(
            "{ip} is not a loopback address: loadgen only targets 127.0.0.0/8 and ::1"
        ));
    }
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host_header: authority.to_string(),
    })
}

/// The answer to one request, or why there was none (`status` 0).
pub struct Outcome {
    pub status: u16,
    pub server: Arc<str>,
    pub body: Bytes,
    pub failure: Option<Failure>,
}

/// A connection that reopens itself when the server closed it while idle.
pub struct Client {
    target: Arc<Target>,
    timeout: Duration,
    /// Response header that names the server that answered.
    server_header: Arc<str>,
    unknown_server: Arc<str>,
    conn: Option<SendRequest<Full<Bytes>>>,
    /// Idle connections found closed and reopened.
    pub reconnects: u64,
}

impl Client {
    pub fn new(target: Arc<Target>, timeout: Duration, server_header: Arc<str>) -> Self {
        Client {
            target,
            timeout,
            server_header,
            unknown_server: Arc::from("-"),
            conn: None,
            reconnects: 0,
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .map_err(|_| Failure::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(async move {
            // The connection task ends when the peer or this client closes it;
            // the request side sees the error.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends one request, opening a new connection when the previous was
    /// closed while idle (nothing was sent on it, so that is not a failure).
    pub async fn send(&mut self, method: Method, path: &str, body: Option<String>) -> Outcome {
        let host = self.target.host_header.clone();
        let header_name = self.server_header.clone();
        let unknown = self.unknown_server.clone();
        let deadline = self.timeout;
        let fut = async {
            if let Some(sender) = self.conn.as_mut()
                && sender.ready().await.is_err()
            {
                self.conn = None;
                self.reconnects += 1;
            }
            if self.conn.is_none() {
                let sender = self.connect().await?;
                self.conn = Some(sender);
            }
            let sender = self.conn.as_mut().expect("connected");
            sender.ready().await.map_err(|_| Failure::Io)?;
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, host);
            let body = match body {
                Some(b) => {
                    req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                    Full::new(Bytes::from(b))
                }
                None => Full::new(Bytes::new()),
            };
            let req = req.body(body).expect("valid request");
            let resp = sender.send_request(req).await.map_err(|_| Failure::Io)?;
            let status = resp.status().as_u16();
            let server: Arc<str> = resp
                .headers()
                .get(&*header_name)
                .and_then(|v| v.to_str().ok())
                .map(Arc::from)
                .unwrap_or(unknown);
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|_| Failure::Io)?
                .to_bytes();
            Ok::<_, Failure>((status, server, body))
        };
        match tokio::time::timeout(deadline, fut).await {
            Ok(Ok((status, server, body))) => Outcome {
                status,
                server,
                body,
                failure: (!(200..300).contains(&status)).then_some(Failure::Status),
            },
            Ok(Err(f)) => {
                self.conn = None;
                self.no_answer(f)
            }
            Err(_) => {
                // The connection's state is unknown after a timeout: start afresh.
                self.conn = None;
                self.no_answer(Failure::Timeout)
            }
        }
    }

    fn no_answer(&self, failure: Failure) -> Outcome {
        Outcome {
            status: 0,
            server: self.unknown_server.clone(),
            body: Bytes::new(),
            failure: Some(failure),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::net::TcpListener;

    #[test]
    fn targets_are_loopback_with_a_port() {
        let t = parse_target("http://127.0.0.1:8080/x").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.host_header, "127.0.0.1:8080");
        let t = parse_target("http://localhost:9").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!(t.host_header, "localhost:9");
        let t = parse_target("http://[::1]:81").unwrap();
        assert_eq!(t.addr, "[::1]:81".parse().unwrap());
        assert!(parse_target("http://127.9.9.9:1").is_ok());
    }

    #[test]
    fn other_targets_are_refused() {
        for bad in [
            "https://127.0.0.1:1",
            "http://127.0.0.1",
            "http://127.0.0.1:99999",
            "http://example.com:80",
            "http://10.0.0.1:80",
            "http://[::2]:80",
            "http://[::1]",
        ] {
            assert!(parse_target(bad).is_err(), "{bad} accepted");
        }
        assert!(
            parse_target("http://192.168.1.1:80")
                .unwrap_err()
                .contains("not a loopback")
        );
    }

    /// A one-shot HTTP server on loopback that answers `reply` to every
    /// request of one connection, then closes.
    fn serve(reply: &'static str) -> Arc<Target> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(reply.as_bytes());
        });
        Arc::new(parse_target(&format!("http://{addr}")).unwrap())
    }

    #[tokio::test]
    async fn answers_carry_status_server_and_body() {
        let target = serve(
            "HTTP/1.1 503 Service Unavailable\r\nx-served-by: b\r\ncontent-length: 2\r\n\r\nno",
        );
        let mut c = Client::new(target, Duration::from_secs(5), Arc::from("x-served-by"));
        let out = c.send(Method::GET, "/hello/a", None).await;
        assert_eq!(out.status, 503);
        assert_eq!(&*out.server, "b");
        assert_eq!(&out.body[..], b"no");
        assert_eq!(out.failure, Some(Failure::Status));
    }

    #[tokio::test]
    async fn silence_is_a_timeout_and_a_closed_port_a_connect_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(parse_target(&format!("http://{addr}")).unwrap());
        let mut c = Client::new(target, Duration::from_millis(200), Arc::from("x"));
        let out = c.send(Method::GET, "/", None).await;
        assert_eq!((out.status, out.failure), (0, Some(Failure::Timeout)));
        drop(listener);
        let out = c.send(Method::GET, "/", None).await;
        assert_eq!(out.failure, Some(Failure::Connect));
        assert_eq!(&*out.server, "-");
    }
}
