//! The kernel maps the engine reads after loading: each reading summed
//! over CPUs and handed on as plain typed values, and the few writes the
//! engine makes (latency ports, deleting keys of processes gone). Thin:
//! the logic that decides lives in the pure units beside it.

use anyhow::{anyhow, Result};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap};
use tcpq_common::{latency::LatencyHist, names::map, stats, AcceptStats};

use crate::{
    engine::latency_ports::Changes,
    export::sink::{MapCounts, MapLosses},
    kernel::{caps::Kfunc, load::Loaded, Tp},
    source::{accepts, latency},
};

/// (tgid << 32 | errno) → failures, per CPU (`ACCEPT_ERRORS`).
type AcceptErrorMap = PerCpuHashMap<MapData, u64, u64>;
type LatencyMap = PerCpuHashMap<MapData, u64, LatencyHist>;
/// The ports measured (`LATENCY_PORTS`) and the global switch (`LATENCY_ON`).
type PortMaps = (BpfHashMap<MapData, u64, u8>, Array<MapData, u32>);

pub struct Maps {
    pub stats: PerCpuArray<MapData, u64>,
    /// Per-listener accept counts, when `inet_csk_accept` is hooked.
    accepts: Option<PerCpuHashMap<MapData, u64, AcceptStats>>,
    /// accept() failures per (tgid, errno), with the syscall hooks.
    accept_errors: Option<AcceptErrorMap>,
    /// Accept-latency histograms per (netns, port).
    latency: Option<LatencyMap>,
    /// Which ports the kernel measures, and the global switch.
    latency_ports: Option<PortMaps>,
    /// Keys in `ACCEPTS` and `ACCEPT_LATENCY` at the last read, and
    /// `ACCEPT_LATENCY` keys removed here: with the kernel's counts of keys
    /// created, what the LRU maps evicted.
    accepts_present: u64,
    latency_present: u64,
    latency_removed: u64,
}

fn take(loaded: &mut Loaded, name: &str) -> Result<aya::maps::Map> {
    loaded
        .ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("{name} map missing"))
}

impl Maps {
    pub fn take(loaded: &mut Loaded) -> Result<Maps> {
        let stats = PerCpuArray::try_from(take(loaded, map::STATS)?)?;
        let accepts = match loaded.kind_of(Kfunc::CskAccept) {
            Some(_) => Some(PerCpuHashMap::try_from(take(loaded, map::ACCEPTS)?)?),
            None => None,
        };
        let accept_errors = match loaded.has_syscall_hooks() {
            true => loaded
                .ebpf
                .take_map(map::ACCEPT_ERRORS)
                .map(PerCpuHashMap::try_from)
                .transpose()?,
            false => None,
        };
        // Needs both ends: the handshake (inet_sock_set_state) and the accept.
        let latency = match loaded.has_tracepoint(Tp::SockState) && loaded.has_syscall_hooks() {
            true => loaded
                .ebpf
                .take_map(map::ACCEPT_LATENCY)
                .map(PerCpuHashMap::try_from)
                .transpose()?,
            false => None,
        };
        let latency_ports = match latency.is_some() {
            true => Some((
                BpfHashMap::try_from(take(loaded, map::LATENCY_PORTS)?)?,
                Array::try_from(take(loaded, map::LATENCY_ON)?)?,
            )),
            false => None,
        };
        Ok(Maps {
            stats,
            accepts,
            accept_errors,
            latency,
            latency_ports,
            accepts_present: 0,
            latency_present: 0,
            latency_removed: 0,
        })
    }

    pub fn has_accepts(&self) -> bool {
        self.accepts.is_some()
    }

    pub fn has_accept_errors(&self) -> bool {
        self.accept_errors.is_some()
    }

    pub fn has_latency(&self) -> bool {
        self.latency.is_some()
    }

    /// One of the kernel's counters (`tcpq_common::stats`), summed.
    pub fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// The most unconsumed ring-buffer bytes any CPU saw since the last
    /// call; the mark is cleared in the kernel when it was set.
    pub fn take_fill_mark(&mut self) -> u64 {
        let fill = self
            .stats
            .get(&stats::RINGBUF_FILL_MAX, 0)
            .map(|v| v.iter().copied().max().unwrap_or(0))
            .unwrap_or(0);
        if fill > 0 {
            if let Ok(cpus) = aya::util::nr_cpus() {
                if let Ok(zero) = aya::maps::PerCpuValues::try_from(vec![0u64; cpus]) {
                    let _ = self.stats.set(stats::RINGBUF_FILL_MAX, zero, 0);
                }
            }
        }
        fill
    }

    /// `ACCEPTS`, CPU-summed; None without the hook.
    pub fn accepts(&mut self) -> Option<Vec<(u64, AcceptStats)>> {
        let map = self.accepts.as_ref()?;
        let entries: Vec<_> = map
            .iter()
            .filter_map(|r| r.ok())
            .map(|(sk, per_cpu)| (sk, accepts::sum_cpus(per_cpu.iter())))
            .collect();
        self.accepts_present = entries.len() as u64;
        Some(entries)
    }

    /// `ACCEPT_ERRORS`, CPU-summed; None without the syscall hooks.
    pub fn accept_errors(&self) -> Option<Vec<(u64, u64)>> {
        let map = self.accept_errors.as_ref()?;
        Some(
            map.iter()
                .filter_map(|r| r.ok())
                .map(|(k, per_cpu)| (k, per_cpu.iter().sum()))
                .collect(),
        )
    }

    pub fn forget_accept_errors(&mut self, keys: &[u64]) {
        if let Some(map) = self.accept_errors.as_mut() {
            for k in keys {
                let _ = map.remove(k);
            }
        }
    }

    /// `ACCEPT_LATENCY`, CPU-summed; None when not measured.
    pub fn latency(&mut self) -> Option<Vec<(u64, LatencyHist)>> {
        let map = self.latency.as_ref()?;
        let now: Vec<_> = map
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, per_cpu)| (k, latency::sum_cpus(per_cpu.iter())))
            .collect();
        self.latency_present = now.len() as u64;
        Some(now)
    }

    /// Applies a change of the measured ports. A listener no longer
    /// measured keeps no histogram (in the kernel or here): with listeners
    /// coming and going, memory stays flat.
    pub fn set_latency_ports(&mut self, c: &Changes) {
        let Some((ports, on)) = self.latency_ports.as_mut() else {
            return;
        };
        for k in &c.add {
            let _ = ports.insert(k, 1, 0);
        }
        for k in &c.remove {
            let _ = ports.remove(k);
        }
        if let Some(v) = c.on {
            let _ = on.set(0, v as u32, 0);
        }
        if let Some(map) = self.latency.as_mut() {
            for k in &c.remove {
                if map.remove(k).is_ok() {
                    self.latency_removed += 1;
                }
            }
        }
    }

    /// What the kernel's maps could not hold, so far.
    pub fn losses(&self) -> MapLosses {
        MapLosses::new(MapCounts {
            accept_errors_full: self.stat(stats::ACCEPT_ERRORS_MAP_FULL),
            accepts_inserted: self.stat(stats::ACCEPTS_INSERTED),
            accepts_present: self.accepts_present,
            latency_inserted: self.stat(stats::LATENCY_INSERTED),
            latency_present: self.latency_present,
            latency_removed: self.latency_removed,
            accept_entries_missing: self.stat(stats::ACCEPT_ENTRY_MISSING),
        })
    }
}
