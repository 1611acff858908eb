//! `cargo xtask package`: the Debian package (dpkg-deb) — the release binary, the systemd unit,
//! `/etc/gateway/gateway.toml` (the embedded default, a conffile), a man page per verb and the
//! bash, zsh and fish completions (generated from the clap definitions by `gateway-docs`), and
//! maintainer scripts that take the filter off the interfaces on removal and never on upgrade.
//! Run as root it then installs the package, checks it, and removes it again (`install_test`).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

const VERSION: &str = env!("CARGO_PKG_VERSION");

const CONTROL: &str = "Package: gateway
Version: {version}
Architecture: {arch}
Maintainer: gateway maintainers <maintainers@gateway.invalid>
Section: net
Priority: optional
{depends}Installed-Size: {size}
Homepage: https://example.invalid/gateway
Description: DNS, TLS SNI and QUIC content filter in XDP for field gateways
 Reads the DNS query name and the TLS ClientHello server name of every
 device's traffic in the kernel (eBPF/XDP) and allows or blocks it per device
 policy: blocked queries are answered in XDP, blocked ClientHellos reset.
 The daemon compiles the configuration into kernel maps, swaps them
 atomically, and exports counters and a decision history. The filter keeps
 enforcing while the daemon is stopped or restarted.
";

/// Configures: reloads systemd, and restarts a running daemon after an upgrade (the new one
/// adopts the pinned filter). The service is not enabled: name the interfaces in
/// /etc/gateway/gateway.toml first, then `systemctl enable --now gateway`.
const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if systemctl is-active --quiet gateway.service; then
        systemctl restart gateway.service || true
    fi
fi
";

/// On removal (not on upgrade): stops the daemon and detaches the filter, removing its pins.
/// On upgrade the filter keeps enforcing while the package is replaced.
const PRERM: &str = "#!/bin/sh
set -e
case \"$1\" in
    remove|deconfigure)
        if [ -d /run/systemd/system ]; then
            systemctl stop gateway.service || true
        fi
        /usr/bin/gateway detach --config /etc/gateway/gateway.toml || true
        ;;
esac
";

/// On purge: the state (history, lifecycle, keys, token) goes too.
const POSTRM: &str = "#!/bin/sh
set -e
if [ \"$1\" = purge ]; then
    rm -rf /var/lib/gateway /run/gateway
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
";

fn write(path: &Path, contents: impl AsRef<[u8]>, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn gzip(path: &Path) -> anyhow::Result<()> {
    crate::step("gzip", &["-9n", &path.to_string_lossy()])
}

/// Kibibytes under `dir`, for `Installed-Size`.
fn size_kib(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => fs::read_dir(p)
                .map(|rd| rd.filter_map(Result::ok).map(|e| walk(&e.path())).sum())
                .unwrap_or(0),
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    }
    walk(dir).div_ceil(1024)
}

/// Builds `target/package/gateway_VERSION_ARCH.deb` for `arch` (`amd64`, the host's, or
/// `arm64`, cross-built); returns its path.
pub fn build(root: &Path, arch: &str) -> anyhow::Result<PathBuf> {
    crate::step(
        "cargo",
        &[
            "build",
            "--release",
            "--bin",
            "gateway",
            "--bin",
            "gateway-docs",
        ],
    )?;
    let release = root.join("target/release");
    let binary = match arch {
        "amd64" => release.join("gateway"),
        "arm64" => crate::arm64::cross_build(root)?,
        other => bail!("no package for architecture {other} (amd64, arm64)"),
    };
    let out = root.join("target/package");
    let stage = out.join(format!("gateway_{VERSION}_{arch}"));
    let _ = fs::remove_dir_all(&stage);

    write(
        &stage.join("usr/bin/gateway"),
        fs::read(&binary).context("the release binary")?,
        0o755,
    )?;
    let unit = fs::read_to_string(root.join("deploy/gateway.service"))?
        .replace("/usr/local/bin/gateway", "/usr/bin/gateway");
    write(
        &stage.join("lib/systemd/system/gateway.service"),
        unit,
        0o644,
    )?;
    write(
        &stage.join("etc/gateway/gateway.toml"),
        fs::read(root.join("gateway-user/src/config/default.toml"))?,
        0o644,
    )?;
    write(
        &stage.join("usr/share/doc/gateway/README.md"),
        fs::read(root.join("README.md"))?,
        0o644,
    )?;

    // Man pages and completions, from the clap definitions.
    let docs = out.join("docs");
    let _ = fs::remove_dir_all(&docs);
    let status = Command::new(release.join("gateway-docs"))
        .arg(&docs)
        .stderr(Stdio::null())
        .status()
        .context("running gateway-docs")?;
    if !status.success() {
        bail!("gateway-docs failed ({status})");
    }
    let man = stage.join("usr/share/man/man1");
    fs::create_dir_all(&man)?;
    for e in fs::read_dir(docs.join("man1"))? {
        let p = e?.path();
        let to = man.join(p.file_name().context("a man page's name")?);
        write(&to, fs::read(&p)?, 0o644)?;
        gzip(&to)?;
    }
    let completions = [
        (
            "gateway.bash",
            "usr/share/bash-completion/completions/gateway",
        ),
        ("_gateway", "usr/share/zsh/vendor-completions/_gateway"),
        (
            "gateway.fish",
            "usr/share/fish/vendor_completions.d/gateway.fish",
        ),
    ];
    for (from, to) in completions {
        write(
            &stage.join(to),
            fs::read(docs.join("completions").join(from))?,
            0o644,
        )?;
    }

    let debian = stage.join("DEBIAN");
    let size = size_kib(&stage);
    write(
        &debian.join("control"),
        CONTROL
            .replace("{version}", VERSION)
            .replace("{arch}", arch)
            .replace("{size}", &size.to_string())
            // The arm64 binary is static (it also runs in a bare initramfs).
            .replace(
                "{depends}",
                if arch == "amd64" {
                    "Depends: libc6 (>= 2.36)\n"
                } else {
                    ""
                },
            ),
        0o644,
    )?;
    write(
        &debian.join("conffiles"),
        "/etc/gateway/gateway.toml\n",
        0o644,
    )?;
    write(&debian.join("postinst"), POSTINST, 0o755)?;
    write(&debian.join("prerm"), PRERM, 0o755)?;
    write(&debian.join("postrm"), POSTRM, 0o755)?;

    let deb = out.join(format!("gateway_{VERSION}_{arch}.deb"));
    crate::step(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "--build",
            &stage.to_string_lossy(),
            &deb.to_string_lossy(),
        ],
    )?;
    Ok(deb)
}

/// `crate::output`, echoed.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    eprintln!("$ {program} {}", args.join(" "));
    crate::output(program, args)
}

/// A network namespace with a veth pair inside it, removed when dropped.
struct Netns(String);

impl Netns {
    fn new() -> anyhow::Result<Self> {
        let name = format!("gwpkg{}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Self(name);
        run(
            "ip",
            &[
                "-n", &ns.0, "link", "add", "pkg0", "type", "veth", "peer", "name", "pkg1",
            ],
        )?;
        run("ip", &["-n", &ns.0, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &ns.0, "link", "set", "pkg0", "up"])?;
        run("ip", &["-n", &ns.0, "link", "set", "pkg1", "up"])?;
        Ok(ns)
    }

    fn xdp_attached(&self) -> anyhow::Result<bool> {
        Ok(crate::output("ip", &["-n", &self.0, "link", "show", "pkg0"])?.contains("xdp"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Installs `deb`, checks it (`--version`, `systemd-analyze verify` of the unit, `gateway
/// check` of the installed configuration, man pages and completions, the filter attached to a
/// veth in a namespace of its own), upgrades it (the filter stays), removes it, and checks that
/// no pins and no XDP program are left and the daemon has exited.
pub fn install_test(deb: &Path) -> anyhow::Result<()> {
    let pins = Path::new("/sys/fs/bpf/gateway");
    if pins.exists() {
        bail!(
            "{} exists: a filter is installed on this machine; the install test would remove it",
            pins.display()
        );
    }
    run("dpkg", &["-i", &deb.to_string_lossy()])?;
    let result = (|| -> anyhow::Result<()> {
        let version = run("gateway", &["--version"])?;
        anyhow::ensure!(version.contains(VERSION), "gateway --version: {version}");
        run(
            "systemd-analyze",
            &["verify", "/lib/systemd/system/gateway.service"],
        )?;
        run(
            "gateway",
            &["check", "--config", "/etc/gateway/gateway.toml"],
        )?;
        anyhow::ensure!(
            Path::new("/usr/share/man/man1/gateway-run.1.gz").exists()
                && Path::new("/usr/share/bash-completion/completions/gateway").exists(),
            "man pages or completions missing"
        );

        // The installed filter attached (inside a namespace of the test's own).
        let ns = Netns::new()?;
        let mut daemon = Command::new("nsenter")
            .args([
                &format!("--net=/run/netns/{}", ns.0),
                "/usr/bin/gateway",
                "run",
                "--config",
                "/etc/gateway/gateway.toml",
                "--iface",
                "pkg0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the installed gateway")?;
        let started = Instant::now();
        while !(pins.exists() && ns.xdp_attached()?) {
            if started.elapsed() > Duration::from_secs(60) {
                let _ = daemon.kill();
                bail!("the installed gateway did not attach within 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // An upgrade (the same package again: prerm upgrade, postinst configure) leaves the
        // filter enforcing.
        run("dpkg", &["-i", &deb.to_string_lossy()])?;
        anyhow::ensure!(
            pins.exists() && ns.xdp_attached()?,
            "an upgrade detached the filter"
        );
        run("dpkg", &["-r", "gateway"])?;
        let left_pins = pins.exists();
        let left_xdp = ns.xdp_attached()?;
        // The daemon exits on its own once the filter is detached.
        let started = Instant::now();
        while daemon.try_wait()?.is_none() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let exited = daemon.try_wait()?.is_some();
        if !exited {
            let _ = daemon.kill();
        }
        let _ = daemon.wait();
        anyhow::ensure!(
            !left_pins,
            "pins left under {} after removal",
            pins.display()
        );
        anyhow::ensure!(
            !left_xdp,
            "an XDP program left on the interface after removal"
        );
        anyhow::ensure!(
            exited,
            "the daemon did not exit after the filter was detached"
        );
        Ok(())
    })();
    // Whatever happened: the package off the machine.
    let _ = Command::new("dpkg")
        .args(["--purge", "gateway"])
        .stdout(Stdio::null())
        .status();
    result?;
    eprintln!("package install test passed: {}", deb.display());
    Ok(())
}
