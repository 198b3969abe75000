//! Builds `tcpq-ebpf` for the BPF target (the pinned stable toolchain with
//! `RUSTC_BOOTSTRAP=1` for `-Z build-std=core`, + bpf-linker) and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//! `AYA_BUILD_SKIP=1` skips it (clippy/check without the BPF toolchain); the
//! agent then embeds an empty object and refuses to trace.
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Must equal `channel` in rust-toolchain.toml (a unit test in xtask checks).
const TOOLCHAIN: &str = "1.95.0";

fn main() -> anyhow::Result<()> {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v == "true");
    if skip {
        std::fs::write(out.join("tcpq"), b"").context("write placeholder object")?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    // Keep the nested cargo's progress lines out of our build output
    // (aya-build turns each into a cargo warning); errors still show.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    // `-Z build-std=core` on the pinned stable toolchain: aya-build passes it
    // when RUSTC_BOOTSTRAP=1, and bpf-linker then links with rustc's own
    // LLVM 22 (a floating nightly's LLVM 23 makes it fail to dlopen).
    std::env::set_var("RUSTC_BOOTSTRAP", "1");
    println!("cargo:rerun-if-changed=../rust-toolchain.toml");
    reproducible(&out)?;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tcpq-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "tcpq-ebpf",
            root_dir: dir,
            ..Default::default()
        }],
        Toolchain::Custom(TOOLCHAIN),
    )
    .map_err(|e| {
        anyhow!(
            "building the eBPF object failed: {e:#}\n\
             (needs `rustup component add rust-src --toolchain {TOOLCHAIN}` and \
             `cargo install bpf-linker@0.10.2 --locked`; `cargo xtask setup` does both)"
        )
    })
}

/// The BPF object carries source paths (DWARF and the BTF line info): the
/// clone's directory, `CARGO_HOME`'s registry and the toolchain's rust-src.
/// Remapped to fixed names, two clones anywhere build the same bytes (the
/// agent's `bpf_object_is_reproducible` test holds the hash). aya-build sets
/// `CARGO_ENCODED_RUSTFLAGS` for its nested cargo, so the remapping rides
/// on a `RUSTC_WRAPPER` written here.
fn reproducible(out: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace")?
        .canonicalize()?;
    let cargo_home = match std::env::var_os("CARGO_HOME") {
        Some(h) => std::path::PathBuf::from(h),
        None => std::path::PathBuf::from(std::env::var_os("HOME").context("HOME")?).join(".cargo"),
    };
    let sysroot = std::process::Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"])
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .context("rustup run rustc --print sysroot")?;
    let sysroot = String::from_utf8(sysroot.stdout)?.trim().to_string();
    let quote = |p: &str| format!("'{}'", p.replace('\'', r"'\''"));
    let remap =
        |from: &str, to: &str| format!(" --remap-path-prefix={}", quote(&format!("{from}={to}")));
    let script = format!(
        "#!/bin/sh\n# Written by tcpq-agent/build.rs: rustc with source paths remapped.\nexec \"$@\"{}{}{}\n",
        remap(&workspace.to_string_lossy(), "/tcpq"),
        remap(&cargo_home.to_string_lossy(), "/cargo"),
        remap(&sysroot, "/rustc"),
    );
    let wrapper = out.join("rustc-remap");
    std::fs::write(&wrapper, script).context("writing the rustc wrapper")?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    std::env::set_var("RUSTC_WRAPPER", &wrapper);
    Ok(())
}
