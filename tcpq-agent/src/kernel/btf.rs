//! Struct offsets and enum values from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), so nothing kernel-version-specific is
//! compiled into tcpq.
//!
//! A lean reader of the BTF format (Documentation/bpf/btf.rst): the file is
//! kept as bytes with one offset per type id, and a look-up walks the type
//! records it needs. Nothing else is decoded, so reading the kernel's
//! 5–6 MB of BTF costs about that much memory (a full parse took 40 MB of
//! peak RSS at start-up), and it is freed before the engine starts.

use anyhow::{anyhow, bail, Context, Result};

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
    KernelBtf::from_file(path).map_err(|e| anyhow!("--btf {path}: not a BTF file ({e:#})"))?;
    let _ = FILE.set(path.to_string());
    Ok(())
}

/// Where the kernel's BTF is read from: `--btf`, else `VMLINUX`.
pub fn path() -> &'static str {
    FILE.get().map_or(VMLINUX, String::as_str)
}

const MAGIC: u16 = 0xeb9f;

/// BTF kinds (`BTF_KIND_*`).
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// A kernel function's prototype as BTF declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncProto {
    pub ret: String,
    /// (type, name) of each parameter.
    pub params: Vec<(String, String)>,
}

impl std::fmt::Display for FuncProto {
    /// C-like: `struct sock *(struct sock *sk, int flags)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(ty, name)| match (ty.ends_with('*'), name.is_empty()) {
                (_, true) => ty.clone(),
                (true, false) => format!("{ty}{name}"),
                (false, false) => format!("{ty} {name}"),
            })
            .collect();
        write!(f, "{}({})", self.ret, params.join(", "))
    }
}

pub struct KernelBtf {
    data: Vec<u8>,
    /// Start of the type and string sections in `data`.
    strings: usize,
    strings_len: usize,
    /// Byte offset (in `data`) of each type's record; index 0 is `void`.
    offsets: Vec<u32>,
}

/// One type record: its header fields.
#[derive(Clone, Copy)]
struct Ty {
    at: usize,
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, by kind.
    size_or_type: u32,
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
        let data = std::fs::read(path).with_context(|| {
            format!(
                "cannot read kernel BTF at {path} (kernel built without CONFIG_DEBUG_INFO_BTF?)"
            )
        })?;
        Self::from_bytes(data).with_context(|| format!("{path}: not usable BTF"))
    }

    pub fn from_bytes(data: Vec<u8>) -> Result<Self> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if u16_at(0) != Some(MAGIC) {
            bail!("bad magic (only little-endian BTF is read)");
        }
        let u32_at = |o: usize| -> Result<u32> {
            let b = data
                .get(o..o + 4)
                .ok_or_else(|| anyhow!("truncated header"))?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let hdr_len = u32_at(4)? as usize;
        let types = hdr_len + u32_at(8)? as usize;
        let types_len = u32_at(12)? as usize;
        let strings = hdr_len + u32_at(16)? as usize;
        let strings_len = u32_at(20)? as usize;
        if types + types_len > data.len() || strings + strings_len > data.len() {
            bail!("sections run past the end of the file");
        }
        let mut btf = KernelBtf {
            data,

            strings,
            strings_len,
            offsets: vec![0],
        };
        let mut at = types;
        while at < types + types_len {
            btf.offsets.push(at as u32);
            at += btf.record_len(btf.ty_at(at)?)?;
        }
        Ok(btf)
    }

    fn u32(&self, at: usize) -> Result<u32> {
        let b = self
            .data
            .get(at..at + 4)
            .ok_or_else(|| anyhow!("kernel BTF: truncated record at {at}"))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn ty_at(&self, at: usize) -> Result<Ty> {
        let info = self.u32(at + 4)?;
        Ok(Ty {
            at,
            name_off: self.u32(at)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: self.u32(at + 8)?,
        })
    }

    /// Bytes of a record: 12 for the header plus what its kind appends.
    fn record_len(&self, t: Ty) -> Result<usize> {
        Ok(12
            + match t.kind {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * t.vlen,
                kind::ENUM | kind::FUNC_PROTO => 8 * t.vlen,
                0..=19 => 0,
                k => bail!("kernel BTF: unknown kind {k}"),
            })
    }

    fn ty(&self, id: u32) -> Result<Ty> {
        let at = *self
            .offsets
            .get(id as usize)
            .filter(|_| id != 0)
            .ok_or_else(|| anyhow!("kernel BTF: no type id {id}"))?;
        self.ty_at(at as usize)
    }

    fn name(&self, off: u32) -> &str {
        let start = self.strings + off as usize;
        let end = self.strings + self.strings_len;
        let bytes = self.data.get(start..end).unwrap_or_default();
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..len]).unwrap_or("")
    }

    /// Types named `name` of one of `kinds`.
    fn by_name<'a>(&'a self, name: &'a str, kinds: &'a [u32]) -> impl Iterator<Item = Ty> + 'a {
        self.offsets[1..]
            .iter()
            .filter_map(|&at| self.ty_at(at as usize).ok())
            .filter(move |t| kinds.contains(&t.kind) && self.name(t.name_off) == name)
    }

    /// The i-th (name_off, second u32, third u32) entry after a record.
    fn entry(&self, t: Ty, i: usize, size: usize) -> Result<(u32, u32, u32)> {
        let at = t.at + 12 + i * size;
        let third = if size == 12 { self.u32(at + 8)? } else { 0 };
        Ok((self.u32(at)?, self.u32(at + 4)?, third))
    }

    fn named_struct(&self, name: &str) -> Result<Ty> {
        self.by_name(name, &[kind::STRUCT])
            .find(|t| t.vlen > 0)
            .ok_or_else(|| anyhow!("kernel BTF has no struct `{name}`"))
    }

    /// Byte offset of `path` (e.g. `["__sk_common", "skc_num"]`) inside
    /// `struct ty`, looking through anonymous structs and unions.
    pub fn offset(&self, ty: &str, path: &[&str]) -> Result<u32> {
        let mut s = self.named_struct(ty)?;
        let mut total_bits = 0u32;
        for (i, field) in path.iter().enumerate() {
            let (bits, member_type) = self.find_member(s, field, 0)?.ok_or_else(|| {
                anyhow!(
                    "kernel BTF: struct `{ty}` has no field `{}`",
                    path[..=i].join(".")
                )
            })?;
            total_bits = total_bits
                .checked_add(bits)
                .ok_or_else(|| anyhow!("kernel BTF: `{ty}.{}` is past 4 GiB", path.join(".")))?;
            if i + 1 < path.len() {
                s = self.resolve(member_type)?;
                if s.kind != kind::STRUCT && s.kind != kind::UNION {
                    bail!(
                        "kernel BTF: `{ty}.{}` is not a struct",
                        path[..=i].join(".")
                    );
                }
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

    /// Finds `name` among the members of struct/union `s`, descending into
    /// anonymous members (at most 32 deep: a struct that contains itself
    /// is corrupt BTF, not a reason to overflow the stack). Returns (bit
    /// offset, member's type id).
    fn find_member(&self, s: Ty, name: &str, depth: u32) -> Result<Option<(u32, u32)>> {
        if depth > 32 {
            bail!("kernel BTF: anonymous members nested too deep");
        }
        for i in 0..s.vlen {
            let (name_off, ty, off) = self.entry(s, i, 12)?;
            // With kind_flag the low 24 bits are the offset, the rest the
            // bit field's size.
            let bits = if s.kind_flag { off & 0xff_ffff } else { off };
            let mname = self.name(name_off);
            if mname == name {
                return Ok(Some((bits, ty)));
            }
            if mname.is_empty() {
                let inner = self.resolve(ty)?;
                if inner.kind == kind::STRUCT || inner.kind == kind::UNION {
                    if let Some((b, t)) = self.find_member(inner, name, depth + 1)? {
                        let bits = bits
                            .checked_add(b)
                            .ok_or_else(|| anyhow!("kernel BTF: `{name}` is past 4 GiB"))?;
                        return Ok(Some((bits, t)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<Ty> {
        for _ in 0..64 {
            let t = self.ty(id)?;
            match t.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Ok(t),
            }
        }
        bail!("kernel BTF: type chain too long at id {id}")
    }

    /// The arguments of raw tracepoint `name` as BTF declares them
    /// (`btf_trace_<name>`, without its leading `void *__data`), e.g.
    /// `["struct sk_buff *", "void *", "enum skb_drop_reason", "struct sock *"]`.
    pub fn raw_tp_args(&self, name: &str) -> Option<Vec<String>> {
        let typedef = format!("btf_trace_{name}");
        let td = self.by_name(&typedef, &[kind::TYPEDEF]).next()?;
        let ptr = self.ty(td.size_or_type).ok()?;
        let proto = self.ty(ptr.size_or_type).ok()?;
        if ptr.kind != kind::PTR || proto.kind != kind::FUNC_PROTO {
            return None;
        }
        (1..proto.vlen)
            .map(|i| Some(self.describe(self.entry(proto, i, 8).ok()?.1, 0)))
            .collect()
    }

    /// A C-like spelling of type `id`: `struct sock *`, `enum x`, `u32`.
    fn describe(&self, id: u32, depth: u32) -> String {
        if id == 0 {
            return "void".into();
        }
        let Ok(t) = self.ty(id) else {
            return "?".into();
        };
        let name = self.name(t.name_off);
        match t.kind {
            _ if depth > 16 => "?".into(),
            kind::PTR => match self.ty(t.size_or_type) {
                // A function pointer: `void (*)(struct sock *, struct sock *)`.
                Ok(f) if f.kind == kind::FUNC_PROTO => {
                    let (ret, params) = self.describe_proto(f, depth + 1);
                    format!("{ret} (*)({})", params.join(", "))
                }
                _ => format!("{} *", self.describe(t.size_or_type, depth + 1)),
            },
            kind::STRUCT => format!("struct {name}"),
            kind::UNION => format!("union {name}"),
            kind::ENUM | kind::ENUM64 => format!("enum {name}"),
            kind::CONST | kind::VOLATILE | kind::RESTRICT | kind::TYPE_TAG => {
                self.describe(t.size_or_type, depth + 1)
            }
            _ => name.to_string(),
        }
    }

    /// Return type and parameter types of FUNC_PROTO `f`.
    fn describe_proto(&self, f: Ty, depth: u32) -> (String, Vec<String>) {
        let params = (0..f.vlen)
            .map(|i| match self.entry(f, i, 8) {
                Ok((_, 0, _)) => "...".to_string(),
                Ok((_, ty, _)) => self.describe(ty, depth + 1),
                Err(_) => "?".to_string(),
            })
            .collect();
        (self.describe(f.size_or_type, depth + 1), params)
    }

    /// The type id of kernel function `name` (what fentry attaches by).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        let f = self.by_name(name, &[kind::FUNC]).next()?;
        self.offsets
            .iter()
            .position(|&o| o as usize == f.at)
            .map(|i| i as u32)
    }

    /// Number of parameters of kernel function `name`, if BTF has it.
    pub fn func_args(&self, name: &str) -> Option<usize> {
        let f = self.by_name(name, &[kind::FUNC]).next()?;
        let proto = self.ty(f.size_or_type).ok()?;
        (proto.kind == kind::FUNC_PROTO).then_some(proto.vlen)
    }

    /// The prototype of each BTF function named `name` (usually one; a
    /// static function may appear once per compilation unit): return type
    /// and (type, name) of each parameter, spelled as [`describe`] does
    /// (`struct sock *`, `bool`, qualifiers dropped). Empty: not in BTF.
    ///
    /// [`describe`]: Self::describe
    pub fn func_protos(&self, name: &str) -> Vec<FuncProto> {
        self.by_name(name, &[kind::FUNC])
            .filter_map(|f| {
                let proto = self.ty(f.size_or_type).ok()?;
                if proto.kind != kind::FUNC_PROTO {
                    return None;
                }
                let params = (0..proto.vlen)
                    .map(|i| {
                        let (name_off, ty, _) = self.entry(proto, i, 8).ok()?;
                        // A variadic function ends with (0, void).
                        Some(match (ty, self.name(name_off)) {
                            (0, "") => ("...".to_string(), String::new()),
                            (ty, n) => (self.describe(ty, 0), n.to_string()),
                        })
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(FuncProto {
                    ret: self.describe(proto.size_or_type, 0),
                    params,
                })
            })
            .collect()
    }

    /// Value of enumerator `name` in `enum ty`.
    pub fn enum_value(&self, ty: &str, name: &str) -> Result<u32> {
        self.enum_values(ty)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| anyhow!("kernel BTF: enum `{ty}` has no `{name}`"))
    }

    /// All (name, value) pairs of `enum ty` (64-bit enums: the low half).
    pub fn enum_values(&self, ty: &str) -> Result<Vec<(String, u32)>> {
        let e = self
            .by_name(ty, &[kind::ENUM, kind::ENUM64])
            .next()
            .ok_or_else(|| anyhow!("kernel BTF has no enum `{ty}`"))?;
        let size = if e.kind == kind::ENUM { 8 } else { 12 };
        (0..e.vlen)
            .map(|i| {
                let (name_off, val, _) = self.entry(e, i, size)?;
                Ok((self.name(name_off).to_string(), val))
            })
            .collect()
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
    fn function_prototypes_come_from_btf() {
        let Some(k) = kernel() else { return };
        let p = k.func_protos("tcp_conn_request");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].ret, "int");
        assert_eq!(p[0].params[2], ("struct sock *".into(), "sk".into()));
        assert!(
            p[0].to_string()
                .contains("struct sock *sk, struct sk_buff *skb)"),
            "{}",
            p[0]
        );
        assert!(k.func_protos("no_such_function_xyz").is_empty());
        // A function pointer parameter, spelled as C casts it.
        let int = [7, 1 << 24, 4, 32];
        let proto = [0, kind::FUNC_PROTO << 24 | 1, 1, 0, 1];
        let ptr = [0, kind::PTR << 24, 2];
        let k = blob(&[&int, &proto, &ptr], b"\0a\0m\0n\0int\0");
        assert_eq!(k.describe(3, 0), "int (*)(int)");
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

    #[test]
    fn raw_tracepoint_arguments_come_from_btf() {
        let Some(k) = kernel() else { return };
        // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
        let args = k.raw_tp_args("inet_sock_set_state").unwrap();
        assert_eq!(args, ["struct sock *", "int", "int"]);
        assert!(k.raw_tp_args("no_such_tracepoint_xyz").is_none());
    }

    #[test]
    fn bad_files_are_refused_in_one_line() {
        let e = KernelBtf::from_bytes(b"not btf at all".to_vec())
            .err()
            .unwrap();
        assert!(e.to_string().contains("bad magic"), "{e}");
        let mut hdr = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        hdr.extend([0, 0, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let e = KernelBtf::from_bytes(hdr).err().unwrap();
        assert!(e.to_string().contains("past the end"), "{e}");
    }

    #[test]
    fn bit_fields_and_nested_paths() {
        let Some(k) = kernel() else { return };
        // sk_protocol is a plain u16 since 5.6 (was a bit field before).
        assert!(k.offset("sock", &["sk_protocol"]).is_ok());
        // struct net -> ns (struct ns_common) -> inum.
        assert!(k.offset("net", &["ns", "inum"]).unwrap() > 0);
        assert!(k.offset("net", &["ns", "no_such"]).is_err());
    }

    /// A BTF blob of `types` (records as the kernel writes them) and
    /// `strings` (starting with the empty name).
    fn blob(types: &[&[u32]], strings: &[u8]) -> KernelBtf {
        let types: Vec<u8> = types
            .concat()
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let mut b = vec![0x9f, 0xeb, 1, 0];
        for w in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            b.extend(w.to_le_bytes());
        }
        b.extend(types);
        b.extend(strings);
        KernelBtf::from_bytes(b).unwrap()
    }

    const STRUCT: u32 = kind::STRUCT << 24;

    /// Found by the `btf` fuzz target: member offsets whose sum passes
    /// u32 overflowed (a panic in debug builds, a wrong offset in release).
    #[test]
    fn offsets_past_4_gib_are_an_error() {
        // Names: a=1 m=3 n=5 int=7.
        let int = [7, 1 << 24, 4, 32];
        // struct a { <3> m @ 0xf0000000 bits }
        let a = [1, STRUCT | 1, 8, 3, 3, 0xf000_0000];
        // struct { int n @ 0xf0000000 bits }
        let inner = [0, STRUCT | 1, 4, 5, 1, 0xf000_0000];
        let k = blob(&[&int, &a, &inner], b"\0a\0m\0n\0int\0");
        let e = k.offset("a", &["m", "n"]).unwrap_err();
        assert!(e.to_string().contains("past 4 GiB"), "{e}");
    }

    /// Found reading the code the `btf` fuzz target led to: a struct whose
    /// anonymous member is itself recursed until the stack overflowed.
    #[test]
    fn a_struct_containing_itself_is_an_error() {
        // struct a (id 1) { struct a <anonymous> @ 0 }
        let k = blob(&[&[1, STRUCT | 1, 8, 0, 1, 0]], b"\0a\0");
        let e = k.offset("a", &["x"]).unwrap_err();
        assert!(e.to_string().contains("too deep"), "{e}");
    }
}
