//! Kernel BTF (`/sys/kernel/btf/vmlinux`, or `--btf FILE`, e.g. a btfhub
//! download): any blob is refused or answers the agent's look-ups.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tcpq_agent::kernel::btf::KernelBtf;

fuzz_target!(|data: &[u8]| {
    let Ok(btf) = KernelBtf::from_bytes(data.to_vec()) else {
        return;
    };
    // The look-ups tcpq makes at start-up (kernel.rs), on whatever is there.
    let _ = btf.offset("sock", &["__sk_common", "skc_num"]);
    let _ = btf.offset("a", &["b"]);
    let _ = btf.offset("", &["", ""]);
    let _ = btf.offset_opt("net", &["ns", "inum"]);
    let _ = btf.raw_tp_args("inet_sock_set_state");
    let _ = btf.raw_tp_args("");
    let _ = btf.func_id("tcp_conn_request");
    let _ = btf.func_args("");
    let _ = btf.func_protos("");
    // doctor's prototypes section: every hooked function's FUNC_PROTO.
    let _ = tcpq_agent::kernel::protos::render(&tcpq_agent::kernel::protos::check(&btf));
    let _ = btf.enum_values("");
    let _ = btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW");
});
