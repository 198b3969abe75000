//! tracefs: mounting it when nobody has, and reading tracepoint record
//! layouts from `events/<category>/<name>/format` (they differ by kernel).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Returns the tracefs root, mounting tracefs on /sys/kernel/tracing if no
/// candidate has one.
pub fn ensure_mounted() -> Result<PathBuf> {
    for c in CANDIDATES {
        match std::fs::metadata(Path::new(c).join("events")) {
            Ok(m) if m.is_dir() => return Ok(PathBuf::from(c)),
            // Mounted, mode 0700 root: not a reason to mount another.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
                "cannot read tracefs at {c}: permission denied (missing {}: tracefs is readable by root only)",
                if crate::kernel::privs::has(crate::kernel::privs::effective(), crate::kernel::privs::CAP_DAC_READ_SEARCH) {
                    "nothing: an LSM or a user namespace refuses"
                } else {
                    "CAP_DAC_READ_SEARCH"
                }
            ),
            _ => {}
        }
    }
    let target = CANDIDATES[0];
    let src = c"tracefs";
    let dst = std::ffi::CString::new(target).expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("tracefs is not mounted and mounting it on {target} failed: {err}");
    }
    Ok(PathBuf::from(target))
}

/// One `field:` line of a format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// The fields of a tracepoint record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Format {
    pub fields: Vec<Field>,
}

impl Format {
    pub fn read(root: &Path, category: &str, name: &str) -> Result<Format> {
        let path = root.join("events").join(category).join(name).join("format");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "tracepoint {category}:{name} not available ({})",
                path.display()
            )
        })?;
        Ok(Self::parse(&text))
    }

    /// Parses lines like
    /// `field:void * rx_sk;<TAB>offset:24;<TAB>size:8;<TAB>signed:0;`.
    /// The field name is the last identifier of the declaration, without any
    /// array suffix (`__u8 saddr[28]` → `saddr`).
    pub fn parse(text: &str) -> Format {
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next().unwrap_or("");
            let mut offset = None;
            let mut size = None;
            for p in parts {
                if let Some(v) = p.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = p.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            let name = decl
                .split(|c: char| c.is_whitespace() || c == '*')
                .rfind(|s| !s.is_empty())
                .map(|s| s.split('[').next().unwrap_or(s).to_string());
            if let (Some(name), Some(offset), Some(size)) = (name, offset, size) {
                fields.push(Field { name, offset, size });
            }
        }
        Format { fields }
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Offset of `name`, which must have `size` bytes.
    pub fn offset(&self, name: &str, size: u32) -> Option<u32> {
        self.field(name)
            .filter(|f| f.size == size)
            .map(|f| f.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from Linux 6.18.
    const KFREE_SKB: &str = "name: kfree_skb
ID: 2310
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;

print fmt: \"skbaddr=%p rx_sk=%p\", REC->skbaddr, REC->rx_sk
";

    // Linux 6.1: no rx_sk, reason at 28.
    const KFREE_SKB_61: &str = "format:
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:28;\tsize:4;\tsigned:0;
";

    #[test]
    fn parses_pointer_enum_and_array_fields() {
        let f = Format::parse(KFREE_SKB);
        assert_eq!(f.offset("rx_sk", 8), Some(24));
        assert_eq!(f.offset("reason", 4), Some(36));
        assert_eq!(f.offset("common_pid", 4), Some(4));
        assert_eq!(f.fields.len(), 9);
        let rst = Format::parse("\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;");
        assert_eq!(rst.offset("saddr", 28), Some(32));
    }

    #[test]
    fn older_layout_has_no_rx_sk_and_wrong_sizes_are_refused() {
        let f = Format::parse(KFREE_SKB_61);
        assert_eq!(f.offset("rx_sk", 8), None);
        assert_eq!(f.offset("reason", 4), Some(28));
        assert_eq!(f.offset("reason", 8), None);
    }
}
