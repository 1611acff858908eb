//! Builds the eBPF programs (crate `gateway-ebpf`) with the nightly toolchain for the BPF target
//! and puts the objects in OUT_DIR, where `kernel.rs` embeds them.
//!
//! This does what `aya_build::build_ebpf` does, plus one codegen flag aya-build cannot pass
//! (it owns CARGO_ENCODED_RUSTFLAGS): LLVM's `allows-misaligned-mem-access`, which lets the
//! program load packet fields with word loads instead of byte by byte. The verifier accepts
//! misaligned packet and map access on architectures with efficient unaligned access (x86-64,
//! arm64, armv7); on the 64-byte benchmark frame it saves about 3 ns of ~20.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

const PACKAGE: &str = "gateway-ebpf";
const OBJECTS: &[&str] = &["gateway", "gateway-empty"];

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest.parent().context("workspace root")?.to_path_buf();
    for dir in ["gateway-ebpf", "gateway-common"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=GATEWAY_EBPF_TOOLCHAIN");
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }

    let out = PathBuf::from(env::var("OUT_DIR")?);
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "big" => "bpfeb-unknown-none",
        _ => "bpfel-unknown-none",
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let toolchain = env::var("GATEWAY_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());
    let target_dir = out.join("ebpf-target");

    let flags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        "-Ctarget-feature=+allows-misaligned-mem-access".into(),
    ];
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&workspace)
        .args([
            "run",
            &toolchain,
            "cargo",
            "build",
            "--package",
            PACKAGE,
            "--bins",
            "--release",
        ])
        .args(["--target", target, "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        // The outer build's compiler settings must not leak into the nightly BPF build.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR");
    let output = cmd.output().with_context(|| {
        format!("running {cmd:?} (is rustup installed? run `cargo xtask setup`)")
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in stderr.lines() {
            println!("cargo:warning={line}");
        }
        bail!(
            "building the eBPF programs failed ({}); `cargo xtask setup` installs nightly rust-src and bpf-linker\n{stderr}",
            output.status
        );
    }
    for name in OBJECTS {
        let built = target_dir.join(target).join("release").join(name);
        let dst = out.join(name);
        std::fs::copy(&built, &dst)
            .with_context(|| format!("copying {} to {}", built.display(), dst.display()))?;
    }
    Ok(())
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    let path = env::var_os("PATH").context("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| Path::new(p).is_file())
        .with_context(|| format!("{program} not found"))
}
