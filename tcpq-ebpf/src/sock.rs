//! Reading `struct sock` fields at offsets the agent found in BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tcpq_common::{config::AF_INET6, stats, Event};

use crate::{conf, emit::bump};

#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Option<T> {
    match unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            bump(stats::READ_ERRORS);
            None
        }
    }
}

/// The socket's local port (host order).
#[inline(always)]
pub fn lport(sk: u64) -> u16 {
    read::<u16>(sk, conf!(skc_num)).unwrap_or(0)
}

/// The network namespace inode of `sk`.
#[inline(always)]
pub fn netns(sk: u64) -> u32 {
    match read::<u64>(sk, conf!(skc_net)) {
        Some(net) if net != 0 => read::<u32>(net, conf!(net_ns_inum)).unwrap_or(0),
        _ => 0,
    }
}

/// True when the kernel-side filters (`--port`, `--netns`) reject `sk`.
#[inline(always)]
pub fn filtered_out(sk: u64) -> bool {
    let want_port = conf!(filter_lport);
    if want_port != 0 && lport(sk) as u32 != want_port {
        return true;
    }
    let want_netns = conf!(filter_netns);
    want_netns != 0 && netns(sk) != want_netns
}

/// Like [`filtered_out`] for any socket: `--port` matches either end (a
/// client's connection to the port, or the port's own side).
#[inline(always)]
pub fn filtered_out_either_port(sk: u64) -> bool {
    let want_port = conf!(filter_lport);
    if want_port != 0
        && lport(sk) as u32 != want_port
        && u16::from_be(read::<u16>(sk, conf!(skc_dport)).unwrap_or(0)) as u32 != want_port
    {
        return true;
    }
    let want_netns = conf!(filter_netns);
    want_netns != 0 && netns(sk) != want_netns
}

/// Addresses, ports, state and netns of any `sock_common` (a full socket or a
/// request sock).
#[inline(always)]
pub fn fill_common(ev: &mut Event, sk: u64) {
    ev.sk = sk;
    ev.family = read::<u16>(sk, conf!(skc_family)).unwrap_or(0);
    ev.state = read::<u8>(sk, conf!(skc_state)).unwrap_or(0) as u16;
    ev.lport = lport(sk);
    ev.rport = u16::from_be(read::<u16>(sk, conf!(skc_dport)).unwrap_or(0));
    ev.netns = netns(sk);
    if ev.family == AF_INET6 {
        ev.laddr = read::<[u8; 16]>(sk, conf!(skc_v6_rcv_saddr)).unwrap_or([0; 16]);
        ev.raddr = read::<[u8; 16]>(sk, conf!(skc_v6_daddr)).unwrap_or([0; 16]);
    } else {
        let l = read::<[u8; 4]>(sk, conf!(skc_rcv_saddr)).unwrap_or([0; 4]);
        let r = read::<[u8; 4]>(sk, conf!(skc_daddr)).unwrap_or([0; 4]);
        ev.laddr[..4].copy_from_slice(&l);
        ev.raddr[..4].copy_from_slice(&r);
    }
}

/// `fill_common` plus what only a listener has: accept-queue length and
/// limit, and the socket inode that ties it to its owner's fd table.
#[inline(always)]
pub fn fill_listener(ev: &mut Event, sk: u64) {
    fill_common(ev, sk);
    ev.ack_backlog = read::<u32>(sk, conf!(sk_ack_backlog)).unwrap_or(0);
    ev.max_ack_backlog = read::<u32>(sk, conf!(sk_max_ack_backlog)).unwrap_or(0);
    fill_inode(ev, sk);
}

/// `fill_common` plus the socket inode (0 once the app closed it).
#[inline(always)]
pub fn fill_socket(ev: &mut Event, sk: u64) {
    fill_common(ev, sk);
    fill_inode(ev, sk);
}

#[inline(always)]
fn fill_inode(ev: &mut Event, sk: u64) {
    if let Some(socket) = read::<u64>(sk, conf!(sk_socket)) {
        if socket != 0 {
            let at = (socket as i64 + conf!(socket_to_ino) as i64) as u64;
            ev.sock_ino = read::<u64>(at, 0).unwrap_or(0) as u32;
        }
    }
}

/// The `struct sock` behind fd `fd` of the current task.
#[inline(always)]
pub fn of_fd(fd: i64) -> Option<u64> {
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
    let files = read::<u64>(task, conf!(task_files))?;
    let fdt = read::<u64>(files, conf!(files_fdt))?;
    let max = read::<u32>(fdt, conf!(fdt_max_fds))?;
    if fd as u64 >= max as u64 {
        return None;
    }
    let array = read::<u64>(fdt, conf!(fdt_fd))?;
    let file = read::<u64>(array + fd as u64 * 8, 0)?;
    let socket = read::<u64>(file, conf!(file_private_data))?;
    read::<u64>(socket, conf!(socket_sk))
}
