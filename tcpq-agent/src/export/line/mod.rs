//! One output line as typed, ordered attributes, built once from the typed
//! values (a report, lost events, a status row, the agent's health).
//! JSON lines, syslog and OTLP are each a pure function of a [`Line`]:
//! none of them reads another's output.

pub mod report;
pub mod state;

pub use crate::export::head::{Head, Severity};
pub use report::{lost, owner, report};
pub use state::{health, status, HealthLine};

use crate::model::report::Field;

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    U64(u64),
    I64(i64),
    /// Not finite: JSON `null`, and no OTLP attribute.
    F64(f64),
    Bool(bool),
    U64s(Vec<u64>),
    Strs(Vec<String>),
    /// Named counts (a JSON object, an OTLP key-value list); of a name given
    /// twice the last count counts.
    Counts(Vec<(String, u64)>),
}

impl Attr {
    /// What JSON writes as `null` (and OTLP leaves out).
    pub fn is_null(&self) -> bool {
        matches!(self, Attr::F64(x) if !x.is_finite())
    }

    pub fn str(s: impl Into<String>) -> Attr {
        Attr::Str(s.into())
    }
}

impl From<&Field> for Attr {
    fn from(f: &Field) -> Attr {
        match f {
            Field::Int(n) => Attr::I64(*n),
            Field::Uint(n) => Attr::U64(*n),
            Field::Float(x) => Attr::F64(*x),
            Field::Str(s) => Attr::Str(s.clone()),
        }
    }
}

/// One line: its head (time, event, severity: a syslog header, an OTLP
/// record's envelope) and its attributes, each key once, in the order they
/// were set (JSON objects and OTLP attributes come sorted by key).
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    pub head: Head<'a>,
    pub attrs: Vec<(&'static str, Attr)>,
}

impl<'a> Line<'a> {
    pub fn new(head: Head<'a>) -> Line<'a> {
        Line {
            head,
            attrs: Vec::new(),
        }
    }

    /// Sets `key`, replacing what it held.
    pub fn set(&mut self, key: &'static str, value: Attr) {
        match self.get_mut(key) {
            Some(v) => *v = value,
            None => self.attrs.push((key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Attr> {
        self.attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Attr> {
        self.attrs
            .iter_mut()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    pub fn remove(&mut self, key: &str) -> Option<Attr> {
        let i = self.attrs.iter().position(|(k, _)| *k == key)?;
        Some(self.attrs.remove(i).1)
    }

    /// A string attribute's value.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Attr::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// The attributes sorted by key: the order of a JSON object's keys and
    /// of an OTLP record's attributes.
    pub fn sorted(&self) -> Vec<(&'static str, &Attr)> {
        let mut v: Vec<_> = self.attrs.iter().map(|(k, a)| (*k, a)).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn a_key_is_set_once_and_replaced_in_place() {
        let mut l = Line::new(Head::lost(UNIX_EPOCH));
        l.set("b", Attr::U64(1));
        l.set("a", Attr::str("x"));
        l.set("b", Attr::Bool(true));
        assert_eq!(l.attrs, [("b", Attr::Bool(true)), ("a", Attr::str("x"))]);
        assert_eq!(l.sorted()[0], ("a", &Attr::str("x")));
        assert_eq!(l.str("a"), Some("x"));
        assert_eq!(l.remove("b"), Some(Attr::Bool(true)));
        assert!(l.get("b").is_none() && Attr::F64(f64::NAN).is_null());
    }
}
