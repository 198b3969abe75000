//! The text exposition format 0.0.4: what `/metrics` serves.

use super::registry::{Labels, Registry, Type, Value};

impl Registry {
    /// Text exposition format 0.0.4.
    /// The values as they are (tests).
    #[cfg(test)]
    pub fn render(&self) -> String {
        self.render_with(false)
    }

    /// What a scrape gets: new counter and histogram series at 0 (see
    /// `Series::fresh`), with their values from the next scrape on.
    pub fn render_scrape(&mut self) -> String {
        let text = self.render_with(true);
        for fam in self.families.values_mut() {
            let overflow = fam.overflow.iter_mut().map(|(_, s)| s);
            for s in fam.series.values_mut().chain(overflow) {
                s.fresh = false;
            }
        }
        text
    }

    fn render_with(&self, zero_fresh: bool) -> String {
        let mut out = String::with_capacity(4096);
        for (name, fam) in &self.families {
            let ty = match fam.ty {
                Type::Counter => "counter",
                Type::Gauge => "gauge",
                Type::Histogram => "histogram",
            };
            let help = escape(&fam.help, false);
            out += &format!("# HELP {name} {help}\n# TYPE {name} {ty}\n");
            let overflow = fam.overflow.iter().map(|(l, s)| (l, s));
            for (labels, s) in fam.series.iter().chain(overflow) {
                let mut line = |suffix, le: Option<&str>, value: &str| {
                    sample(&mut out, name, suffix, labels, le, value)
                };
                let zero = zero_fresh && s.fresh;
                match &s.value {
                    Value::Counter(_) if zero => line("", None, "0"),
                    Value::Counter(c) => line("", None, &c.to_string()),
                    Value::Gauge(g) => line("", None, &fmt_f64(*g)),
                    Value::Histogram(counts, sum) => {
                        let mut cum = 0u64;
                        let sum = if zero { 0.0 } else { *sum };
                        for (i, c) in counts.iter().enumerate() {
                            cum = cum.saturating_add(if zero { 0 } else { *c });
                            let le = fam.bounds.iter().flatten().nth(i);
                            let le = le.map_or("+Inf".into(), |b| fmt_f64(*b));
                            line("_bucket", Some(&le), &cum.to_string());
                        }
                        line("_sum", None, &fmt_f64(sum));
                        line("_count", None, &cum.to_string());
                    }
                }
            }
        }
        out
    }
}

/// Escapes `\` and newline, and `"` too in label values.
fn escape(s: &str, quote: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// One sample line; labels with an empty value are left out.
fn sample(out: &mut String, name: &str, suffix: &str, labels: &Labels, le: Option<&str>, v: &str) {
    let le = le.map(|le| ("le", le.to_string()));
    let mut pairs = labels.iter().chain(&le).filter(|(_, v)| !v.is_empty());
    let mut line = format!("{name}{suffix}");
    if let Some((n, v)) = pairs.next() {
        line += &format!("{{{n}=\"{}\"", escape(v, true));
        pairs.for_each(|(n, v)| line += &format!(",{n}=\"{}\"", escape(v, true)));
        line.push('}');
    }
    *out += &format!("{line} {v}\n");
}

fn fmt_f64(v: f64) -> String {
    match v {
        _ if v.is_nan() => "NaN".into(),
        f64::INFINITY => "+Inf".into(),
        f64::NEG_INFINITY => "-Inf".into(),
        _ if v.fract() == 0.0 && v.abs() < 1e15 => (v as i64).to_string(),
        _ => format!("{v:?}"), // shortest round-trip repr, exponent when very large/small
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use std::io;
    use std::time::Duration;

    #[test]
    fn render_exact() {
        let want = r#"# HELP tcpq_accept_latency_seconds Accept latency.
# TYPE tcpq_accept_latency_seconds histogram
tcpq_accept_latency_seconds_bucket{port="80",le="0.001"} 1
tcpq_accept_latency_seconds_bucket{port="80",le="0.1"} 4
tcpq_accept_latency_seconds_bucket{port="80",le="1"} 4
tcpq_accept_latency_seconds_bucket{port="80",le="+Inf"} 8
tcpq_accept_latency_seconds_sum{port="80"} 9.75
tcpq_accept_latency_seconds_count{port="80"} 8
# HELP tcpq_backlog Accept queue length.
# TYPE tcpq_backlog gauge
tcpq_backlog{port="22"} 1.5
# HELP tcpq_drops_total Dropped SYNs.\nBy \\reason
# TYPE tcpq_drops_total counter
tcpq_drops_total{port="443",reason="a\"b\\c\nd"} 1
tcpq_drops_total{port="80",reason="full"} 5
# HELP tcpq_empty_total Nothing yet.
# TYPE tcpq_empty_total counter
# HELP tcpq_up Agent running.
# TYPE tcpq_up gauge
tcpq_up 1
"#;
        assert_eq!(sample_registry().render(), want);
        const INF: f64 = f64::INFINITY;
        let floats = [5.0, -0.0, 0.25, 1e20, 1e-7, f64::NAN, INF, -INF];
        let want = ["5", "0", "0.25", "1e20", "1e-7", "NaN", "+Inf", "-Inf"];
        assert_eq!(floats.map(fmt_f64), want);
    }

    #[test]
    fn promtool_accepts_output() {
        use std::process::{Command, Stdio};
        let mut r = sample_registry();
        r.set_limits(1, Duration::from_secs(60));
        r.inc(DROPS, &drop_labels("8080", "full"), 1);
        r.observe(LAT, &port("81"), BOUNDS, &[0, 0, 0, 1], 3.0);
        r.replace_gauges("tcpq_backlog", vec![(port("1"), 1.0), (port("2"), 2.0)]);
        assert_eq!(r.overflowed(), 3);
        let text = r.render();
        let mut cmd = Command::new("promtool");
        cmd.args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = match cmd.stderr(Stdio::piped()).spawn() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return eprintln!("no promtool: skipped")
            }
            r => r.unwrap(),
        };
        io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let msg = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{msg}\n{text}");
    }
}
