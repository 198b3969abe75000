//! The hooks' documented kernel prototypes (`tcpq_common::protos`) checked
//! against the running kernel's BTF, in the spirit of kunai's
//! `match-proto`: a kernel function that exists must match one documented
//! variant in its parameter count, the types of the parameters the BPF
//! programs read and, where an exit program reads it, the return type.
//!
//! A function missing from BTF (`__sys_listen` inlined into its syscall
//! wrapper, a kernel without IPv6) is reported, not failed: the loader
//! then attaches no fentry to it (see `caps`), and a kprobe found through
//! kallsyms reads what the table documents, unchecked.

use std::fmt::Write as _;

use tcpq_common::protos::{self, Proto, Variant};

use crate::kernel::btf::{FuncProto, KernelBtf};

/// What BTF says about one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Matches `variant`; `exact`: in every parameter's type, not only in
    /// what tcpq reads.
    Matches {
        variant: &'static Variant,
        exact: bool,
    },
    /// Not in BTF: nothing to check.
    Absent,
    /// Matches no documented variant: why, per variant.
    Mismatch(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub function: &'static str,
    /// A raw tracepoint (`btf_trace_<name>`), not a kernel function.
    pub raw_tracepoint: bool,
    /// The prototypes BTF has for it (one, or one per compilation unit).
    pub btf: Vec<FuncProto>,
    pub verdict: Verdict,
}

/// Why `got` does not match `v`, or None when it does.
fn mismatch(p: &Proto, v: &Variant, got: &FuncProto) -> Option<String> {
    if got.params.len() != v.params.len() {
        return Some(format!(
            "{} parameters, not {}",
            got.params.len(),
            v.params.len()
        ));
    }
    for &i in p.reads {
        let (want, name) = v.params[i];
        if got.params[i].0 != want {
            return Some(format!(
                "parameter {i} ({name}) is `{}`, not `{want}`",
                got.params[i].0
            ));
        }
    }
    if p.reads_ret && got.ret != v.ret {
        return Some(format!("returns `{}`, not `{}`", got.ret, v.ret));
    }
    None
}

/// Checks one table entry against the prototypes BTF has for it.
pub fn check_one(p: &'static Proto, btf: Vec<FuncProto>, raw_tracepoint: bool) -> Check {
    let verdict = if btf.is_empty() {
        Verdict::Absent
    } else {
        let mut why = Vec::new();
        let found = p.variants.iter().find(|v| {
            // Every copy of the function must match this variant.
            let bad: Vec<String> = btf.iter().filter_map(|g| mismatch(p, v, g)).collect();
            if !bad.is_empty() {
                why.push(format!("{}: {}", v.kernels, bad.join(", ")));
            }
            bad.is_empty()
        });
        match found {
            Some(v) => Verdict::Matches {
                variant: v,
                exact: btf.iter().all(|g| {
                    g.params.iter().zip(v.params).all(|(g, w)| g.0 == w.0)
                        && (raw_tracepoint || g.ret == v.ret)
                }),
            },
            None => Verdict::Mismatch(why.join("; ")),
        }
    };
    Check {
        function: p.function,
        raw_tracepoint,
        btf,
        verdict,
    }
}

/// Every kernel function and raw tracepoint of the table, checked.
pub fn check(btf: &KernelBtf) -> Vec<Check> {
    let mut out: Vec<Check> = protos::KFUNCS
        .iter()
        .map(|p| check_one(p, btf.func_protos(p.function), false))
        .collect();
    out.extend(protos::RAW_TRACEPOINTS.iter().map(|p| {
        let args = btf.raw_tp_args(p.function).map(|types| FuncProto {
            ret: "void".into(),
            params: types.into_iter().map(|t| (t, String::new())).collect(),
        });
        check_one(p, args.into_iter().collect(), true)
    }));
    out
}

/// doctor's "prototypes" section: one line per function.
pub fn render(checks: &[Check]) -> String {
    let mut s = String::from("prototypes (kernel BTF vs the hooks' documented ones):\n");
    for c in checks {
        let name = match c.raw_tracepoint {
            true => format!("tp {}", c.function),
            false => c.function.to_string(),
        };
        let btf: Vec<String> = c.btf.iter().map(|p| p.to_string()).collect();
        let line = match &c.verdict {
            Verdict::Matches { variant, exact } => format!(
                "matches{} ({}): {}",
                if *exact { "" } else { " in what tcpq reads" },
                variant.kernels,
                btf.join(" | ")
            ),
            Verdict::Absent => "not in BTF: not checked".to_string(),
            Verdict::Mismatch(why) => format!("MISMATCH ({why}): {}", btf.join(" | ")),
        };
        let _ = writeln!(s, "  {name:<22} {line}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::caps::Kfunc;

    fn proto(ret: &str, params: &[(&str, &str)]) -> FuncProto {
        FuncProto {
            ret: ret.into(),
            params: params
                .iter()
                .map(|(t, n)| (t.to_string(), n.to_string()))
                .collect(),
        }
    }

    fn entry(function: &str) -> &'static Proto {
        protos::KFUNCS
            .iter()
            .find(|p| p.function == function)
            .unwrap()
    }

    #[test]
    fn the_table_names_every_hooked_function_and_reads_within_it() {
        let names: Vec<&str> = protos::KFUNCS.iter().map(|p| p.function).collect();
        let hooked: Vec<&str> = Kfunc::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names, hooked);
        for p in protos::KFUNCS.iter().chain(protos::RAW_TRACEPOINTS) {
            assert!(!p.variants.is_empty(), "{}", p.function);
            for v in p.variants {
                assert!(
                    p.reads.iter().all(|&i| i < v.params.len()),
                    "{} ({}): reads past its parameters",
                    p.function,
                    v.kernels
                );
            }
        }
    }

    #[test]
    fn both_inet_csk_accept_prototypes_match_and_others_do_not() {
        let p = entry("inet_csk_accept");
        let old = proto(
            "struct sock *",
            &[
                ("struct sock *", "sk"),
                ("int", "flags"),
                ("int *", "err"),
                ("bool", "kern"),
            ],
        );
        let new = proto(
            "struct sock *",
            &[
                ("struct sock *", "sk"),
                ("struct proto_accept_arg *", "arg"),
            ],
        );
        for got in [old, new] {
            let c = check_one(p, vec![got], false);
            assert!(
                matches!(c.verdict, Verdict::Matches { exact: true, .. }),
                "{c:?}"
            );
        }
        // The listener moved: what the programs read would be wrong.
        let moved = proto(
            "struct sock *",
            &[
                ("struct proto_accept_arg *", "arg"),
                ("struct sock *", "sk"),
            ],
        );
        let c = check_one(p, vec![moved], false);
        let Verdict::Mismatch(why) = &c.verdict else {
            panic!("{c:?}")
        };
        assert!(
            why.contains("parameter 0 (sk) is `struct proto_accept_arg *`"),
            "{why}"
        );
        assert!(why.contains("2 parameters, not 4"), "{why}");
        let out = render(&[c]);
        assert!(
            out.contains("  inet_csk_accept        MISMATCH (Linux ≤ 6.9: 2 parameters, not 4; "),
            "{out}"
        );
        // An unread parameter of another type: still what tcpq reads.
        let flags = proto(
            "struct sock *",
            &[
                ("struct sock *", "sk"),
                ("long", "flags"),
                ("int *", "err"),
                ("bool", "kern"),
            ],
        );
        let c = check_one(p, vec![flags], false);
        assert!(
            matches!(c.verdict, Verdict::Matches { exact: false, .. }),
            "{c:?}"
        );
        assert_eq!(check_one(p, vec![], false).verdict, Verdict::Absent);
        assert!(render(&[check_one(p, vec![], false)])
            .contains("  inet_csk_accept        not in BTF: not checked\n"));
    }

    /// The running kernel's BTF (world-readable; the `prototypes` scenario
    /// test runs the same check through doctor on every VM kernel).
    #[test]
    fn this_kernel_matches_the_documented_prototypes() {
        let Ok(btf) = KernelBtf::load() else { return };
        let checks = check(&btf);
        eprint!("{}", render(&checks));
        for c in &checks {
            assert!(
                !matches!(c.verdict, Verdict::Mismatch(_)),
                "{}",
                render(std::slice::from_ref(c))
            );
        }
        // Present on every kernel tcpq supports.
        let tcp_conn_request = &checks[0];
        assert!(
            matches!(tcp_conn_request.verdict, Verdict::Matches { .. }),
            "{tcp_conn_request:?}"
        );
    }
}
