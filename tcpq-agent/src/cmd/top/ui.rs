//! Drawing one frame: header, listener table, the selected row's verdict
//! and its namespace's sysctls, the client-side panel, the key help.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row as TRow, Table, TableState, Wrap},
    Frame as TFrame,
};

use super::{
    arrange::SortBy,
    frame::{Frame, Row},
};

/// What the keys changed.
#[derive(Debug, Clone, Default)]
pub struct Screen {
    pub sort: Option<SortBy>,
    pub filter: String,
    /// `/` pressed: typing a filter.
    pub editing: bool,
    pub paused: bool,
    /// The listener picked with ↑/↓ (kept across re-sorts); None = the
    /// top row.
    pub selected: Option<crate::model::ListenerKey>,
    pub table: TableState,
    /// The agent's last message (stderr).
    pub message: String,
}

fn bar(fill: f64, width: usize) -> String {
    let n = (fill * width as f64).round() as usize;
    let n = n.min(width);
    format!("{}{}", "█".repeat(n), "·".repeat(width - n))
}

fn rate(v: f64) -> String {
    if v <= 0.0 {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn total(v: f64) -> String {
    if v <= 0.0 {
        "-".into()
    } else {
        format!("{v:.0}")
    }
}

fn trouble_style(r: &Row) -> Style {
    if r.rates.trouble() > 0.0 {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else if r.fill() >= 0.25 || r.close_wait > 0 || r.totals.trouble() > 0.0 {
        Style::default().fg(Color::Yellow)
    } else {
        Style::default()
    }
}

pub fn draw(f: &mut TFrame, frame: &Frame, rows: &[Row], s: &mut Screen) {
    let [head, table, detail, clients, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(6),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(1),
    ])
    .areas(f.area());
    header(f, head, frame, rows.len(), s);
    listeners(f, table, rows, s);
    let selected = s
        .table
        .selected()
        .and_then(|i| rows.get(i))
        .or(rows.first());
    verdict(f, detail, frame, selected);
    client_panel(f, clients, frame);
    let keys = if s.editing {
        format!(
            " filter (port, process or container): {}█   Enter apply · Esc clear",
            s.filter
        )
    } else {
        " ↑/↓ select · s sort · / filter · p pause · q quit".to_string()
    };
    f.render_widget(
        Paragraph::new(keys).style(Style::default().add_modifier(Modifier::REVERSED)),
        help,
    );
}

fn header(f: &mut TFrame, area: Rect, frame: &Frame, shown: usize, s: &Screen) {
    let at = frame
        .at
        .map(crate::export::timestamp)
        .unwrap_or_else(|| "waiting for the first reading".into());
    let h = &frame.health;
    let mut spans = vec![
        Span::styled("tcpq top", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "  {at}  listeners {shown}/{}  sort: {}",
            frame.rows.len(),
            s.sort.unwrap_or(SortBy::Trouble).name()
        )),
    ];
    if !s.filter.is_empty() {
        spans.push(Span::raw(format!("  filter: {}", s.filter)));
    }
    if s.paused {
        spans.push(Span::styled(
            "  PAUSED",
            Style::default().fg(Color::Black).bg(Color::Yellow),
        ));
    }
    spans.push(Span::raw(format!(
        "  events {} lost {}  ",
        h.received, h.lost
    )));
    spans.push(Span::styled(
        s.message.clone(),
        Style::default().fg(Color::DarkGray),
    ));
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// Column titles (the test reads them).
pub const COLUMNS: [&str; 14] = [
    "LISTENER",
    "NETNS",
    "QUEUE",
    "FILL",
    "OVF-SYN/s",
    "OVF-ACK/s",
    "OVF",
    "SYNQ/s",
    "COOKIE/s",
    "RST/s",
    "ACCERR/s",
    "P99ms",
    "CLOSE_WAIT",
    "PROCESS",
];

fn listeners(f: &mut TFrame, area: Rect, rows: &[Row], s: &mut Screen) {
    let header = TRow::new(
        COLUMNS
            .iter()
            .copied()
            .chain(std::iter::once("CONTAINER"))
            .map(|c| Cell::from(c).style(Style::default().add_modifier(Modifier::BOLD))),
    );
    let body = rows.iter().map(|r| {
        let cw = match (r.close_wait, r.close_wait_growth) {
            (0, 0) => "-".to_string(),
            (n, 0) => n.to_string(),
            (n, g) => format!("{n} {g:+}/m"),
        };
        let owner = match (&r.process, r.pid) {
            (Some(n), Some(p)) => format!("{n} ({p})"),
            _ => "?".into(),
        };
        let container: String = r
            .container
            .as_deref()
            .map(|c| c.chars().take(12).collect())
            .unwrap_or_default();
        TRow::new(vec![
            Cell::from(r.endpoint.clone()),
            Cell::from(r.key.netns.to_string()),
            Cell::from(format!("{}/{}", r.queue_len, r.queue_limit)),
            Cell::from(bar(r.fill(), 8)),
            Cell::from(rate(r.rates.overflow_syn)),
            Cell::from(rate(r.rates.overflow_ack)),
            Cell::from(total(r.totals.overflow_syn + r.totals.overflow_ack)),
            Cell::from(rate(r.rates.syn_drops)),
            Cell::from(rate(r.rates.cookies)),
            Cell::from(rate(r.rates.resets)),
            Cell::from(rate(r.rates.accept_errors)),
            Cell::from(r.p99_ms.map_or("-".into(), |v| format!("{v:.0}"))),
            Cell::from(cw),
            Cell::from(owner),
            Cell::from(container),
        ])
        .style(trouble_style(r))
    });
    let widths = [
        Constraint::Length(21),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(10),
        Constraint::Min(19),
        Constraint::Length(12),
    ];
    let t = Table::new(body, widths)
        .header(header)
        .block(Block::default().borders(Borders::TOP).title(format!(
            " listeners · rates per second over the last {} s · OVF = overflows since start ",
            super::frame::RATE_WINDOW.as_secs()
        )))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶");
    f.render_stateful_widget(t, area, &mut s.table);
}

fn verdict(f: &mut TFrame, area: Rect, frame: &Frame, row: Option<&Row>) {
    let mut lines = Vec::new();
    let title = match row {
        Some(r) => format!(" {} (netns {}) ", r.endpoint, r.key.netns),
        None => " no listener ".into(),
    };
    if let Some(r) = row {
        match &r.verdict {
            Some(v) => {
                lines.push(Line::from(vec![
                    Span::styled("cause:  ", Style::default().add_modifier(Modifier::BOLD)),
                    Span::raw(v.cause.clone()),
                ]));
                lines.push(Line::from(vec![
                    Span::styled("remedy: ", Style::default().add_modifier(Modifier::BOLD)),
                    Span::raw(v.remedy.clone()),
                ]));
            }
            None => lines.push(Line::from(
                "healthy: nothing dropped, queue below a quarter",
            )),
        }
        if let Some(st) = frame.sysctls.get(&r.key.netns) {
            let v = |o: Option<u32>| o.map_or("?".into(), |v| v.to_string());
            let v8 = |o: Option<u8>| o.map_or("?".into(), |v| v.to_string());
            lines.push(Line::from(Span::styled(
                format!(
                    "net.core.somaxconn={} tcp_max_syn_backlog={} tcp_syncookies={} tcp_abort_on_overflow={} tcp_synack_retries={} ip_local_port_range={} tcp_tw_reuse={}",
                    v(st.somaxconn),
                    v(st.max_syn_backlog),
                    v8(st.syncookies),
                    v8(st.abort_on_overflow),
                    v(st.synack_retries),
                    st.port_range.map_or("?".into(), |(a, b)| format!("{a}-{b}")),
                    v8(st.tw_reuse),
                ),
                Style::default().fg(Color::Cyan),
            )));
        }
    }
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::TOP).title(title)),
        area,
    );
}

fn client_panel(f: &mut TFrame, area: Rect, frame: &Frame) {
    let mut lines = Vec::new();
    for c in frame.clients.iter().take(2) {
        let errs: Vec<String> = c
            .errors
            .iter()
            .map(|(e, n, r)| format!("{e} {n} ({}/s)", rate(*r)))
            .collect();
        lines.push(Line::from(format!(
            "{} ({}) netns {}: connect() {} · last to {}",
            c.process,
            c.pid,
            c.netns,
            errs.join(", "),
            c.last_destination
        )));
    }
    let mut ports: Vec<_> = frame.ports.iter().collect();
    ports.sort_by_key(|p| (p.verdict.is_none(), p.left(), p.netns));
    for p in ports.iter().take(4usize.saturating_sub(lines.len())) {
        let range = p.range.map_or("?".into(), |(a, b)| format!("{a}-{b}"));
        // Open connections hold ports too: what TIME_WAIT leaves is an
        // upper bound.
        let mut line = format!(
            "netns {}: local ports {range} ({} ports): {} in TIME_WAIT, at most {} free",
            p.netns,
            p.size(),
            p.time_wait,
            p.left()
        );
        let style = match &p.verdict {
            Some(v) => {
                line += &format!(" — {}", v.remedy);
                Style::default().fg(Color::Red)
            }
            None => Style::default(),
        };
        lines.push(Line::from(Span::styled(line, style)));
    }
    if lines.is_empty() {
        lines.push(Line::from("no connect() errors"));
    }
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::TOP)
                .title(" clients: connect() errors, local-port headroom "),
        ),
        area,
    );
}
