//! arm64: the gateway cross-built for `aarch64-unknown-linux-gnu` (static, Debian's cross gcc),
//! and `cargo xtask test-arm64`: Debian's arm64 6.1 kernel booted under `qemu-system-aarch64`
//! (TCG) on an initramfs of our making (busybox, the arm64 gateway, the corpus captures and a
//! policy), `gateway replay` of every capture inside, compared frame by frame with the same
//! replays on the host.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

pub const TARGET: &str = "aarch64-unknown-linux-gnu";
const CROSS_PACKAGES: &[&str] = &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"];
const GUEST_PACKAGES: &[&str] = &["qemu-system-arm", "cpio"];

/// Installs what the cross build needs (the Rust target, Debian's cross gcc and libc).
pub fn setup() -> anyhow::Result<()> {
    let targets =
        crate::setup::quiet("rustup", &["target", "list", "--installed"]).unwrap_or_default();
    if !targets.lines().any(|l| l.trim() == TARGET) {
        crate::step("rustup", &["target", "add", TARGET])?;
    }
    crate::setup::apt_install(&crate::setup::missing_packages(CROSS_PACKAGES))
}

/// Builds the gateway for arm64, statically linked (it runs in a bare initramfs, and on any
/// arm64 Debian); returns the binary.
pub fn cross_build(root: &Path) -> anyhow::Result<PathBuf> {
    setup()?;
    eprintln!("$ cargo build --release --target {TARGET} --bin gateway (static)");
    let status = Command::new("cargo")
        .args(["build", "--release", "--target", TARGET, "--bin", "gateway"])
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "aarch64-linux-gnu-gcc",
        )
        .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
        .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar")
        // Only the target's artifacts: build scripts run on the host.
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .current_dir(root)
        .status()
        .context("running cargo build for arm64")?;
    if !status.success() {
        bail!("the arm64 build failed ({status})");
    }
    Ok(root.join(format!("target/{TARGET}/release/gateway")))
}

/// Downloads (once) and unpacks an arm64 Debian package into `cache/<name>`.
fn arm64_package(cache: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let dir = cache.join(package);
    if dir.exists() {
        return Ok(dir);
    }
    let foreign =
        crate::setup::quiet("dpkg", &["--print-foreign-architectures"]).unwrap_or_default();
    if !foreign.lines().any(|l| l.trim() == "arm64") {
        crate::step("dpkg", &["--add-architecture", "arm64"])?;
        crate::step("apt-get", &["update", "-qq"])?;
    }
    crate::kernels::unpack_package(cache, &format!("{package}:arm64"), &dir)?;
    Ok(dir)
}

/// Every capture of the corpus.
fn captures(corpus: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for sub in ["dns", "tls", "quic"] {
        for e in fs::read_dir(corpus.join("pcaps").join(sub))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "pcap" || x == "pcapng") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `gateway replay --json` of `capture` on the host: its lines.
fn host_replay(bin: &Path, config: &Path, capture: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(bin)
        .args(["replay", "--json", "--config"])
        .arg(config)
        .arg(capture)
        .stderr(Stdio::null())
        .output()
        .context("running gateway replay")?;
    if !out.status.success() {
        bail!(
            "host replay of {} failed ({})",
            capture.display(),
            out.status
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// A policy that blocks every other name the captures ask for (sorted), so both verdicts occur.
fn policy_blocking_half(names: &BTreeSet<String>) -> String {
    let blocked: Vec<String> = names.iter().step_by(2).map(|n| format!("{n:?}")).collect();
    format!(
        "[[policy]]\nname = \"default\"\nblock = [{}]\n",
        blocked.join(", ")
    )
}

/// The guest's `/init`: mounts, runs every replay (two at a time: the guest has two CPUs),
/// prints each capture's lines between markers, powers off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t bpf bpf /sys/fs/bpf
mount -t devtmpfs dev /dev
echo "@@ KERNEL $(uname -r) $(uname -m)"
n=0
for f in /corpus/*; do
  b=$(basename $f)
  ( /gateway replay --json --config /config.toml $f >/tmp/$b.out 2>/tmp/$b.err; echo $? >/tmp/$b.rc ) &
  n=$((n + 1))
  if [ $((n % 2)) -eq 0 ]; then wait; fi
done
wait
for f in /corpus/*; do
  b=$(basename $f)
  echo "@@ FILE $b rc=$(cat /tmp/$b.rc)"
  cat /tmp/$b.out
  sed 's/^/@@ ERR /' /tmp/$b.err
done
echo "@@ END"
poweroff -f
"#;

/// `cargo xtask test-arm64`.
pub fn test(root: &Path, corpus: &Path) -> anyhow::Result<()> {
    crate::setup::apt_install(&crate::setup::missing_packages(GUEST_PACKAGES))?;
    let arm_bin = cross_build(root)?;
    crate::step("cargo", &["build", "--bin", "gateway"])?;
    let host_bin = root.join("target/debug/gateway");
    let work = root.join("target/arm64");
    let cache = work.join("cache");
    // The kernel: Debian 12's, as on amd64 (the same version number for arm64).
    let release = crate::kernels::resolve(&root.join("target/kernels"))?
        .into_iter()
        .find(|k| k.release.starts_with("6.1."))
        .context("no 6.1 kernel found")?
        .release
        .replace("-amd64", "-arm64");
    let kernel = arm64_package(&cache, &format!("linux-image-{release}-unsigned"))?;
    let image = kernel.join(format!("boot/vmlinuz-{release}"));
    let busybox = arm64_package(&cache, "busybox-static")?.join("bin/busybox");

    // The policy: half of the names the captures ask for, found by a replay without one.
    let captures = captures(corpus)?;
    fs::create_dir_all(&work)?;
    let open = work.join("open.toml");
    fs::write(&open, "[[policy]]\nname = \"default\"\n")?;
    let mut names = BTreeSet::new();
    for c in &captures {
        for line in host_replay(&host_bin, &open, c)? {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(n) = v["name"].as_str()
                && !n.is_empty()
            {
                names.insert(n.to_string());
            }
        }
    }
    let config = work.join("config.toml");
    fs::write(&config, policy_blocking_half(&names))?;

    // The initramfs.
    let tree = work.join("initramfs");
    let _ = fs::remove_dir_all(&tree);
    for d in ["bin", "corpus", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(tree.join(d))?;
    }
    fs::copy(&busybox, tree.join("bin/busybox"))?;
    fs::copy(&arm_bin, tree.join("gateway"))?;
    fs::copy(&config, tree.join("config.toml"))?;
    for c in &captures {
        fs::copy(
            c,
            tree.join("corpus")
                .join(c.file_name().context("capture name")?),
        )?;
    }
    fs::write(tree.join("init"), INIT)?;
    crate::step(
        "chmod",
        &[
            "-R",
            "+x",
            &tree.join("init").to_string_lossy(),
            &tree.join("bin").to_string_lossy(),
            &tree.join("gateway").to_string_lossy(),
        ],
    )?;
    let initrd = work.join("initrd.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            tree.display(),
            initrd.display()
        ))
        .status()
        .context("running cpio")?;
    if !status.success() {
        bail!("building the initramfs failed ({status})");
    }

    eprintln!(
        "$ qemu-system-aarch64 (kernel {release}, {} captures)",
        captures.len()
    );
    let out = Command::new("qemu-system-aarch64")
        .args(["-M", "virt", "-cpu", "max", "-smp", "2", "-m", "2G"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(&image)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyAMA0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .output()
        .context("running qemu-system-aarch64")?;
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    fs::write(work.join("console.txt"), &console)?;
    compare(&console, &captures, |c| host_replay(&host_bin, &config, c))
}

/// Compares each capture's guest lines (between `@@ FILE` markers of `console`) with the host's.
fn compare(
    console: &str,
    captures: &[PathBuf],
    host: impl Fn(&Path) -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<()> {
    let kernel = console
        .lines()
        .find_map(|l| l.strip_prefix("@@ KERNEL "))
        .context("the guest did not start (no @@ KERNEL line; see target/arm64/console.txt)")?;
    anyhow::ensure!(
        console.lines().any(|l| l == "@@ END"),
        "the guest stopped before the end (see target/arm64/console.txt)"
    );
    let mut frames = 0;
    let mut blocked = 0;
    for c in captures {
        let name = c
            .file_name()
            .and_then(|n| n.to_str())
            .context("capture name")?;
        let mut lines = console
            .lines()
            .skip_while(|l| !l.starts_with(&format!("@@ FILE {name} ")));
        let header = lines
            .next()
            .with_context(|| format!("{name}: no output from the guest"))?;
        let guest: Vec<&str> = lines
            .take_while(|l| !l.starts_with("@@ FILE ") && *l != "@@ END")
            .filter(|l| l.starts_with('{'))
            .collect();
        if !header.ends_with("rc=0") {
            let errors: Vec<&str> = console
                .lines()
                .filter(|l| l.starts_with("@@ ERR "))
                .collect();
            bail!(
                "{name}: replay failed on arm64 ({header}):\n{}",
                errors.join("\n")
            );
        }
        let want = host(c)?;
        anyhow::ensure!(
            guest.len() == want.len(),
            "{name}: {} frames on arm64, {} on the host",
            guest.len(),
            want.len()
        );
        for (i, (g, h)) in guest.iter().zip(&want).enumerate() {
            anyhow::ensure!(g == h, "{name} frame {}: arm64 {g}\n  host {h}", i + 1);
        }
        frames += want.len();
        blocked += want
            .iter()
            .filter(|l| l.contains("\"action\":\"block\""))
            .count();
    }
    eprintln!(
        "arm64 ({kernel}): {frames} frames of {} captures decided as on the host, {blocked} of them blocked",
        captures.len()
    );
    Ok(())
}
