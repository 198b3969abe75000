//! Sorting and filtering the listener rows: pure functions of a frame,
//! for the screen.

use super::frame::Row;

/// How rows are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    /// Drops, resets and errors per second, then queue fill, then totals.
    Trouble,
    Queue,
    Total,
    Port,
    Process,
}

impl SortBy {
    pub fn next(self) -> SortBy {
        match self {
            SortBy::Trouble => SortBy::Queue,
            SortBy::Queue => SortBy::Total,
            SortBy::Total => SortBy::Port,
            SortBy::Port => SortBy::Process,
            SortBy::Process => SortBy::Trouble,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SortBy::Trouble => "trouble",
            SortBy::Queue => "queue fill",
            SortBy::Total => "total drops",
            SortBy::Port => "port",
            SortBy::Process => "process",
        }
    }
}

/// Rows that pass `filter` (a port number, or part of a process name or
/// a container id; empty = all), in `sort` order.
pub fn arrange(rows: &[Row], sort: SortBy, filter: &str) -> Vec<Row> {
    let f = filter.trim().to_ascii_lowercase();
    let mut out: Vec<Row> = rows
        .iter()
        .filter(|r| {
            if f.is_empty() {
                return true;
            }
            if let Ok(port) = f.parse::<u16>() {
                if r.port == port {
                    return true;
                }
            }
            r.process
                .as_deref()
                .is_some_and(|p| p.to_ascii_lowercase().contains(&f))
                || r.container.as_deref().is_some_and(|c| c.starts_with(&f))
        })
        .cloned()
        .collect();
    let cmp_f = |a: f64, b: f64| b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal);
    out.sort_by(|a, b| {
        let tie = a.port.cmp(&b.port).then(a.key.cmp(&b.key));
        match sort {
            SortBy::Trouble => cmp_f(a.rates.trouble(), b.rates.trouble())
                .then(cmp_f(a.fill(), b.fill()))
                .then(cmp_f(a.totals.trouble(), b.totals.trouble()))
                .then(b.close_wait.cmp(&a.close_wait))
                .then(tie),
            SortBy::Queue => cmp_f(a.fill(), b.fill()).then(tie),
            SortBy::Total => cmp_f(a.totals.trouble(), b.totals.trouble()).then(tie),
            SortBy::Port => tie,
            SortBy::Process => a.process.cmp(&b.process).then(tie),
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::top::frame::tests::row;

    #[test]
    fn trouble_first_then_fill_then_port() {
        let rows = vec![
            row(80, 0.0, 0.0, (0, 128), "nginx"),
            row(6379, 0.0, 9.0, (2, 1), "redis-server"),
            row(9000, 4.0, 4.0, (0, 4), "myserver"),
        ];
        let ports: Vec<u16> = arrange(&rows, SortBy::Trouble, "")
            .iter()
            .map(|r| r.port)
            .collect();
        assert_eq!(ports, [9000, 6379, 80]);
        let ports: Vec<u16> = arrange(&rows, SortBy::Port, "")
            .iter()
            .map(|r| r.port)
            .collect();
        assert_eq!(ports, [80, 6379, 9000]);
        let ports: Vec<u16> = arrange(&rows, SortBy::Total, "")
            .iter()
            .map(|r| r.port)
            .collect();
        assert_eq!(ports, [6379, 9000, 80]);
    }

    #[test]
    fn filter_by_port_process_or_container() {
        let rows = vec![
            row(80, 0.0, 0.0, (0, 128), "nginx"),
            row(6379, 0.0, 0.0, (0, 1), "redis-server"),
        ];
        let only = |f: &str| -> Vec<u16> {
            arrange(&rows, SortBy::Port, f)
                .iter()
                .map(|r| r.port)
                .collect()
        };
        assert_eq!(only("6379"), [6379]);
        assert_eq!(only("REDIS"), [6379]);
        assert_eq!(only("abcd"), [80, 6379]);
        assert_eq!(only("nothing"), Vec::<u16>::new());
        assert_eq!(only(""), [80, 6379]);
    }
}
