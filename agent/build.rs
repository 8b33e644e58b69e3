//! Builds the eBPF objects (one per probe) from `agent-ebpf` for the BPF
//! target with the nightly toolchain and bpf-linker (`cargo xtask setup`
//! installs both), and the gRPC code for `proto/hostprobe/v1` with a
//! vendored protoc (no system protoc needed).
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let proto_root = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let proto = format!("{proto_root}/hostprobe/v1/hostprobe.proto");
    println!("cargo:rerun-if-changed={proto}");
    let protoc = protoc_bin_vendored::protoc_bin_path().context("the vendored protoc")?;
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .compile_protos(&[proto.as_str()], &[proto_root])
        .context("compiling proto/hostprobe/v1/hostprobe.proto")?;

    // aya-build forwards every line the nested cargo prints as a build
    // warning: quiet, it prints only what matters (compiler diagnostics).
    // SAFETY: as above.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
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
