//! Binding the /metrics address: names resolved, a long listen backlog,
//! errors one line naming the address.

use std::io;
use std::net::SocketAddr;

use anyhow::anyhow;
use tokio::net::TcpListener;

/// The listen backlog (the kernel caps it at net.core.somaxconn): a burst
/// of connections waits for accept() instead of being dropped (the
/// default, 128, overflowed under a reconnecting flood).
const BACKLOG: u32 = 4096;

/// Listens on the first address that works, like `TcpListener::bind`, with
/// a longer backlog.
fn listen(addrs: Vec<SocketAddr>) -> io::Result<TcpListener> {
    let mut last = io::Error::new(
        io::ErrorKind::InvalidInput,
        "could not resolve to any address",
    );
    for sa in addrs {
        let socket = match sa {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        };
        let listener = socket.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(sa)?;
            s.listen(BACKLOG)
        });
        match listener {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Binds IP:PORT, [IPv6]:PORT or NAME:PORT (resolved); errors are one line
/// naming the address.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let (host, port) = addr.rsplit_once(':').unwrap_or_default();
    let port = port.parse::<u16>().ok();
    let name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    let bound = match addr.parse::<SocketAddr>() {
        Ok(sa) => listen(vec![sa]),
        Err(_) if port.is_some() && !host.is_empty() && host.chars().all(name) => {
            match tokio::net::lookup_host(addr).await {
                Ok(addrs) => listen(addrs.collect()),
                Err(e) => Err(e),
            }
        }
        Err(_) => return Err(anyhow!("metrics address `{addr}`: expected HOST:PORT")),
    };
    bound.map_err(|e| {
        let reason = match e.kind() {
            io::ErrorKind::AddrInUse => "address already in use".to_string(),
            io::ErrorKind::AddrNotAvailable => "address not available on this host".to_string(),
            io::ErrorKind::PermissionDenied if port.is_some_and(|p| p < 1024) => {
                "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".to_string()
            }
            _ => e.to_string().to_lowercase(),
        };
        anyhow!("metrics address {addr}: {reason}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_errors() {
        let taken = bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = bind(&addr).await.unwrap_err().to_string();
        assert_eq!(e, format!("metrics address {addr}: address already in use"));
        for bad in "foo,127.0.0.1,1.2.3.4:99999,:9465,::1:9465,a b:80,".split(',') {
            let e = bind(bad).await.unwrap_err().to_string();
            assert_eq!(e, format!("metrics address `{bad}`: expected HOST:PORT"));
        }
    }
}
