//! Struct offsets and enum values from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), so nothing kernel-version-specific is
//! compiled into tcpq.

use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Btf, Type};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// `--btf PATH`, once set: the running kernel's BTF from a file instead of
/// `VMLINUX`, for a kernel built without `CONFIG_DEBUG_INFO_BTF` (btfhub's
/// convention: one `<uname -r>.btf` per kernel release).
static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Takes `--btf PATH` (checked here: bad input fails before anything runs).
pub fn use_file(path: &str) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("--btf {path}"))?;
    if !meta.is_file() {
        bail!("--btf {path}: not a file");
    }
    Btf::from_file(path).map_err(|e| anyhow!("--btf {path}: not a BTF file ({e})"))?;
    let _ = FILE.set(path.to_string());
    Ok(())
}

/// Where the kernel's BTF is read from: `--btf`, else `VMLINUX`.
pub fn path() -> &'static str {
    FILE.get().map_or(VMLINUX, String::as_str)
}

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self> {
        let path = path();
        if path == VMLINUX && !std::path::Path::new(VMLINUX).exists() {
            bail!(
                "this kernel has no BTF ({VMLINUX} is missing: built without \
                 CONFIG_DEBUG_INFO_BTF); pass --btf PATH with a BTF file for this \
                 kernel release (btfhub: <uname -r>.btf)"
            );
        }
        Self::from_file(path)
    }

    pub fn from_file(path: &str) -> Result<Self> {
        let btf =
            Btf::from_file(path).map_err(|e| anyhow!("cannot read kernel BTF at {path}: {e}"))?;
        Ok(Self { btf })
    }

    fn named_struct(&self, name: &str) -> Result<btf_rs::Struct> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| anyhow!("kernel BTF has no type `{name}`"))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| anyhow!("kernel BTF has no struct `{name}`"))
    }

    /// Byte offset of `path` (e.g. `["__sk_common", "skc_num"]`) inside
    /// `struct ty`, looking through anonymous structs and unions.
    pub fn offset(&self, ty: &str, path: &[&str]) -> Result<u32> {
        let mut s = self.named_struct(ty)?;
        let mut total_bits = 0u32;
        for (i, field) in path.iter().enumerate() {
            let (bits, member_type) = self.find_member(&s, field)?.ok_or_else(|| {
                anyhow!(
                    "kernel BTF: struct `{ty}` has no field `{}`",
                    path[..=i].join(".")
                )
            })?;
            total_bits += bits;
            if i + 1 < path.len() {
                s = match self.resolve(member_type)? {
                    Type::Struct(s) | Type::Union(s) => s,
                    _ => bail!(
                        "kernel BTF: `{ty}.{}` is not a struct",
                        path[..=i].join(".")
                    ),
                };
            }
        }
        if !total_bits.is_multiple_of(8) {
            bail!("kernel BTF: `{ty}.{}` is a bit field", path.join("."));
        }
        Ok(total_bits / 8)
    }

    /// Like [`offset`](Self::offset) but `None` when the field does not exist.
    pub fn offset_opt(&self, ty: &str, path: &[&str]) -> Option<u32> {
        self.offset(ty, path).ok()
    }

    /// Finds `name` among the members of `s`, descending into anonymous
    /// members. Returns (bit offset, member's type).
    fn find_member(&self, s: &btf_rs::Struct, name: &str) -> Result<Option<(u32, Type)>> {
        for m in &s.members {
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            let mtype = self.btf.resolve_chained_type(m)?;
            if mname == name {
                return Ok(Some((m.bit_offset(), mtype)));
            }
            if mname.is_empty() {
                if let Type::Struct(inner) | Type::Union(inner) = self.resolve(mtype)? {
                    if let Some((bits, t)) = self.find_member(&inner, name)? {
                        return Ok(Some((m.bit_offset() + bits, t)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut t: Type) -> Result<Type> {
        loop {
            t = match &t {
                Type::Typedef(x) => self.btf.resolve_chained_type(x)?,
                Type::Const(x) => self.btf.resolve_chained_type(x)?,
                Type::Volatile(x) => self.btf.resolve_chained_type(x)?,
                Type::Restrict(x) => self.btf.resolve_chained_type(x)?,
                Type::TypeTag(x) => self.btf.resolve_chained_type(x)?,
                _ => return Ok(t),
            };
        }
    }

    /// Number of parameters of kernel function `name`, if BTF has it.
    pub fn func_args(&self, name: &str) -> Option<usize> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        types.into_iter().find_map(|t| match t {
            Type::Func(f) => match self.btf.resolve_chained_type(&f).ok()? {
                Type::FuncProto(p) => Some(p.parameters.len()),
                _ => None,
            },
            _ => None,
        })
    }

    /// Value of enumerator `name` in `enum ty`.
    pub fn enum_value(&self, ty: &str, name: &str) -> Result<u32> {
        self.enum_values(ty)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| anyhow!("kernel BTF: enum `{ty}` has no `{name}`"))
    }

    /// All (name, value) pairs of `enum ty`.
    pub fn enum_values(&self, ty: &str) -> Result<Vec<(String, u32)>> {
        let types = self
            .btf
            .resolve_types_by_name(ty)
            .map_err(|_| anyhow!("kernel BTF has no enum `{ty}`"))?;
        for t in types {
            if let Type::Enum(e) = t {
                return e
                    .members
                    .iter()
                    .map(|m| Ok((self.btf.resolve_name(m)?, m.val())))
                    .collect();
            }
        }
        bail!("kernel BTF has no enum `{ty}`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Option<KernelBtf> {
        KernelBtf::load().ok()
    }

    // These read the BTF of the machine running the tests (no root needed:
    // /sys/kernel/btf/vmlinux is world-readable). They check the resolver
    // against facts true on every kernel tcpq supports.
    #[test]
    fn sock_common_is_at_the_start_of_sock() {
        let Some(k) = kernel() else { return };
        assert_eq!(k.offset("sock", &["__sk_common"]).unwrap(), 0);
        // skc_daddr and skc_rcv_saddr live in an anonymous struct inside an
        // anonymous union: the resolver must look through both.
        let daddr = k.offset("sock", &["__sk_common", "skc_daddr"]).unwrap();
        let saddr = k.offset("sock", &["__sk_common", "skc_rcv_saddr"]).unwrap();
        assert_eq!(saddr, daddr + 4);
        let dport = k.offset("sock", &["__sk_common", "skc_dport"]).unwrap();
        let num = k.offset("sock", &["__sk_common", "skc_num"]).unwrap();
        assert_eq!(num, dport + 2);
    }

    #[test]
    fn missing_fields_are_named_in_the_error() {
        let Some(k) = kernel() else { return };
        let err = k
            .offset("sock", &["__sk_common", "no_such_field"])
            .unwrap_err();
        assert!(
            err.to_string().contains("__sk_common.no_such_field"),
            "{err}"
        );
        assert!(k.offset_opt("no_such_struct_xyz", &["a"]).is_none());
    }

    #[test]
    fn function_arity_comes_from_btf() {
        let Some(k) = kernel() else { return };
        // int tcp_conn_request(rsk_ops, af_ops, sk, skb): stable since 4.4.
        assert_eq!(k.func_args("tcp_conn_request"), Some(4));
        assert_eq!(k.func_args("no_such_function_xyz"), None);
    }

    #[test]
    fn enum_values_come_from_btf() {
        let Some(k) = kernel() else { return };
        // uapi enums are stable: a fixed point to check the resolver on.
        assert_eq!(
            k.enum_value("bpf_prog_type", "BPF_PROG_TYPE_SOCKET_FILTER")
                .unwrap(),
            1
        );
        assert_eq!(
            k.enum_value("bpf_prog_type", "BPF_PROG_TYPE_TRACEPOINT")
                .unwrap(),
            5
        );
        assert!(k
            .enum_value("skb_drop_reason", "SKB_DROP_REASON_NO_SUCH_THING")
            .is_err());
    }
}
