//! `cargo xtask setup`: makes a fresh machine of this kind (Debian 12, rustup with a nightly
//! toolchain) able to build and test the gateway. Each step checks first and does nothing when
//! its result is already there.

use std::process::Command;

use anyhow::{Context as _, bail};

/// The bpf-linker release that links with LLVM 22 (see TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// What bpf-linker needs to build against LLVM 22.
const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// What the tests, the demo and the benchmarks run.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",                      // ip, namespaces, veth
    "iputils-ping",                  // ping from simulated devices
    "ethtool",                       // offloads off on veths
    "util-linux",                    // nsenter
    "procps",                        // sysctl
    "bpftool",                       // inspecting programs and maps when a test fails
    "dnsmasq-base", // the DNS upstream of the namespace tests; a baseline of the benchmark
    "dnsutils",     // dig
    "knot-dnsutils", // kdig
    "tshark",       // the reference SNI of every corpus ClientHello
    "openssl",      // s_server upstream and s_client in the TLS namespace tests
    "gnutls-bin",   // gnutls-cli
    "curl",         // HTTPS client
    "socat",        // the HTTPS upstream of the TLS namespace tests
    "chromium",     // a real browser's two-segment ClientHello
    "dnsperf",      // the DNS benchmark's load
    "unbound",      // a baseline of the DNS benchmark
    "prometheus", // promtool checks a live /metrics scrape; the remote-write receiver of the shipping tests
    "qemu-system-x86", // the kernel matrix boots Debian's 6.1 and 6.12 under qemu
    "kmod",       // modprobe, which the matrix guests run from the host's filesystem
    "busybox-static", // virtme-ng's guest init
    "webext-ublock-origin-chromium", // EasyList and EasyPrivacy: real adblock lists for tests
    "nginx",      // serves lists by URL and fleet bundles (ETag, 304) in the download tests
    "minisign",   // signs fleet bundles in the fleet tests, as operators do
    "rsyslog",    // the syslog receiver (imtcp) of the history-shipping tests
    "rsyslog-gnutls", // its TLS (RFC 5425) driver
];

/// virtme-ng, which boots a kernel on the host's own filesystem (PyPI).
const VIRTME_NG: &str = "virtme-ng==1.42";

pub(crate) fn quiet(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    quiet("id", &["-u"]).is_some_and(|s| s.trim() == "0")
}

pub(crate) fn missing_packages(packages: &[&str]) -> Vec<String> {
    packages
        .iter()
        .filter(|p| {
            !quiet("dpkg-query", &["-W", "-f=${Status}", p])
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .map(|p| (*p).to_string())
        .collect()
}

pub(crate) fn apt_install(packages: &[String]) -> anyhow::Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `cargo xtask setup` as root",
            packages.join(" ")
        );
    }
    eprintln!("installing {}", packages.join(" "));
    crate::step("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(packages.iter().map(String::as_str));
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed ({status})", packages.join(" "));
    }
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    // 1. The nightly toolchain with rust-src (the eBPF crate is built with -Z build-std=core).
    let installed = quiet(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .context("the nightly toolchain is not installed (rustup toolchain install nightly)")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        crate::step(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    if !installed.lines().any(|l| l.starts_with("clippy")) {
        crate::step(
            "rustup",
            &["component", "add", "clippy", "--toolchain", "nightly"],
        )?;
    }

    // 2. bpf-linker, built against LLVM 22 from Debian's packages.
    let linker_ok =
        quiet("bpf-linker", &["--version"]).is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if !linker_ok {
        apt_install(&missing_packages(LLVM_PACKAGES))?;
        let path = format!(
            "{LLVM_PREFIX}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        eprintln!(
            "$ cargo install bpf-linker --version {BPF_LINKER_VERSION} --no-default-features --features llvm-22"
        );
        let status = Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", path)
            .status()
            .context("running cargo install bpf-linker")?;
        if !status.success() {
            bail!("installing bpf-linker failed ({status})");
        }
    }

    // 3. The tools the tests and the demo use.
    apt_install(&missing_packages(TEST_PACKAGES))?;

    // 4. virtme-ng for the kernel matrix.
    if quiet("vng", &["--version"]).is_none() {
        crate::step("python3", &["-m", "pip", "install", "-q", VIRTME_NG])?;
    }
    Ok(())
}
