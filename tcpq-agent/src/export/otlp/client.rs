//! One OTLP/HTTP request: a POST of a protobuf body on a fresh connection
//! (hyper's HTTP/1 client over a tokio `TcpStream`), within the configured
//! timeout, answered by the response's status code.

use anyhow::{anyhow, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Config;

/// POSTs `body` to the endpoint's `signal` path (`/v1/logs`,
/// `/v1/metrics`): the status code, or why there is none (the connection
/// failed, the answer was no HTTP, the timeout passed).
pub(super) async fn post(cfg: &Config, signal: &str, body: Bytes) -> Result<StatusCode> {
    let req = request(cfg, signal, body)?;
    tokio::time::timeout(cfg.timeout, exchange(cfg, req))
        .await
        .map_err(|_| anyhow!("timed out"))?
}

/// The request: Host, the protobuf content type, one connection per
/// request, then the configured headers. hyper adds Content-Length.
fn request(cfg: &Config, signal: &str, body: Bytes) -> Result<Request<Full<Bytes>>> {
    let ep = &cfg.endpoint;
    let mut req = Request::post(format!("{}{signal}", ep.prefix))
        .header(HOST, ep.authority())
        .header(USER_AGENT, concat!("tcpq/", env!("CARGO_PKG_VERSION")))
        .header(CONTENT_TYPE, "application/x-protobuf")
        .header(CONNECTION, "close");
    for (k, v) in &cfg.headers {
        // Bytes, not `&str`: a percent-decoded value may be UTF-8.
        req = req.header(k.as_str(), HeaderValue::from_bytes(v.as_bytes())?);
    }
    Ok(req.body(Full::new(body))?)
}

/// Connects, sends, and waits for the response head (its body is not
/// read: the status is all that matters, and the connection is closed).
async fn exchange(cfg: &Config, req: Request<Full<Bytes>>) -> Result<StatusCode> {
    let ep = &cfg.endpoint;
    let stream = TcpStream::connect((ep.host.as_str(), ep.port)).await?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    let send = sender.send_request(req);
    tokio::pin!(conn, send);
    tokio::select! {
        biased;
        resp = &mut send => Ok(resp?.status()),
        // The connection ended first (the server answered and closed, or
        // it failed): the answer, if one came.
        end = &mut conn => {
            end?;
            Ok(send.await?.status())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::receiver;
    use super::*;

    #[tokio::test]
    async fn posts_protobuf_with_host_and_configured_headers() {
        let rx = receiver::scripted(vec![]).await;
        let mut cfg = receiver::config(rx.addr, "/otlp");
        cfg.headers = vec![
            ("api-key".into(), "a b".into()),
            ("x-who".into(), "Jörg".into()),
        ];
        let code = post(&cfg, "/v1/logs", Bytes::from_static(b"\x0a\x00"))
            .await
            .unwrap();
        assert_eq!(code, StatusCode::OK);
        let seen = rx.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        let s = &seen[0];
        assert_eq!(
            (s.method.as_str(), s.path.as_str()),
            ("POST", "/otlp/v1/logs")
        );
        let h = |k: &str| s.headers.get(k).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(h("host"), Some(format!("127.0.0.1:{}", rx.addr.port())));
        assert_eq!(h("content-type").as_deref(), Some("application/x-protobuf"));
        assert_eq!(h("content-length").as_deref(), Some("2"));
        assert_eq!(h("api-key").as_deref(), Some("a b"));
        assert_eq!(s.headers["x-who"].as_bytes(), "Jörg".as_bytes());
        assert!(h("user-agent").unwrap().starts_with("tcpq/"));
        assert_eq!(&s.body[..], b"\x0a\x00");
    }

    #[tokio::test]
    async fn returns_the_status() {
        let rx = receiver::scripted(vec![503, 429]).await;
        let cfg = receiver::config(rx.addr, "");
        for want in [503, 429, 200] {
            let code = post(&cfg, "/v1/metrics", Bytes::new()).await.unwrap();
            assert_eq!(code.as_u16(), want);
        }
        assert_eq!(rx.seen.lock().unwrap()[0].path, "/v1/metrics");
    }

    #[tokio::test]
    async fn connection_refused_is_an_error() {
        let cfg = receiver::config(receiver::refusing(), "");
        assert!(post(&cfg, "/v1/logs", Bytes::new()).await.is_err());
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_times_out() {
        let cfg = receiver::config(receiver::silent().await, "");
        let t = Instant::now();
        let err = post(&cfg, "/v1/logs", Bytes::new()).await.unwrap_err();
        assert_eq!(err.to_string(), "timed out");
        assert!(t.elapsed() >= cfg.timeout, "{:?}", t.elapsed());
    }
}
