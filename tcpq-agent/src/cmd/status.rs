//! `tcpq-agent status`: a one-shot picture of every TCP listener on the
//! host — queue, limit, drops so far, SYN queue, CLOSE_WAIT, owner — with a
//! verdict built from that and the namespace's real settings. Needs no
//! kernel programs: sock_diag, /proc and sysctls only.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::Write,
};

use anyhow::{Context, Result};

use crate::{
    export::{self, Format},
    model::{Fact, Kind, ListenerInfo, Next, Stage},
    owner::resolve::{self, Resolver},
    source::netns,
    source::netstat::NetnsState,
    source::poll,
    source::sockdiag::{self, DiagSock},
    verdict::status::{Row, Snapshot},
    verdict::{
        self,
        evidence::{self, ListenerFacts},
    },
};

/// Builds the rows of one namespace from one dump. Pure, apart from the
/// owner lookups passed in.
pub fn rows(
    netns: u32,
    listeners: &[DiagSock],
    others: &[DiagSock],
    st: &NetnsState,
    owner: &dyn Fn(u32) -> Option<resolve::Owner>,
) -> Vec<Row> {
    let mut syn: HashMap<u16, u32> = HashMap::new();
    let mut cw: HashMap<u16, u32> = HashMap::new();
    for o in others {
        match o.state {
            sockdiag::STATE_SYN_RECV => *syn.entry(o.lport).or_default() += 1,
            sockdiag::STATE_CLOSE_WAIT => *cw.entry(o.lport).or_default() += 1,
            _ => {}
        }
    }
    let settings = st.sysctls.clone();
    listeners
        .iter()
        .map(|l| {
            let owner = owner(l.inode);
            let (open_fds, fd_limit) = match &owner {
                Some(o) => (
                    resolve::open_fds(o.pid).map(|n| n as u32),
                    resolve::fd_limit(o.pid),
                ),
                None => (None, None),
            };
            let mut row = Row {
                netns,
                sock: l.clone(),
                owner,
                syn_queue: syn.get(&l.lport).copied().unwrap_or(0),
                close_wait: cw.get(&l.lport).copied().unwrap_or(0),
                settings: settings.clone(),
                open_fds,
                fd_limit,
                reqq_drops: st.counter("TcpExt.TCPReqQFullDrop"),
                reqq_cookies: st.counter("TcpExt.TCPReqQFullDoCookies"),
                verdict: None,
            };
            row.verdict = listener_verdict(&row);
            row
        })
        .collect()
}

/// The verdict of a row: what a one-shot look can say, in the words of the
/// report lines (the same facts give `trace` the same verdict): the queues
/// now, and the drops the listener has counted since it was created
/// (`sk_drops`, at the SYN stage as sock_diag counts them without hooks).
fn listener_verdict(r: &Row) -> Option<verdict::Verdict> {
    let info = ListenerInfo {
        addr: r.sock.local,
        port: r.sock.lport,
        queue_len: r.sock.rqueue,
        queue_limit: r.sock.wqueue,
    };
    let full = info.queue_full();
    let drops = r.sock.drops.unwrap_or(0) as u64;
    let syn_full = r.syn_queue > r.sock.wqueue;
    let mut counts = Vec::new();
    if full {
        counts.push((
            Kind::ListenOverflow(Stage::Syn, Next::Unknown),
            drops.max(1),
        ));
    }
    // Per-namespace counters since the namespace was created: only said of
    // a listener whose SYN queue is over its limit now.
    if syn_full && !full {
        let kind = Kind::SynQueueDrop {
            reason: "syn_queue_full",
        };
        counts.push((kind, r.reqq_drops));
    }
    if syn_full {
        counts.push((Kind::SyncookiesSent, r.reqq_cookies));
    }
    counts.push((Kind::CloseWait, u64::from(r.close_wait)));
    let mut facts = Vec::new();
    facts.extend(r.open_fds.map(|n| Fact::OpenFds(n.into())));
    facts.extend(r.fd_limit.map(Fact::FdLimit));
    evidence::listener_verdict(&ListenerFacts {
        info: &info,
        owner: r.owner.as_ref(),
        settings: &r.settings,
        counts: &counts,
        facts: &facts,
        syn_queue_len: r.syn_queue,
    })
}

fn endpoint(s: &DiagSock) -> String {
    export::endpoint(s.local, s.lport)
}

pub fn text_table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<11} {:<28} {:<24} {:>6} {:>6} {:>9} {:>8} {:>6} {:>10}\n",
        "NETNS",
        "LISTENER",
        "PROCESS",
        "QUEUE",
        "LIMIT",
        "SOMAXCONN",
        "DROPS",
        "SYN-Q",
        "CLOSE-WAIT"
    );
    for r in rows {
        let owner = r
            .owner
            .as_ref()
            .map(|o| format!("{} ({})", export::text_safe(&o.name), o.pid))
            .unwrap_or_else(|| "?".into());
        out += &format!(
            "{:<11} {:<28} {:<24} {:>6} {:>6} {:>9} {:>8} {:>6} {:>10}\n",
            r.netns,
            endpoint(&r.sock),
            owner,
            r.sock.rqueue,
            r.sock.wqueue,
            r.settings
                .somaxconn
                .map_or("?".to_string(), |v| v.to_string()),
            r.sock.drops.map_or("?".to_string(), |v| v.to_string()),
            r.syn_queue,
            r.close_wait
        );
        if let Some(v) = &r.verdict {
            let (cause, remedy) = (export::text_safe(&v.cause), export::text_safe(&v.remedy));
            out += &format!("    cause:  {cause}\n    remedy: {remedy}\n");
        }
    }
    out
}

/// The outgoing-port verdict of a namespace, if it has trouble.
pub fn ports_verdict(st: &NetnsState) -> Option<verdict::Verdict> {
    // Without the TIME_WAIT count a one-shot look has nothing to say.
    st.time_wait?;
    verdict::ports(&evidence::ports(0, Some(st)))
}

/// SO_REUSEPORT groups among the listeners: members' inodes.
fn reuseport_groups(snaps: &[crate::aggregate::NetnsSnapshot]) -> Vec<Vec<u32>> {
    let mut groups: BTreeMap<(u32, std::net::IpAddr, u16), Vec<u32>> = BTreeMap::new();
    for s in snaps {
        for l in &s.listeners {
            groups
                .entry((s.netns, l.local, l.lport))
                .or_default()
                .push(l.inode);
        }
    }
    groups.into_values().filter(|g| g.len() > 1).collect()
}

pub fn collect(port: Option<u16>) -> Result<Snapshot> {
    let home = File::open("/proc/thread-self/ns/net").context("opening our network namespace")?;
    let home_ino = netns::current()?;
    let snaps = poll::round(
        &home,
        home_ino,
        true,
        true,
        true,
        &mut poll::Memory::default(),
        None,
    )
    .snaps;
    let mut resolver = Resolver::new(std::time::Duration::ZERO);
    resolver.set_groups(reuseport_groups(&snaps));
    resolver.learn(
        snaps
            .iter()
            .flat_map(|s| s.listeners.iter().map(|l| l.inode)),
    );
    let mut all = Vec::new();
    let mut ports: BTreeMap<u32, verdict::Verdict> = BTreeMap::new();
    for s in &snaps {
        let Some(st) = &s.state else { continue };
        let listeners: Vec<DiagSock> = s
            .listeners
            .iter()
            .filter(|l| port.is_none_or(|p| p == l.lport))
            .cloned()
            .collect();
        let others = s.others.as_deref().unwrap_or(&[]);
        all.extend(rows(s.netns, &listeners, others, st, &|i| {
            resolver.get(i).cloned()
        }));
        if let Some(v) = ports_verdict(st) {
            ports.insert(s.netns, v);
        }
    }
    all.sort_by_key(|r| (r.netns, r.sock.lport, r.sock.inode));
    Ok(Snapshot {
        at: std::time::SystemTime::now(),
        rows: all,
        ports,
    })
}

pub fn run(format: Format, port: Option<u16>) -> Result<()> {
    let snap = collect(port)?;
    let mut out = std::io::stdout().lock();
    let written = (|| -> std::io::Result<()> {
        match format {
            Format::Json => {
                for l in export::line::status(&snap, "listener") {
                    writeln!(out, "{}", export::json::render(&l))?;
                }
            }
            Format::Text => {
                write!(out, "{}", text_table(&snap.rows))?;
                for (ns, v) in &snap.ports {
                    writeln!(
                        out,
                        "netns {ns} local ports:\n    cause:  {}\n    remedy: {}",
                        export::text_safe(&v.cause),
                        export::text_safe(&v.remedy)
                    )?;
                }
            }
        }
        out.flush()
    })();
    // "output: No space left on device", as `trace` says it.
    written.map_err(|e| anyhow::anyhow!("output: {}", crate::engine::os_reason(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::json::status_row as json_row;
    use crate::source::netstat::Sysctls;

    fn sock(state: u8, port: u16, rq: u32, wq: u32, drops: u32) -> DiagSock {
        DiagSock {
            family: 2,
            state,
            local: "0.0.0.0".parse().unwrap(),
            lport: port,
            rport: 0,
            peer: [0; 16],
            rqueue: rq,
            wqueue: wq,
            uid: 0,
            inode: 77,
            cookie: 1,
            drops: Some(drops),
        }
    }

    fn state(somaxconn: u32, syncookies: u8) -> NetnsState {
        NetnsState {
            sysctls: Sysctls {
                somaxconn: Some(somaxconn),
                syncookies: Some(syncookies),
                max_syn_backlog: Some(128),
                abort_on_overflow: Some(0),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_same_listener_facts_give_status_and_trace_the_same_verdict() {
        use crate::model::{ListenerKey, Pending, Source};
        let owner = resolve::Owner {
            pid: 9,
            name: "nginx".into(),
            ..Default::default()
        };
        let st = state(128, 1);
        let row = |sock: DiagSock, close_wait| Row {
            netns: 5,
            sock,
            owner: Some(owner.clone()),
            syn_queue: 0,
            close_wait,
            settings: st.sysctls.clone(),
            open_fds: None,
            fd_limit: None,
            reqq_drops: 0,
            reqq_cookies: 0,
            verdict: None,
        };
        let line = |s: &DiagSock, kind, count| Pending {
            kind,
            source: Source::SockDiag,
            key: Some(ListenerKey {
                netns: 5,
                inode: s.inode,
            }),
            netns: Some(5),
            info: ListenerInfo {
                addr: s.local,
                port: s.lport,
                queue_len: s.rqueue,
                queue_limit: s.wqueue,
            },
            count,
            peer: None,
            pid: None,
            inode: None,
            attrs: Vec::new(),
        };
        // A full queue that has dropped 40 SYNs; 7 accepted connections
        // left in CLOSE_WAIT.
        let overflow = Kind::ListenOverflow(Stage::Syn, Next::Unknown);
        let cases = [
            (sock(10, 8080, 129, 128, 40), 0, overflow, 40),
            (sock(10, 8080, 0, 128, 0), 7, Kind::CloseWait, 7),
        ];
        for (s, close_wait, kind, n) in cases {
            let by_status = listener_verdict(&row(s.clone(), close_wait));
            let by_trace =
                crate::verdict::explain::line(&line(&s, kind, n), Some(&owner), Some(&st));
            assert!(by_status.is_some(), "{s:?}");
            assert_eq!(by_status, by_trace);
        }
    }

    #[test]
    fn a_full_queue_capped_by_somaxconn_gets_a_verdict() {
        let l = [sock(10, 8080, 129, 128, 40)];
        let owner = |_| {
            Some(resolve::Owner {
                pid: 9,
                name: "nginx".into(),
                ..Default::default()
            })
        };
        let r = rows(5, &l, &[], &state(128, 1), &owner);
        assert_eq!(r.len(), 1);
        let v = r[0].verdict.as_ref().expect("a verdict");
        assert!(v.cause.contains("somaxconn=128"), "{}", v.cause);
        let j = json_row(&r[0]);
        assert_eq!(j["queue.length"], 129);
        assert_eq!(j["queue.limit_is_somaxconn"], true);
        assert_eq!(j["drops"], 40);
        assert_eq!(j["process.executable.name"], "nginx");
        assert!(j["verdict.remedy"].is_string());
    }

    #[test]
    fn syn_queue_and_close_wait_are_counted_per_port() {
        let l = [sock(10, 8080, 0, 16, 0), sock(10, 9090, 0, 16, 0)];
        let others = [
            sock(sockdiag::STATE_SYN_RECV, 8080, 0, 0, 0),
            sock(sockdiag::STATE_SYN_RECV, 8080, 0, 0, 0),
            sock(sockdiag::STATE_CLOSE_WAIT, 9090, 0, 0, 0),
        ];
        let r = rows(5, &l, &others, &state(4096, 1), &|_| None);
        assert_eq!((r[0].syn_queue, r[0].close_wait), (2, 0));
        assert_eq!((r[1].syn_queue, r[1].close_wait), (0, 1));
        assert!(r[0].verdict.is_none());
        assert!(r[1].verdict.as_ref().unwrap().cause.contains("CLOSE_WAIT"));
        let t = text_table(&r);
        assert!(t.lines().next().unwrap().starts_with("NETNS"));
        assert!(t.contains("0.0.0.0:9090"));
    }

    #[test]
    fn a_forged_owner_name_stays_in_its_row() {
        let l = [sock(10, 8080, 129, 128, 40)];
        let owner = |_| {
            Some(resolve::Owner {
                pid: 9,
                name: "x\n<0>1 F]\"\\".into(),
                ..Default::default()
            })
        };
        let r = rows(5, &l, &[], &state(128, 1), &owner);
        let t = text_table(&r);
        // Header, the row, its cause and remedy: nothing more.
        assert_eq!(t.lines().count(), 4, "{t}");
        assert!(t.contains(r#"x\n<0>1 F]"\ (9)"#), "{t}");
        assert!(!t.chars().any(|c| c != '\n' && c.is_control()));
        let j = json_row(&r[0]);
        assert_eq!(j["process.executable.name"], "x\n<0>1 F]\"\\");
    }

    #[test]
    fn a_healthy_listener_has_no_verdict() {
        let r = rows(5, &[sock(10, 80, 0, 511, 0)], &[], &state(4096, 1), &|_| {
            None
        });
        assert!(r[0].verdict.is_none());
        assert!(json_row(&r[0]).get("verdict.cause").is_none());
    }
}
