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
