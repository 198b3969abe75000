//! JSON lines: a [`Line`] as one JSON object on one line. The only place
//! the agent's output becomes JSON.

use serde_json::{Map, Value};

use crate::export::line::{Attr, Line};

/// A line as its JSON object (keys sorted, as serde_json's map keeps them).
pub(crate) fn value(l: &Line) -> Value {
    let m: Map<String, Value> = l
        .attrs
        .iter()
        .map(|(k, a)| (k.to_string(), attr(a)))
        .collect();
    Value::Object(m)
}

/// An attribute's JSON value (`null` for a float that is not finite).
fn attr(a: &Attr) -> Value {
    match a {
        Attr::Str(s) => Value::from(s.as_str()),
        Attr::U64(n) => Value::from(*n),
        Attr::I64(n) => Value::from(*n),
        Attr::F64(x) => Value::from(*x),
        Attr::Bool(b) => Value::from(*b),
        Attr::U64s(v) => Value::from(v.clone()),
        Attr::Strs(v) => Value::from(v.clone()),
        Attr::Counts(c) => {
            let m: Map<String, Value> = c
                .iter()
                .map(|(k, n)| (k.clone(), Value::from(*n)))
                .collect();
            Value::Object(m)
        }
    }
}

/// An attribute as JSON text: `"a string"` quoted and escaped, a number as
/// it is. Text lines spell facts this way; syslog sizes fields with it.
pub fn attr_text(a: &Attr) -> String {
    attr(a).to_string()
}

/// The line as JSON on one line.
pub fn render(l: &Line) -> String {
    line(&value(l))
}

/// One JSON object as one line: serde_json's escaping (every C0 control,
/// `"` and `\`), plus DEL, the C1 controls and U+2028/U+2029 as `\uNNNN`,
/// so the line holds no control character at all. It parses back to the
/// same value.
pub(crate) fn line(v: &Value) -> String {
    let s = v.to_string();
    if !s
        .chars()
        .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        return s;
    }
    // Outside strings serde_json writes no such character, so every one
    // found is inside a string, where `\uNNNN` is its escape.
    let mut out = String::with_capacity(s.len() + 12);
    for c in s.chars() {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out += &format!("\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// One `status` row's JSON object (without the snapshot's time), for
/// tests that read a row's keys.
#[cfg(test)]
pub fn status_row(r: &crate::verdict::status::Row) -> Value {
    let head = crate::export::line::Head::state(std::time::UNIX_EPOCH, "listener");
    let mut l = Line::new(head);
    l.set("event", Attr::str("listener"));
    crate::export::line::state::row(r, &mut l);
    value(&l)
}
