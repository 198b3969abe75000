//! Counted nouns and durations as the sentences say them.

/// "1 time", "57 times".
pub fn times(n: u64) -> String {
    count(n, "time", "times")
}

pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "1 accepted connection sits", "340 accepted connections sit".
pub fn count_sit(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun} sits")
    } else {
        format!("{n} {noun}s sit")
    }
}

/// "1 connection waits", "12 connections wait".
pub fn count_wait(n: u32) -> String {
    if n == 1 {
        "1 connection waits".to_string()
    } else {
        format!("{n} connections wait")
    }
}

/// "1 is", "90 are".
pub fn count_verb(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Milliseconds as a plain integer ("850 ms"); "under 1 ms" below that.
pub fn millis(ms: f64) -> String {
    if ms > 0.0 && ms < 1.0 {
        "under 1 ms".to_string()
    } else {
        format!("{:.0} ms", ms.max(0.0))
    }
}
