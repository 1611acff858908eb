//! The gateway under test: its binary, the empty XDP object, a pin and state directory per
//! test, and `gateway run` in a namespace.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{Netns, check, unique};

/// The pass-only XDP object the build produces (`gateway-empty`): `$GATEWAY_EMPTY_OBJ`, else
/// the newest one under the workspace's target directory.
/// How long `Daemon::start` waits for the daemon to be ready.
const READY_WITHIN_S: u64 = 180;

pub fn empty_xdp_object() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("GATEWAY_EMPTY_OBJ") {
        return Ok(PathBuf::from(p));
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for profile in ["debug", "release"] {
        let Ok(dirs) = fs::read_dir(target.join(profile).join("build")) else {
            continue;
        };
        for d in dirs.filter_map(Result::ok) {
            let p = d.path().join("out/gateway-empty");
            if let Ok(t) = fs::metadata(&p).and_then(|m| m.modified())
                && best.as_ref().is_none_or(|(bt, _)| t > *bt)
            {
                best = Some((t, p));
            }
        }
    }
    best.map(|(_, p)| p).ok_or_else(|| {
        anyhow!(
            "no gateway-empty object under {}: build first (cargo xtask test does)",
            target.display()
        )
    })
}

/// The `gateway` binary under test: `$GATEWAY_BIN`, else the workspace's debug build (which
/// `cargo xtask test` builds first).
pub fn gateway_bin() -> PathBuf {
    match std::env::var_os("GATEWAY_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/gateway"),
    }
}

/// A bpffs directory and a state directory for one test, removed (with `gateway detach`) on
/// drop.
pub struct Pins {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// `[gateway] state_dir`: the history database and the pseudonymisation key.
    pub state_dir: PathBuf,
    /// The `gateway` binary used for this directory (`gateway_bin()` unless replaced).
    pub bin: PathBuf,
}

impl Pins {
    /// A unique pin directory, state directory and a configuration file that uses them.
    /// `body` is the rest of the configuration; `[gateway]` with `bpffs` and `state_dir` is
    /// prepended.
    pub fn with_config(gateway_section: &str, body: &str) -> anyhow::Result<Self> {
        let name = unique("gwtest");
        let pins = Self {
            dir: PathBuf::from("/sys/fs/bpf").join(&name),
            config: std::env::temp_dir().join(format!("{name}.toml")),
            state_dir: std::env::temp_dir().join(format!("{name}-state")),
            bin: gateway_bin(),
        };
        pins.rewrite(gateway_section, body)?;
        Ok(pins)
    }

    /// Rewrites the configuration (for reloads).
    pub fn rewrite(&self, gateway_section: &str, body: &str) -> anyhow::Result<()> {
        fs::write(
            &self.config,
            format!(
                "[gateway]\nbpffs = \"{}\"\nstate_dir = \"{}\"\n{gateway_section}\n{body}",
                self.dir.display(),
                self.state_dir.display()
            ),
        )?;
        Ok(())
    }

    /// `gateway <verb> --config <this> args` on the host.
    pub fn gateway(&self, verb: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut c = Command::new(&self.bin);
        c.arg(verb).arg("--config").arg(&self.config).args(args);
        c.output().with_context(|| {
            format!(
                "running {} (build it first: cargo xtask test does)",
                self.bin.display()
            )
        })
    }

    /// `gateway <verb> --config <this> args` in `ns` (the verbs that talk to the daemon's API
    /// on its loopback address).
    pub fn gateway_in(&self, ns: &Netns, verb: &str, args: &[&str]) -> anyhow::Result<Output> {
        ns.command(&self.bin)
            .arg(verb)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .with_context(|| format!("running {} {verb}", self.bin.display()))
    }

    /// `gateway stats --json`, parsed.
    pub fn stats(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.gateway("stats", &["--json"])?;
        let text = check("gateway stats", out)?;
        Ok(serde_json::from_str(&text)?)
    }

    /// A device's counters from `stats`: (packets, bytes, dropped packets).
    pub fn device(&self, name: &str) -> anyhow::Result<(u64, u64, u64)> {
        let s = self.stats()?;
        let row = s["devices"]
            .as_array()
            .and_then(|a| a.iter().find(|d| d["device"] == name))
            .ok_or_else(|| anyhow!("device {name} not in stats: {s}"))?;
        let n = |k: &str| row[k].as_u64().unwrap_or(0);
        Ok((n("packets"), n("bytes"), n("dropped_packets")))
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = self.gateway("detach", &[]);
        }
        let _ = fs::remove_file(&self.config);
        let _ = fs::remove_dir_all(&self.state_dir);
    }
}

/// A `gateway run` process inside a namespace, SIGKILLed on drop if still running.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `gateway run --config <pins.config>` in `ns` and waits for it to report ready
    /// (sd_notify `READY=1`) with `ifaces` attached. Logs at debug level for the daemon and the
    /// history (every decision event), which tests read.
    pub fn start(ns: &Netns, pins: &Pins, ifaces: &[&str]) -> anyhow::Result<Self> {
        Self::start_logging(
            ns,
            pins,
            ifaces,
            "info,gateway_user::daemon=debug,gateway_user::observe::history=debug",
        )
    }

    /// `start`, logging as `rust_log` says (`RUST_LOG` syntax; "info" is what a deployed
    /// gateway logs).
    pub fn start_logging(
        ns: &Netns,
        pins: &Pins,
        ifaces: &[&str],
        rust_log: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(ns, pins, ifaces, rust_log, &[])
    }

    /// `start_logging`, with more arguments for `gateway run`.
    pub fn start_with(
        ns: &Netns,
        pins: &Pins,
        ifaces: &[&str],
        rust_log: &str,
        run_args: &[&str],
    ) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!("{}.log", unique("gwdaemon")));
        let file = fs::File::create(&log)?;
        let socket_path = std::env::temp_dir().join(format!("{}.sock", unique("gwnotify")));
        let notify = std::os::unix::net::UnixDatagram::bind(&socket_path)?;
        notify.set_read_timeout(Some(Duration::from_millis(100)))?;
        let child = ns
            .command(&pins.bin)
            .args(["run", "--config"])
            .arg(&pins.config)
            .args(run_args)
            .env("RUST_LOG", rust_log)
            .env("NOTIFY_SOCKET", &socket_path)
            // Lists by URL are fetched from servers in the bed only, never through a proxy
            // the host's environment may name.
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("all_proxy")
            .env_remove("ALL_PROXY")
            .stdout(file.try_clone()?)
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} run", pins.bin.display()))?;
        let mut d = Self {
            child: Some(child),
            log,
        };
        // Generous: the kernel matrix runs this under qemu without KVM, where verifying the
        // three programs alone takes tens of seconds; on the host the daemon is ready in ~2 s.
        let deadline = Instant::now() + Duration::from_secs(READY_WITHIN_S);
        let mut buf = [0u8; 512];
        let ready = loop {
            if let Some(c) = d.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                break Err(anyhow!("gateway run exited ({status}):\n{}", d.log_text()));
            }
            if let Ok(n) = notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
            {
                break Ok(());
            }
            if Instant::now() > deadline {
                break Err(anyhow!(
                    "gateway run did not report ready within {READY_WITHIN_S} s:\n{}",
                    d.log_text()
                ));
            }
        };
        let _ = fs::remove_file(&socket_path);
        ready?;
        for iface in ifaces {
            if !ns.has_xdp(iface)? {
                bail!(
                    "gateway run reported ready but {iface} has no XDP program:\n{}",
                    d.log_text()
                );
            }
        }
        Ok(d)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let pid = self.pid().context("not running")? as i32;
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for the daemon to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut().context("not running")?;
        loop {
            if let Some(status) = c.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("gateway run still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        let _ = fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A failing test shows what the daemon said.
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log ({}) ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        let _ = fs::remove_file(&self.log);
    }
}
