//! Builds the eBPF objects (one per probe) from `agent-ebpf` for the BPF
//! target with the nightly toolchain and bpf-linker; `cargo xtask setup`
//! installs both.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "agent-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).context(
        "building the eBPF programs failed; `cargo xtask setup` installs the nightly \
         rust-src component and bpf-linker they need",
    )
}
