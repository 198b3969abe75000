//! The registry: metric families and their series, capped per family,
//! expiring (see the module doc of [`super`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// Label names and values in a fixed order (names are static, valid Prometheus label names).
pub type Labels = Vec<(&'static str, String)>;

pub(super) enum Value {
    Counter(u64),
    Gauge(f64),
    /// Per-bucket counts (not cumulative), the last one above the last bound.
    Histogram(Vec<u64>, f64),
}

pub(super) struct Series {
    pub(super) value: Value,
    touched: Instant,
    /// Not scraped yet: a counter or histogram shows 0 at its first scrape,
    /// so `rate()`/`increase()` see its first events (a series appearing
    /// with N already in it would hide them).
    pub(super) fresh: bool,
}

pub(super) struct Family {
    pub(super) help: String,
    pub(super) ty: Type,
    /// Histograms: upper bounds without +Inf, fixed at the first `observe`.
    pub(super) bounds: Option<Vec<f64>>,
    pub(super) series: BTreeMap<Labels, Series>,
    pub(super) overflow: Option<(Labels, Series)>,
}

fn new_series(ty: Type, bounds: &Option<Vec<f64>>, touched: Instant) -> Series {
    let value = match ty {
        Type::Counter => Value::Counter(0),
        Type::Gauge => Value::Gauge(0.0),
        Type::Histogram => Value::Histogram(vec![0; bounds.as_ref().map_or(0, Vec::len) + 1], 0.0),
    };
    Series {
        value,
        touched,
        fresh: ty != Type::Gauge,
    }
}

type Families = BTreeMap<String, Family>;

pub struct Registry {
    pub(super) families: Families,
    max_series: usize,
    ttl: Duration,
    overflowed: u64,
}

fn overflow_labels(labels: &Labels) -> Labels {
    labels
        .iter()
        .map(|(n, _)| (*n, "overflow".to_string()))
        .collect()
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, without ':' for label names.
fn valid_name(name: &str, colon: bool) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':');
    !name.starts_with(|c: char| c.is_ascii_digit()) && !name.is_empty() && name.chars().all(ok)
}

/// The family `name` if it was described as `ty` (else a debug assertion).
fn family<'a>(fams: &'a mut Families, name: &str, ty: Type) -> Option<&'a mut Family> {
    let fam = fams.get_mut(name).filter(|f| f.ty == ty);
    debug_assert!(fam.is_some(), "metric {name} is not described as a {ty:?}");
    fam
}

/// One series' value, for exporters other than the text format.
pub enum Sample<'a> {
    Counter(u64),
    Gauge(f64),
    /// Per-bucket counts (not cumulative; the last above every bound).
    Histogram {
        bounds: &'a [f64],
        counts: &'a [u64],
        sum: f64,
    },
}

impl Registry {
    /// Every family in name order: once with `None` (the family itself,
    /// also when it has no series), then once per series, overflow series
    /// included.
    pub fn visit(&self, mut f: impl FnMut(&str, &str, Type, Option<&Labels>, Sample)) {
        for (name, fam) in &self.families {
            f(name, &fam.help, fam.ty, None, Sample::Gauge(0.0));
            let overflow = fam.overflow.iter().map(|(l, s)| (l, s));
            for (labels, s) in fam.series.iter().chain(overflow) {
                let sample = match &s.value {
                    Value::Counter(c) => Sample::Counter(*c),
                    Value::Gauge(g) => Sample::Gauge(*g),
                    Value::Histogram(counts, sum) => Sample::Histogram {
                        bounds: fam.bounds.as_deref().unwrap_or(&[]),
                        counts,
                        sum: *sum,
                    },
                };
                f(name, &fam.help, fam.ty, Some(labels), sample);
            }
        }
    }

    /// `max_series` real series per family, `ttl` for counters and histograms.
    pub fn new(max_series: usize, ttl: Duration) -> Self {
        Registry {
            families: BTreeMap::new(),
            max_series,
            ttl,
            overflowed: 0,
        }
    }

    /// Config reload; see the module doc for how a lowered cap applies.
    pub fn set_limits(&mut self, max_series: usize, ttl: Duration) {
        (self.max_series, self.ttl) = (max_series, ttl);
    }

    /// Declares a family; families render in name order. Counters end in
    /// `_total`. Idempotent (the first help/type stay); an invalid name is a
    /// debug assertion, ignored in release.
    pub fn describe(&mut self, name: &str, help: &str, ty: Type) {
        let ok = valid_name(name, true) && (ty != Type::Counter || name.ends_with("_total"));
        debug_assert!(ok, "bad metric name {name:?} for a {ty:?}");
        if ok && !self.families.contains_key(name) {
            let fam = Family {
                help: help.into(),
                ty,
                bounds: None,
                series: BTreeMap::new(),
                overflow: None,
            };
            self.families.insert(name.into(), fam);
        }
    }

    /// The value of series `labels`: the existing one, a new one while under
    /// the cap, else the family's overflow series.
    fn slot(&mut self, name: &str, ty: Type, labels: &Labels) -> Option<&mut Value> {
        let fam = family(&mut self.families, name, ty)?;
        let label_ok = |(n, _): &(&str, String)| valid_name(n, false) && *n != "le";
        debug_assert!(labels.iter().all(label_ok), "{name}: bad label name");
        let now = Instant::now();
        if !fam.series.contains_key(labels) && fam.series.len() < self.max_series {
            let fresh = new_series(fam.ty, &fam.bounds, now);
            fam.series.insert(labels.clone(), fresh);
        }
        let series = match fam.series.get_mut(labels) {
            Some(s) => s,
            None => {
                self.overflowed += 1;
                let fresh = new_series(fam.ty, &fam.bounds, now);
                let overflow = fam
                    .overflow
                    .get_or_insert_with(|| (overflow_labels(labels), fresh));
                &mut overflow.1
            }
        };
        series.touched = now;
        Some(&mut series.value)
    }

    /// Counter += v. Undescribed names: debug assertion, ignored in release.
    pub fn inc(&mut self, name: &str, labels: &Labels, v: u64) {
        if let Some(Value::Counter(c)) = self.slot(name, Type::Counter, labels) {
            *c = c.saturating_add(v);
        }
    }

    /// Counter set from an absolute total elsewhere; never goes down.
    pub fn set_counter(&mut self, name: &str, labels: &Labels, v: u64) {
        if let Some(Value::Counter(c)) = self.slot(name, Type::Counter, labels) {
            *c = (*c).max(v);
        }
    }

    /// Gauge value for one series.
    pub fn set(&mut self, name: &str, labels: &Labels, v: f64) {
        if let Some(g) = self.slot(name, Type::Gauge, labels) {
            *g = Value::Gauge(v);
        }
    }

    /// Replaces every series of a gauge family (capped; the overflow series
    /// holds the sum of the folded values). Label sets that exist already
    /// keep their real series first, so a listener does not flip between
    /// real and overflow from round to round.
    pub fn replace_gauges(&mut self, name: &str, series: Vec<(Labels, f64)>) {
        let Some(fam) = family(&mut self.families, name, Type::Gauge) else {
            return;
        };
        let touched = Instant::now();
        let gauge = |v| Series {
            value: Value::Gauge(v),
            touched,
            fresh: false,
        };
        let old = std::mem::take(&mut fam.series);
        let (known, new): (Vec<_>, Vec<_>) =
            series.into_iter().partition(|(l, _)| old.contains_key(l));
        let mut overflow: Option<(Labels, f64)> = None;
        for (labels, v) in known.into_iter().chain(new) {
            if fam.series.len() < self.max_series || fam.series.contains_key(&labels) {
                fam.series.insert(labels, gauge(v));
            } else {
                self.overflowed += 1;
                let sum = overflow.get_or_insert_with(|| (overflow_labels(&labels), 0.0));
                sum.1 += v;
            }
        }
        fam.overflow = overflow.map(|(l, v)| (l, gauge(v)));
    }

    /// `bounds`: upper bounds without +Inf, fixed at first use; `counts`: per
    /// bucket (not cumulative), bounds.len() + 1 of them; `sum` adds to _sum.
    /// Bounds or counts that do not fit: debug assertion, ignored in release.
    pub fn observe(
        &mut self,
        name: &str,
        labels: &Labels,
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        let Some(fam) = family(&mut self.families, name, Type::Histogram) else {
            return;
        };
        let ascending = bounds.windows(2).all(|w| w[0] < w[1]);
        let fixed = fam.bounds.get_or_insert_with(|| bounds.to_vec());
        let ok = ascending && fixed == bounds && counts.len() == bounds.len() + 1;
        debug_assert!(
            ok,
            "{name}: bounds not ascending or changed, or bad counts.len()"
        );
        if !ok {
            return;
        }
        if let Some(Value::Histogram(have, s)) = self.slot(name, Type::Histogram, labels) {
            for (h, c) in have.iter_mut().zip(counts) {
                *h = h.saturating_add(*c);
            }
            *s += sum;
        }
    }

    /// Drops counter and histogram series not updated for `ttl` (ttl 0: all).
    pub fn expire(&mut self, now: Instant) {
        let fresh = |s: &Series| now.saturating_duration_since(s.touched) < self.ttl;
        for fam in self.families.values_mut().filter(|f| f.ty != Type::Gauge) {
            fam.series.retain(|_, s| fresh(s));
            fam.overflow = fam.overflow.take().filter(|(_, s)| fresh(s));
        }
    }

    /// Series in all families, overflow series included.
    pub fn series(&self) -> usize {
        let per_family = |f: &Family| f.series.len() + usize::from(f.overflow.is_some());
        self.families.values().map(per_family).sum()
    }

    /// Updates (and replaced gauge values) folded into overflow series so far.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn cap_folds_into_overflow() {
        let mut r = Registry::new(2, Duration::from_secs(60));
        r.describe("x_total", "x", Type::Counter);
        for (i, p) in ["1", "2", "3", "1", "3"].iter().enumerate() {
            r.inc("x_total", &drop_labels(p, "k"), i as u64 + 1);
        }
        assert_eq!((r.series(), r.overflowed()), (3, 2));
        let text = r.render();
        assert!(text.contains("x_total{port=\"overflow\",reason=\"overflow\"} 8\n"));
        let value = |s: &str| s.rsplit(' ').next().unwrap().parse::<u64>().unwrap();
        let sum: u64 = text
            .lines()
            .filter(|s| !s.starts_with('#'))
            .map(value)
            .sum();
        assert_eq!(sum, 1 + 2 + 3 + 4 + 5);

        r.describe("g", "g", Type::Gauge);
        r.replace_gauges("g", ["a", "b", "c", "d"].map(|p| (port(p), 1.5)).into());
        assert!(r.render().contains("g{port=\"overflow\"} 3\n"));
        assert_eq!(r.overflowed(), 4);
        // Label sets seen before keep their real series.
        r.replace_gauges("g", vec![(port("z"), 1.0), (port("b"), 2.0)]);
        let text = r.render();
        assert!(text.contains("gauge\ng{port=\"b\"} 2\ng{port=\"z\"} 1\n# HELP"));
    }

    #[test]
    fn expire_replace_set_counter() {
        let mut r = sample_registry();
        r.expire(Instant::now());
        assert_eq!(r.series(), 5);
        r.expire(Instant::now() + Duration::from_secs(61));
        assert_eq!(r.series(), 2); // gauges stay
        r.set_limits(10, Duration::ZERO);
        r.inc(DROPS, &port("1"), 1);
        r.expire(Instant::now());
        assert_eq!(r.series(), 2);
        r.replace_gauges("tcpq_backlog", vec![]);
        assert_eq!(r.series(), 1);
        assert!(r.render().contains("# TYPE tcpq_backlog gauge\n# HELP"));
        for v in [5, 3, 7, 6] {
            r.set_counter("tcpq_empty_total", &vec![], v);
        }
        assert!(r.render().contains("\ntcpq_empty_total 7\n"));
    }
}
