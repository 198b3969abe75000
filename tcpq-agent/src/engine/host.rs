//! The host's processes as the pipeline asks about them: who a pid is,
//! who owns a socket, what a process holds. Live, the answers come from
//! `/proc` (the [`Resolver`]) and the kernel's names; a recording keeps
//! each answer in the order asked; a replay gives them back in that order.

use std::collections::{HashSet, VecDeque};

use anyhow::{bail, Result};

use crate::{
    engine::record::Answer,
    owner::resolve::{self, Owner, Resolver},
};

/// What the pipeline asks. Every method that answers is recorded.
pub trait Host {
    /// Everything known about a process.
    fn owner(&mut self, pid: u32) -> Owner;
    /// The owner of a socket, as learned so far.
    fn socket_owner(&mut self, inode: u32) -> Option<Owner>;
    /// Whether a socket is one member of an SO_REUSEPORT group.
    fn in_group(&mut self, inode: u32) -> bool;
    /// The socket inodes a process holds.
    fn sockets_of(&mut self, pid: u32) -> HashSet<u32>;
    /// A process's open descriptors and its `RLIMIT_NOFILE`.
    fn fds(&mut self, pid: u32) -> (Option<usize>, Option<u64>);
    /// Whether a process still exists.
    fn alive(&mut self, pid: u32) -> bool;

    /// Not answers: what the live host does to learn owners in time.
    fn seed(&mut self, _inode: u32, _pid: u32) {}
    fn learn(&mut self, _inodes: Vec<u32>, _groups: Vec<Vec<u32>>) {}
    fn learn_now(&mut self, _inodes: Vec<u32>) {}
    fn retain(&mut self, _keep: &dyn Fn(u32) -> bool) {}
    fn resolver(&self) -> &Resolver;
}

/// `/proc`, with the names the kernel kept for processes already gone.
pub struct ProcHost {
    pub resolver: Resolver,
    /// tgid → `comm`, taken by the kernel in the process's own context.
    pub comms: Option<aya::maps::HashMap<aya::maps::MapData, u32, [u8; 16]>>,
    /// The answers given since the last step, while recording.
    pub log: Option<Vec<Answer>>,
}

impl ProcHost {
    fn keep(&mut self, a: Answer) {
        if let Some(log) = self.log.as_mut() {
            log.push(a);
        }
    }

    /// The answers of the step that just ended (empty when not recording).
    pub fn take_log(&mut self) -> Vec<Answer> {
        self.log.as_mut().map(std::mem::take).unwrap_or_default()
    }
}

impl Host for ProcHost {
    fn owner(&mut self, pid: u32) -> Owner {
        let mut o = Owner::of(pid);
        if o.name == "?" {
            let comm = self.comms.as_ref().and_then(|m| m.get(&pid, 0).ok());
            if let Some(name) = comm.as_ref().and_then(|c| resolve::comm_name(c)) {
                o.name = name;
            }
        }
        self.keep(Answer::Owner(o.clone()));
        o
    }

    fn socket_owner(&mut self, inode: u32) -> Option<Owner> {
        let o = self.resolver.get(inode).cloned();
        self.keep(Answer::SocketOwner(o.clone()));
        o
    }

    fn in_group(&mut self, inode: u32) -> bool {
        let g = self.resolver.in_group(inode);
        self.keep(Answer::InGroup(g));
        g
    }

    fn sockets_of(&mut self, pid: u32) -> HashSet<u32> {
        let s = resolve::sockets_of(pid);
        if self.log.is_some() {
            let mut v: Vec<u32> = s.iter().copied().collect();
            v.sort_unstable();
            self.keep(Answer::Sockets(v));
        }
        s
    }

    fn fds(&mut self, pid: u32) -> (Option<usize>, Option<u64>) {
        let f = (resolve::open_fds(pid), resolve::fd_limit(pid));
        self.keep(Answer::Fds(f.0, f.1));
        f
    }

    fn alive(&mut self, pid: u32) -> bool {
        let a = std::path::Path::new(&format!("/proc/{pid}")).exists();
        self.keep(Answer::Alive(a));
        a
    }

    fn seed(&mut self, inode: u32, pid: u32) {
        self.resolver.seed(inode, pid);
    }

    fn learn(&mut self, inodes: Vec<u32>, groups: Vec<Vec<u32>>) {
        self.resolver.set_groups(groups);
        self.resolver.learn(inodes);
    }

    fn learn_now(&mut self, inodes: Vec<u32>) {
        self.resolver.learn_now(inodes);
    }

    fn retain(&mut self, keep: &dyn Fn(u32) -> bool) {
        self.resolver.retain(keep);
    }

    fn resolver(&self) -> &Resolver {
        &self.resolver
    }
}

/// A recording's answers, given back in order.
pub struct Replayed {
    answers: VecDeque<Answer>,
    /// Questions that found another answer kind, or none: the recording
    /// does not match this agent's pipeline.
    pub mismatches: u64,
    /// The first such question.
    pub first_mismatch: Option<&'static str>,
    resolver: Resolver,
}

impl Default for Replayed {
    fn default() -> Self {
        Replayed {
            answers: VecDeque::new(),
            mismatches: 0,
            first_mismatch: None,
            resolver: Resolver::new(std::time::Duration::MAX),
        }
    }
}

impl Replayed {
    /// The answers of the next step.
    pub fn give(&mut self, answers: Vec<Answer>) -> Result<()> {
        if !self.answers.is_empty() {
            bail!(
                "{} recorded answers were never asked for (first: {})",
                self.answers.len(),
                self.answers[0].what()
            );
        }
        self.answers = answers.into();
        Ok(())
    }

    fn next(&mut self, what: &'static str) -> Option<Answer> {
        match self.answers.front() {
            Some(a) if a.what() == what => self.answers.pop_front(),
            _ => {
                self.mismatches += 1;
                self.first_mismatch.get_or_insert(what);
                None
            }
        }
    }

    /// Checks every answer of the last step was asked for.
    pub fn finish(&mut self) -> Result<()> {
        self.give(Vec::new())
    }
}

impl Host for Replayed {
    fn owner(&mut self, pid: u32) -> Owner {
        match self.next("owner") {
            Some(Answer::Owner(o)) => o,
            _ => Owner {
                pid,
                name: "?".into(),
                ..Owner::default()
            },
        }
    }

    fn socket_owner(&mut self, _inode: u32) -> Option<Owner> {
        match self.next("socket_owner") {
            Some(Answer::SocketOwner(o)) => o,
            _ => None,
        }
    }

    fn in_group(&mut self, _inode: u32) -> bool {
        matches!(self.next("in_group"), Some(Answer::InGroup(true)))
    }

    fn sockets_of(&mut self, _pid: u32) -> HashSet<u32> {
        match self.next("sockets") {
            Some(Answer::Sockets(v)) => v.into_iter().collect(),
            _ => HashSet::new(),
        }
    }

    fn fds(&mut self, _pid: u32) -> (Option<usize>, Option<u64>) {
        match self.next("fds") {
            Some(Answer::Fds(a, b)) => (a, b),
            _ => (None, None),
        }
    }

    fn alive(&mut self, _pid: u32) -> bool {
        !matches!(self.next("alive"), Some(Answer::Alive(false)))
    }

    fn resolver(&self) -> &Resolver {
        &self.resolver
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_answers_in_order_and_counts_what_does_not_match() {
        let mut h = Replayed::default();
        h.give(vec![Answer::Alive(false), Answer::Fds(Some(3), Some(8))])
            .unwrap();
        assert!(!h.alive(1));
        assert_eq!(h.fds(1), (Some(3), Some(8)));
        assert_eq!(h.mismatches, 0);
        assert_eq!(h.socket_owner(5), None);
        assert_eq!(h.mismatches, 1);
        h.give(vec![Answer::InGroup(true)]).unwrap();
        let e = h.finish().unwrap_err();
        assert!(
            e.to_string().contains("never asked for (first: in_group)"),
            "{e}"
        );
    }
}
