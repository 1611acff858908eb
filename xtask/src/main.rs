//! `cargo xtask`: setup, build, run, demo, test, kernels, package, bench.
//!
//! `setup` installs what the build and the tests need and does nothing when it is all there;
//! every other command calls it first, so a fresh machine needs no manual steps.

mod arm64;
mod bench_dns;
mod demo;
mod kernels;
mod layout;
mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, demo, test and benchmark the gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: nightly rust-src, LLVM 22 development files, bpf-linker, and the
    /// Debian tools the tests use. A no-op when everything is present.
    Setup,
    /// Build the daemon (with the eBPF programs embedded).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run the daemon on real interfaces (Ctrl-C stops it; the filter stays attached
    /// until `gateway detach`).
    Run {
        /// Interface to filter (repeatable).
        #[arg(long = "iface")]
        ifaces: Vec<String>,
        /// Configuration file (default: /etc/gateway/gateway.toml, else the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Detach the filter when the daemon exits.
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Namespaces with two simulated devices, the gateway and an upstream; live counters.
    Demo {
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 30)]
        duration: u64,
    },
    /// The whole test suite: formatting, lints, unit tests, kernel fixtures, namespace tests.
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// The kernel matrix (also the last step of `test`): Debian's 6.1 and 6.12 kernels booted
    /// under qemu, the kernel fixture tier and a namespace test inside each.
    Kernels,
    /// The layout check (also the first step of `test`): module docs, file sizes, and the
    /// daemon crate's import graph between folders, which it prints.
    Layout,
    /// arm64: the gateway cross-built, Debian's arm64 6.1 kernel under qemu-system-aarch64, and
    /// `gateway replay` of every corpus capture there compared with the host's, frame by frame.
    TestArm64,
    /// The Debian packages for amd64 and arm64 (target/package/), then, as root, the amd64
    /// one's install test: installed, checked, attached in a namespace, upgraded, removed,
    /// nothing left.
    Package,
    /// The benchmarks (release build), printed as tables with ratios to the baselines.
    Bench {
        /// Extra arguments for the benchmark binary (e.g. --json).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Build { release } => {
            setup::run()?;
            build(release)
        }
        Cmd::Run {
            ifaces,
            config,
            detach_on_exit,
        } => {
            setup::run()?;
            build(true)?;
            run(&ifaces, config.as_deref(), detach_on_exit)
        }
        Cmd::Demo { duration } => {
            setup::run()?;
            build(true)?;
            demo::run(&root().join("target/release/gateway"), duration)
        }
        Cmd::Test { filter } => {
            setup::run()?;
            test(filter.as_deref())
        }
        Cmd::Layout => layout::run(&root(), true),
        Cmd::Kernels => {
            setup::run()?;
            step("cargo", &["build", "--bins"])?;
            kernels::run(&root())
        }
        Cmd::TestArm64 => {
            setup::run()?;
            arm64::test(&root(), &root().join("../shared/corpus"))
        }
        Cmd::Package => {
            setup::run()?;
            let amd64 = package::build(&root(), "amd64")?;
            let arm64 = package::build(&root(), "arm64")?;
            eprintln!("built {} and {}", amd64.display(), arm64.display());
            package::install_test(&amd64)
        }
        Cmd::Bench { args } => {
            setup::run()?;
            bench(&args)
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs a command from the workspace root, echoing it; fails on a non-zero exit.
pub fn step(program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs a command quietly and returns its standard output; fails with its standard error.
pub fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn build(release: bool) -> anyhow::Result<()> {
    let mut args = vec!["build", "--bins"];
    if release {
        args.push("--release");
    }
    step("cargo", &args)
}

fn run(ifaces: &[String], config: Option<&Path>, detach_on_exit: bool) -> anyhow::Result<()> {
    let bin = root().join("target/release/gateway");
    let mut args: Vec<String> = vec!["run".into()];
    if let Some(c) = config {
        args.push("--config".into());
        args.push(c.display().to_string());
    }
    for i in ifaces {
        args.push("--iface".into());
        args.push(i.clone());
    }
    eprintln!("$ {} {}", bin.display(), args.join(" "));
    let status = Command::new(&bin)
        .args(&args)
        .status()
        .context("running gateway")?;
    if detach_on_exit {
        let mut d = Command::new(&bin);
        d.arg("detach");
        if let Some(c) = config {
            d.arg("--config").arg(c);
        }
        d.status().context("gateway detach")?;
    } else {
        eprintln!(
            "the filter stays attached; `{} detach` removes it",
            bin.display()
        );
    }
    if !status.success() {
        bail!("gateway run exited with {status}");
    }
    Ok(())
}

fn test(filter: Option<&str>) -> anyhow::Result<()> {
    layout::run(&root(), false)?;
    step("cargo", &["fmt", "--all", "--", "--check"])?;
    // The default members (everything but the eBPF crate) on the host...
    step(
        "cargo",
        &["clippy", "--all-targets", "--", "-D", "warnings"],
    )?;
    // ...and the eBPF crate for its real target, where its inline asm and globals live.
    step(
        "rustup",
        &[
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "gateway-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The namespace tests start the daemon binary.
    step("cargo", &["build", "--bins"])?;
    let bin = root().join("target/debug/gateway");
    let mut args = vec!["test", "--no-fail-fast"];
    if let Some(f) = filter {
        args.push(f);
    }
    eprintln!("$ GATEWAY_BIN={} cargo {}", bin.display(), args.join(" "));
    let status = Command::new("cargo")
        .args(&args)
        .env("GATEWAY_BIN", &bin)
        .current_dir(root())
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    // The same kernel tier on the other supported kernels (a filtered run is a developer's).
    if filter.is_none() {
        kernels::run(&root())?;
    }
    eprintln!("all tests passed");
    Ok(())
}

fn bench(args: &[String]) -> anyhow::Result<()> {
    build(true)?;
    let mut a: Vec<&str> = vec![
        "run",
        "--release",
        "--quiet",
        "--package",
        "gateway-bench",
        "--",
    ];
    a.extend(args.iter().map(String::as_str));
    step("cargo", &a)?;
    if !args.iter().any(|a| a == "--json") {
        bench_dns::run(&bench_dns::corpus())?;
    }
    Ok(())
}
