//! The kernel matrix: `cargo xtask test` runs it after the host's tests (`cargo xtask kernels`
//! alone). Debian's own 6.1 LTS and 6.12 LTS kernels, found through apt and downloaded once
//! (cached under `target/kernels/`), are booted under qemu (virtme-ng, TCG: these machines have
//! no KVM) on the host's filesystem, and inside each: `gateway check --kernel` (every feature
//! probed, every program verified), the kernel fixture tier (the fixture, DNS and TLS tests,
//! through BPF_PROG_TEST_RUN), and a namespace test with real traffic (`tests/kernels.rs`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// One kernel of the matrix.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-57-amd64`.
    pub release: String,
    /// The Debian package holding it.
    pub package: String,
}

/// The host tests the matrix runs inside each kernel: (package, test target).
const GUEST_TESTS: &[(&str, &str)] = &[
    ("gateway-user", "fixtures"),
    ("gateway-user", "dns"),
    ("gateway-user", "tls"),
    ("gateway-user", "evasion"),
    ("gateway-user", "http"),
    ("gateway-testbed", "kernels"),
    ("gateway-testbed", "evasion"),
];

/// Numbers of a version string, for ordering (`6.12.115+deb12` → [6, 12, 115, 12]).
fn numbers(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A Debian release's kernel: what `linux-image-amd64` depends on now (the number moves with
/// updates), if it is of the series `series` (`"6.1."`).
fn debian_default(depends: &str, series: &str) -> Option<String> {
    depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .filter_map(|p| p.strip_prefix("linux-image-"))
        .find(|r| r.starts_with(series) && r.ends_with("-amd64"))
        .map(str::to_string)
}

/// The newest Debian 12 build of 6.12, from `apt-cache search` lines.
fn newest_612(search: &str) -> Option<String> {
    search
        .lines()
        .filter_map(|l| l.split(" - ").next())
        .filter_map(|p| p.strip_prefix("linux-image-"))
        .filter_map(|p| p.strip_suffix("-unsigned"))
        .filter(|r| r.starts_with("6.12.") && r.ends_with("+deb12-amd64"))
        .max_by_key(|r| numbers(r))
        .map(str::to_string)
}

/// The kernels of the matrix, as apt knows them now; where apt cannot say (no network), the
/// ones already cached.
pub fn resolve(cache: &Path) -> anyhow::Result<Vec<Kernel>> {
    let of = |release: String| Kernel {
        package: format!("linux-image-{release}-unsigned"),
        release,
    };
    let lts61 = crate::output("apt-cache", &["depends", "linux-image-amd64"])
        .ok()
        .and_then(|d| debian_default(&d, "6.1."));
    let lts612 = crate::output(
        "apt-cache",
        &[
            "search",
            "--names-only",
            r"^linux-image-6\.12\..*-amd64-unsigned$",
        ],
    )
    .ok()
    .and_then(|s| newest_612(&s));
    let mut out = Vec::new();
    for (found, prefix) in [(lts61, "6.1."), (lts612, "6.12.")] {
        match found.or_else(|| cached(cache, prefix)) {
            Some(r) => out.push(of(r)),
            None => bail!("no Debian {prefix}x kernel package found (apt-cache) or cached"),
        }
    }
    Ok(out)
}

/// The newest kernel of the series `prefix` (`"6.1."`) unpacked in `cache`, if any.
fn cached(cache: &Path, prefix: &str) -> Option<String> {
    fs::read_dir(cache)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix) && n.ends_with("-amd64"))
        .filter(|n| cache.join(n).join(format!("boot/vmlinuz-{n}")).exists())
        .max_by_key(|n| numbers(n))
}

/// The kernel's image, downloaded and unpacked into `cache` unless it is there. Its modules stay
/// in the unpacked tree: virtme-ng finds them beside the image and links them into the guest's
/// `/lib/modules` (9p, veth), so the host's is not touched.
pub fn fetch(cache: &Path, k: &Kernel) -> anyhow::Result<PathBuf> {
    let dir = cache.join(&k.release);
    let vmlinuz = dir.join(format!("boot/vmlinuz-{}", k.release));
    if !vmlinuz.exists() {
        unpack_package(cache, &k.package, &dir)?;
    }
    Ok(vmlinuz)
}

/// Downloads the Debian package `spec` (`name` or `name:arch`) into `cache` with apt and
/// unpacks it into `dir` (whole or not at all: through a partial directory renamed at the end).
pub fn unpack_package(cache: &Path, spec: &str, dir: &Path) -> anyhow::Result<()> {
    unpack_package_with(cache, spec, dir, &[])
}

/// As `unpack_package`, with extra options for apt (another release's package lists).
fn unpack_package_with(cache: &Path, spec: &str, dir: &Path, apt: &[String]) -> anyhow::Result<()> {
    let name = spec.split(':').next().unwrap_or(spec);
    fs::create_dir_all(cache)?;
    eprintln!("downloading {spec}");
    let status = Command::new("apt-get")
        .args(apt)
        .args(["download", "-q", spec])
        .current_dir(cache)
        .status()
        .context("running apt-get download")?;
    if !status.success() {
        bail!("apt-get download {spec} failed ({status})");
    }
    let deb = fs::read_dir(cache)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("{spec} downloaded, but no .deb in {}", cache.display()))?;
    let mut partial = dir.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = fs::remove_dir_all(&partial);
    crate::step(
        "dpkg-deb",
        &["-x", &deb.to_string_lossy(), &partial.to_string_lossy()],
    )?;
    fs::rename(&partial, dir)?;
    fs::remove_file(&deb)?;
    Ok(())
}

/// The test executables to run in the guests, built for the host (the guest shares its files).
fn test_binaries(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (package, test) in GUEST_TESTS {
        let json = Command::new("cargo")
            .args([
                "test",
                "--no-run",
                "--message-format=json",
                "--package",
                package,
                "--test",
                test,
            ])
            .current_dir(root)
            .output()
            .context("running cargo test --no-run")?;
        if !json.status.success() {
            bail!("building the {package} test {test} failed");
        }
        let exe = String::from_utf8_lossy(&json.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"]["name"] == *test)
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
            .with_context(|| format!("no executable for the {package} test {test}"))?;
        out.push(exe);
    }
    Ok(out)
}

/// The script the guest runs: everything's output into `log`, the exit status into `rc`.
fn guest_script(root: &Path, bin: &Path, tests: &[PathBuf], log: &Path, rc: &Path) -> String {
    let mut s = format!(
        "#!/bin/sh\n\
         exec >{log} 2>&1\n\
         mount -t bpf bpf /sys/fs/bpf 2>/dev/null\n\
         cd {root}\n\
         export GATEWAY_BIN={bin}\n\
         rc=0\n\
         echo \"== $(uname -r): gateway check --kernel\"\n\
         {bin} check --kernel || rc=1\n",
        log = log.display(),
        root = root.display(),
        bin = bin.display(),
    );
    for t in tests {
        s.push_str(&format!(
            "echo \"== {t}\"\n{t} --test-threads=2 || rc=1\n",
            t = t.display()
        ));
    }
    s.push_str(&format!("echo $rc >{}\n", rc.display()));
    s
}

/// Debian 11's kernel (5.10: no `bpf_loop`), from bullseye's package lists kept in `cache`
/// (the system's own lists are not touched), or the one cached.
fn refused_kernel(cache: &Path) -> anyhow::Result<(Kernel, PathBuf)> {
    let apt_dir = cache.join("apt-bullseye");
    if let Some(release) = cached(cache, "5.10.") {
        let vmlinuz = cache.join(&release).join(format!("boot/vmlinuz-{release}"));
        let package = format!("linux-image-{release}-unsigned");
        return Ok((Kernel { release, package }, vmlinuz));
    }
    for d in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(apt_dir.join(d))?;
    }
    let sources = apt_dir.join("sources.list");
    fs::write(&sources, "deb http://deb.debian.org/debian bullseye main\n")?;
    let apt: Vec<String> = [
        format!("-o=Dir::Etc::SourceList={}", sources.display()),
        "-o=Dir::Etc::SourceParts=/dev/null".to_string(),
        format!("-o=Dir::State::Lists={}", apt_dir.join("lists").display()),
        format!("-o=Dir::Cache={}", apt_dir.join("cache").display()),
    ]
    .into();
    let args = |rest: &'static [&'static str]| -> Vec<&str> {
        apt.iter()
            .map(String::as_str)
            .chain(rest.iter().copied())
            .collect()
    };
    crate::output("apt-get", &args(&["update", "-qq"]))?;
    let depends = crate::output("apt-cache", &args(&["depends", "linux-image-amd64"]))?;
    let release =
        debian_default(&depends, "5.10.").context("no 5.10 kernel in bullseye's lists")?;
    let k = Kernel {
        package: format!("linux-image-{release}-unsigned"),
        release,
    };
    let dir = cache.join(&k.release);
    unpack_package_with(cache, &k.package, &dir, &apt)?;
    let vmlinuz = dir.join(format!("boot/vmlinuz-{}", k.release));
    Ok((k, vmlinuz))
}

/// Boots `vmlinuz` under qemu (virtme-ng, TCG, two CPUs, the host's filesystem) with `script`
/// as what the guest runs; `cache` is writable in the guest. `log` is the file the script opens
/// first: a guest that never created it never ran the script (it did not boot, or qemu failed),
/// which is the machine's fault, not the kernel's: that boot is tried once more, and a second
/// failure ends with the end of the guest's console.
fn boot(
    cache: &Path,
    release: &str,
    vmlinuz: &Path,
    script: &str,
    log: &Path,
) -> anyhow::Result<()> {
    let path = cache.join(format!("guest-{release}.sh"));
    fs::write(&path, script)?;
    crate::step("chmod", &["+x", &path.to_string_lossy()])?;
    let console = cache.join(format!("vng-{release}.err"));
    for attempt in 1..=2 {
        let _ = fs::remove_file(log);
        eprintln!("$ vng (kernel {release}) {}", path.display());
        let status = Command::new("vng")
            .args([
                "--disable-kvm",
                "--force-9p",
                // The kernel's console on stderr, kept for a guest that fails to boot.
                "--verbose",
                "-r",
                &vmlinuz.to_string_lossy(),
                "--memory",
                "2G",
                "--cpus",
                "2",
                &format!("--rwdir={}", cache.display()),
                "--exec",
                &path.to_string_lossy(),
            ])
            // Not our own: qemu opens the guest's stdout and stderr as files on /proc/self/fd/1
            // and 2, truncating them, and would empty a log the suite's output is redirected to.
            .stdout(fs::File::create(cache.join(format!("vng-{release}.out")))?)
            .stderr(fs::File::create(&console)?)
            .status()
            .context("running vng (virtme-ng)")?;
        // vng's exit status reflects the guest's shutdown, not the script's: callers read the
        // files the script wrote.
        eprintln!("vng exited with {status}");
        if log.exists() {
            return Ok(());
        }
        eprintln!(
            "kernel {release}: the guest never ran its script (attempt {attempt} of 2); its console ends:\n{}",
            tail(&console, 40)
        );
    }
    bail!(
        "kernel {release}: the guest did not run its script in two boots (console: {})",
        console.display()
    )
}

/// The last `n` lines of the file at `path` (empty if it cannot be read).
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// On a kernel without `bpf_loop`, `gateway check --kernel` and `gateway replay` refuse with
/// one line naming the kernel and the feature, and exit 2.
fn check_refusal(root: &Path, cache: &Path, bin: &Path) -> anyhow::Result<()> {
    let (k, vmlinuz) = refused_kernel(cache)?;
    let log = cache.join(format!("guest-{}.log", k.release));
    let capture = root.join("../shared/corpus/pcaps/dns/dns-https.pcap");
    let script = format!(
        "#!/bin/sh\n\
         exec >{log} 2>&1\n\
         mount -t bpf bpf /sys/fs/bpf 2>/dev/null\n\
         {bin} check --kernel; echo \"check exit $?\"\n\
         {bin} replay {capture}; echo \"replay exit $?\"\n",
        log = log.display(),
        bin = bin.display(),
        capture = capture.display(),
    );
    boot(cache, &k.release, &vmlinuz, &script, &log)?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let line = format!(
        "error: kernel {} has no bpf_loop (needs 5.17+; 6.1 LTS or newer is supported)",
        k.release
    );
    let refusals = text.lines().filter(|l| *l == line).count();
    if !(text.contains("check exit 2") && text.contains("replay exit 2") && refusals == 2) {
        bail!(
            "kernel {}: expected `{line}` and exit 2 from check --kernel and replay; got:\n{text}",
            k.release
        );
    }
    eprintln!(
        "kernel {}: refused by name (check --kernel and replay exit 2)",
        k.release
    );
    Ok(())
}

/// Boots each kernel of the matrix and runs the guest tests in it, after checking that a kernel
/// too old is refused by name; fails naming every kernel where something failed, with its log.
pub fn run(root: &Path) -> anyhow::Result<()> {
    let cache = root.join("target/kernels");
    let bin = root.join("target/debug/gateway");
    check_refusal(root, &cache, &bin)?;
    let kernels = resolve(&cache)?;
    let tests = test_binaries(root)?;
    let mut failed = Vec::new();
    for k in &kernels {
        let vmlinuz = fetch(&cache, k)?;
        let log = cache.join(format!("guest-{}.log", k.release));
        let rc = cache.join(format!("guest-{}.rc", k.release));
        let _ = fs::remove_file(&rc);
        boot(
            &cache,
            &k.release,
            &vmlinuz,
            &guest_script(root, &bin, &tests, &log, &rc),
            &log,
        )?;
        let code = fs::read_to_string(&rc).unwrap_or_default();
        let text = fs::read_to_string(&log).unwrap_or_default();
        let summary: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("== ") || l.starts_with("test result") || l.contains("loads"))
            .collect();
        eprintln!("kernel {}:\n  {}", k.release, summary.join("\n  "));
        // No file at all means the guest never ran the script.
        if code.trim() != "0" {
            eprintln!("{text}");
            failed.push(format!("{} (log: {})", k.release, log.display()));
        }
    }
    if !failed.is_empty() {
        bail!("the kernel matrix failed on {}", failed.join(", "));
    }
    eprintln!(
        "kernel matrix passed: {}",
        kernels
            .iter()
            .map(|k| k.release.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_are_found_in_apt_output() {
        assert_eq!(
            debian_default(
                "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n",
                "6.1."
            ),
            Some("6.1.0-57-amd64".to_string())
        );
        let search = "linux-image-6.12.107+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs\n\
                      linux-image-6.12.115+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs\n\
                      linux-image-6.12.113+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs\n\
                      linux-image-6.12.115+deb12-cloud-amd64-unsigned - Linux 6.12 cloud\n\
                      linux-image-6.12.115+deb12-rt-amd64-unsigned - PREEMPT_RT\n";
        assert_eq!(newest_612(search), Some("6.12.115+deb12-amd64".to_string()));
        assert!(numbers("6.12.9") < numbers("6.12.10"), "numeric order");
    }
}
