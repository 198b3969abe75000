//! Cutting a syslog message to a size: a datagram holds at most so much.

use crate::export::{
    json,
    line::{Attr, Line},
};

use super::format::truncate_utf8;

/// Keys a cut never removes or shortens: what the event is, when, where.
const KEPT_WHOLE: [&str; 9] = [
    "timestamp",
    "schema.version",
    "event",
    "count",
    "server.address",
    "server.port",
    "network.netns",
    "source",
    "truncated",
];

/// The message for `line`, made to fit `limit` bytes by `format`: as it
/// is if it fits; else with `"truncated": true` and, until it fits, the
/// largest attribute in JSON (other than [`KEPT_WHOLE`]; of two as large,
/// the later key) shortened (a string, by what is too much, at a character
/// boundary) or removed, its key listed in `"truncated.keys"`. The MSG
/// stays one valid JSON object. Pure.
pub fn fit(line: &Line, limit: usize, format: impl Fn(&Line) -> String) -> String {
    let whole = format(line);
    if whole.len() <= limit {
        return whole;
    }
    let mut m = line.clone();
    m.set("truncated", Attr::Bool(true));
    let mut keys: Vec<&'static str> = Vec::new();
    loop {
        let mut v = m.clone();
        if !keys.is_empty() {
            let names = keys.iter().map(|k| k.to_string()).collect();
            v.set("truncated.keys", Attr::Strs(names));
        }
        let msg = format(&v);
        if msg.len() <= limit {
            return msg;
        }
        let over = msg.len() - limit;
        let Some(key) = largest(&m) else {
            // Only the kept keys, and still too big (a tiny limit).
            let mut min = Line::new(m.head);
            for k in ["timestamp", "event", "truncated"] {
                if let Some(a) = m.get(k) {
                    min.set(k, a.clone());
                }
            }
            return truncate_utf8(&format(&min), limit).to_string();
        };
        // Room for the key's name in "truncated.keys" too.
        let cut = over + key.len() + 64;
        if !keys.contains(&key) {
            keys.push(key);
        }
        match m.get_mut(key) {
            // Each byte cut takes at least one byte out of the message.
            Some(Attr::Str(s)) if s.len() > cut + 64 => {
                let keep = truncate_utf8(s, s.len() - cut).len();
                s.truncate(keep);
            }
            _ => {
                m.remove(key);
            }
        }
    }
}

/// The key of the largest attribute a cut may touch, by its JSON's length;
/// of two as large, the later in key order.
fn largest(l: &Line) -> Option<&'static str> {
    let cuttable = l.attrs.iter().filter(|(k, _)| !KEPT_WHOLE.contains(k));
    let sized = cuttable.map(|(k, a)| (json::attr_text(a).len(), *k));
    sized.max().map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::format::format;
    use super::super::Facility;
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn fit_cuts_at_field_boundaries_into_valid_json() {
        let fmt = |l: &Line| format(l, Facility::Daemon, "h", "tcpq", 1);
        let small = event();
        assert_eq!(fit(&small, 1000, fmt), fmt(&small));
        let mut big = event();
        big.set("process.command_line", Attr::Str("a".repeat(100_000)));
        big.set("cgroup.path", Attr::Str(format!("/{}", "é".repeat(20_000))));
        big.set("process.holders", Attr::U64s((0..3000).collect()));
        let bigv = crate::export::json::value(&big);
        for limit in [65_000, 20_000, 2_000, 600] {
            let msg = fit(&big, limit, fmt);
            assert!(msg.len() <= limit, "{limit}: {}", msg.len());
            let json: Value = serde_json::from_str(&msg[msg.find("] {").unwrap() + 2..]).unwrap();
            assert_eq!(json["truncated"], true);
            for k in [
                "timestamp",
                "event",
                "count",
                "server.port",
                "network.netns",
            ] {
                assert_eq!(json[k], bigv[k], "{limit}: {k}");
            }
            let keys = json["truncated.keys"].as_array().unwrap();
            assert!(keys.contains(&json!("process.command_line")), "{limit}");
            // What is left of a shortened string is a prefix of it.
            if let Some(c) = json["process.command_line"].as_str() {
                assert!(bigv["process.command_line"]
                    .as_str()
                    .unwrap()
                    .starts_with(c));
            }
            if let Some(c) = json["cgroup.path"].as_str() {
                assert!(bigv["cgroup.path"].as_str().unwrap().starts_with(c));
            }
            assert!(
                msg.starts_with("<29>1 ") || msg.starts_with("<28>1 "),
                "{msg:.40}"
            );
        }
        // At 65 000 only the largest field, the command line, is
        // shortened (not dropped), by what was too much.
        let msg = fit(&big, 65_000, fmt);
        let json: Value = serde_json::from_str(&msg[msg.find("] {").unwrap() + 2..]).unwrap();
        assert!(json["process.command_line"].as_str().unwrap().len() > 5_000);
        assert!(
            json["cgroup.path"] == bigv["cgroup.path"],
            "cgroup.path was cut"
        );
        assert!(
            json["process.holders"] == bigv["process.holders"],
            "holders were cut"
        );
        assert_eq!(json["truncated.keys"], json!(["process.command_line"]));
        assert!(msg.len() > 64_000, "{}", msg.len());
        // Only keys kept whole, or a limit nothing fits: still a message, cut.
        assert!(fit(&named(&"x".repeat(100)), 50, fmt).len() <= 50);
        assert!(fit(&big, 10, fmt).len() <= 10);
    }
}
