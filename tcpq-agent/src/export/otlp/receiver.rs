//! Local OTLP receivers for the transport's tests, on 127.0.0.1: one that
//! answers with scripted statuses and records each request, one that
//! accepts and never answers, and an address that refuses connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{Config, Endpoint};

/// A request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

/// Answers the n-th request with `script[n]`, then 200.
pub async fn scripted(script: Vec<u16>) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rx = Receiver {
        addr,
        seen: seen.clone(),
    };
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (seen, script) = (seen.clone(), script.clone());
            let svc = service_fn(move |req| answer(req, seen.clone(), script.clone()));
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
        }
    });
    rx
}

async fn answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Vec<u16>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (head, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let n = {
        let mut seen = seen.lock().unwrap();
        seen.push(Seen {
            method: head.method.to_string(),
            path: head.uri.to_string(),
            headers: head.headers,
            body,
        });
        seen.len() - 1
    };
    let code = script.get(n).copied().unwrap_or(200);
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap();
    Ok(resp)
}

/// Accepts connections, reads nothing, never answers.
pub async fn silent() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            held.push(stream);
        }
    });
    addr
}

/// An address nothing listens on (a port just bound and released).
pub fn refusing() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Where the client sends, with a short timeout.
pub fn config(addr: SocketAddr, prefix: &str) -> Config {
    Config {
        endpoint: Endpoint {
            host: addr.ip().to_string(),
            port: addr.port(),
            prefix: prefix.into(),
        },
        headers: vec![],
        queue_size: 16,
        metrics_interval: Duration::from_secs(10),
        timeout: Duration::from_millis(300),
    }
}
