//! The kind-specific facts of a report line, typed and unrounded. Rounding
//! happens in [`Fact::fields`], where a line is rendered (text and JSON
//! alike); verdicts read the exact values.

/// One extra fact on a report line.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    /// Accept latency over the interval (histogram bucket bounds).
    AcceptLatency {
        p50_ns: u64,
        p99_ns: u64,
        max_ns: u64,
    },
    /// The oldest CLOSE_WAIT socket's age and the count's growth.
    CloseWait {
        oldest_seconds: f64,
        growth_per_minute: f64,
    },
    /// The owner's open descriptors.
    OpenFds(u64),
    /// The owner's soft RLIMIT_NOFILE.
    FdLimit(u64),
    /// What the application passed to listen() (negative: the largest).
    BacklogRequested(i32),
    /// Sockets in TIME_WAIT in the namespace.
    TimeWait(u32),
    /// The namespace's net.ipv4.ip_local_port_range.
    PortRange { lo: u16, hi: u16 },
    /// The SO_REUSEPORT group's size and its total of the line's kind.
    Reuseport { group_size: u32, group_count: u64 },
}

/// A rendered fact's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
}

/// Milliseconds to one decimal.
fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e5).round() / 10.0
}

impl Fact {
    /// The fact as the keys and (rounded) values a line shows.
    pub fn fields(&self) -> Vec<(&'static str, Field)> {
        use Field::*;
        match *self {
            Fact::AcceptLatency {
                p50_ns,
                p99_ns,
                max_ns,
            } => vec![
                ("accept_latency.p50_ms", Float(ms(p50_ns))),
                ("accept_latency.p99_ms", Float(ms(p99_ns))),
                ("accept_latency.max_ms", Float(ms(max_ns))),
            ],
            Fact::CloseWait {
                oldest_seconds,
                growth_per_minute,
            } => vec![
                (
                    "close_wait.oldest_seconds",
                    Float((oldest_seconds * 10.0).round() / 10.0),
                ),
                (
                    "close_wait.growth_per_minute",
                    Float(growth_per_minute.round()),
                ),
            ],
            Fact::OpenFds(n) => vec![("process.open_fds", Uint(n))],
            Fact::FdLimit(n) => vec![("process.fd_limit", Uint(n))],
            Fact::BacklogRequested(b) => vec![("listen.backlog_requested", Int(b.into()))],
            Fact::TimeWait(n) => vec![("time_wait.count", Uint(n.into()))],
            Fact::PortRange { lo, hi } => vec![
                ("port_range", Str(format!("{lo}-{hi}"))),
                ("port_range.size", Uint((hi as u32 - lo as u32 + 1).into())),
            ],
            Fact::Reuseport {
                group_size,
                group_count,
            } => vec![
                ("reuseport.group_size", Uint(group_size.into())),
                ("reuseport.group_count", Uint(group_count)),
            ],
        }
    }

    /// The exact p99 accept latency in milliseconds, if this is one.
    pub fn accept_latency_p99_ms(&self) -> Option<f64> {
        match self {
            Fact::AcceptLatency { p99_ns, .. } => Some(*p99_ns as f64 / 1e6),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_in_the_rendering_only() {
        let f = Fact::AcceptLatency {
            p50_ns: 250_000,
            p99_ns: 850_449_000,
            max_ns: 1_000_000_000,
        };
        assert_eq!(f.accept_latency_p99_ms(), Some(850.449));
        assert_eq!(
            f.fields(),
            vec![
                ("accept_latency.p50_ms", Field::Float(0.3)),
                ("accept_latency.p99_ms", Field::Float(850.4)),
                ("accept_latency.max_ms", Field::Float(1000.0)),
            ]
        );
        let cw = Fact::CloseWait {
            oldest_seconds: 29.96,
            growth_per_minute: 1.6,
        };
        assert_eq!(cw.fields()[0].1, Field::Float(30.0));
        assert_eq!(cw.fields()[1].1, Field::Float(2.0));
        let r = Fact::PortRange {
            lo: 40000,
            hi: 40003,
        };
        assert_eq!(r.fields()[0].1, Field::Str("40000-40003".into()));
        assert_eq!(r.fields()[1].1, Field::Uint(4));
    }
}
