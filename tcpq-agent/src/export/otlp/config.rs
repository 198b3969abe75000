//! Where and how OTLP is exported: the endpoint URL and request headers,
//! as configured (`otlp.endpoint`, `OTEL_EXPORTER_OTLP_HEADERS`).

use std::time::Duration;

/// Where and how to export.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub endpoint: Endpoint,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, String)>,
    /// Log records waiting to be sent, at most.
    pub queue_size: usize,
    /// Seconds between metrics exports.
    pub metrics_interval: Duration,
    /// Per request.
    pub timeout: Duration,
}

/// `http://HOST[:PORT][/PREFIX]`: signals go to PREFIX/v1/logs and
/// PREFIX/v1/metrics (the OTLP/HTTP base-URL rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub prefix: String,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let rest = match s.split_once("://") {
            Some(("http", r)) => r,
            Some(("https", _)) => {
                return Err(format!(
                    "`{s}`: https is not supported; point it at a local collector over http://"
                ))
            }
            _ => return Err(format!("`{s}`: expected http://HOST[:PORT][/PATH]")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{s}`: bad port `{p}`"))?,
            ),
            _ => (authority, 4318),
        };
        if host.is_empty() {
            return Err(format!("`{s}`: no host"));
        }
        let prefix = path.trim_end_matches('/');
        if format!("{prefix}/v1/logs").parse::<hyper::Uri>().is_err() {
            return Err(format!("`{s}`: `{path}` is not a URL path"));
        }
        Ok(Endpoint {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port,
            prefix: prefix.into(),
        })
    }

    pub(super) fn authority(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        }
    }
}

/// `key1=value1,key2=value2` (values percent-decoded), as in
/// `OTEL_EXPORTER_OTLP_HEADERS`.
pub fn parse_headers(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: expected key=value"))?;
        let k = k.trim();
        let ok = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            return Err(format!("`{k}` is not a header name"));
        }
        let v = percent_decode(v.trim());
        if v.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(format!(
                "header `{k}`: a value may not contain a line break"
            ));
        }
        // What HTTP allows in a field value: no other control character.
        if v.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(format!(
                "header `{k}`: a value may not contain a control character"
            ));
        }
        out.push((k.to_string(), v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("127.0.0.1", 4318, "")
        );
        let e = Endpoint::parse("http://collector/otlp/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("collector", 4318, "/otlp")
        );
        let e = Endpoint::parse("http://[::1]:9999").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.authority()),
            ("::1", 9999, "[::1]:9999".into())
        );
        for bad in [
            "https://x",
            "ftp://x",
            "127.0.0.1:4318",
            "http://:1",
            "http://h:0",
            "http://h:x",
            "http://h/a b",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_headers("api-key=a%20b, x-tenant = t1").unwrap(),
            [
                ("api-key".to_string(), "a b".to_string()),
                ("x-tenant".into(), "t1".into())
            ]
        );
        assert!(parse_headers("novalue").is_err());
        assert!(parse_headers("bad name=1").is_err());
        assert!(parse_headers("k=a%0Db").is_err());
        assert!(parse_headers("k=a%00b").is_err());
        assert_eq!(parse_headers("k=a%09b").unwrap()[0].1, "a\tb");
        assert!(parse_headers("").unwrap().is_empty());
    }
}
