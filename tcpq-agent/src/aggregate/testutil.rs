//! Test helpers shared by the aggregator's files: listeners, dumps and
//! kernel events as the sources deliver them.

use tcpq_common::EventKind;

use crate::{
    aggregate::NetnsSnapshot,
    model::{ListenerInfo, Pending, Source, Stage},
    source::decode::{decode_event, tests::raw, KernelEvent},
    source::netstat::NetnsState,
    source::sockdiag::DiagSock,
};

pub const NS: u32 = 4026531840;

pub fn sock(inode: u32, drops: u32, rq: u32, wq: u32) -> DiagSock {
    DiagSock {
        family: 2,
        state: 10,
        local: "127.0.0.1".parse().unwrap(),
        lport: 8080,
        rport: 0,
        peer: [0; 16],
        rqueue: rq,
        wqueue: wq,
        uid: 0,
        inode,
        cookie: 0,
        drops: Some(drops),
    }
}

pub fn snap(socks: Vec<DiagSock>, start: u64, baseline: bool) -> NetnsSnapshot {
    NetnsSnapshot {
        netns: NS,
        listeners: socks,
        others: None,
        state: None,
        start_ns: start,
        end_ns: start + 10,
        baseline,
        storm_before: Vec::new(),
        storm_after: Vec::new(),
    }
}

pub fn ack_event(ts: u64, inode: u32, q: u32, lim: u32) -> KernelEvent {
    let mut e = raw(EventKind::ListenOverflowAck);
    e.ts_ns = ts;
    e.netns = NS;
    e.sock_ino = inode;
    e.ack_backlog = q;
    e.max_ack_backlog = lim;
    decode_event(&e).unwrap()
}

/// (event, stage, source, count) per pending line, sorted.
pub fn counts(p: &[Pending]) -> Vec<(&'static str, Option<Stage>, Source, u64)> {
    let mut c: Vec<_> = p
        .iter()
        .map(|p| (p.kind.event_name(), p.kind.stage(), p.source, p.count))
        .collect();
    c.sort();
    c
}

pub fn info(q: u32, lim: u32) -> ListenerInfo {
    ListenerInfo {
        addr: "127.0.0.1".parse().unwrap(),
        port: 8080,
        queue_len: q,
        queue_limit: lim,
    }
}

pub fn state(reqq: u64, cookies: u64, deferred: u64, syncookies: u8) -> NetnsState {
    let mut st = NetnsState::default();
    st.counters.insert("TcpExt.TCPReqQFullDrop".into(), reqq);
    st.counters
        .insert("TcpExt.TCPReqQFullDoCookies".into(), cookies);
    st.counters
        .insert("TcpExt.TCPDeferAcceptDrop".into(), deferred);
    st.sysctls.syncookies = Some(syncookies);
    st.sysctls.max_syn_backlog = Some(8);
    st
}
