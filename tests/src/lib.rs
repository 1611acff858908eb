//! A test bed of network namespaces: simulated devices, the gateway, and an upstream, joined by
//! veth pairs. Used by the integration tests in this crate and by `cargo xtask demo`.
//!
//! Every namespace and bpffs directory gets a unique name and is removed when its guard drops,
//! also when a test fails. Commands run inside a namespace through `nsenter --net`, which keeps
//! the host's mounts (`ip netns exec` would remount /sys and hide bpffs). Traffic only ever goes
//! to addresses inside the namespaces made here.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `<prefix><pid>x<n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails unless running as root.
pub fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("network-namespace tests need root (CI runs `cargo xtask test` as root)");
    }
    Ok(())
}

/// The standard output of `what`, which must have succeeded.
pub fn check(what: &str, out: Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args` on the host and returns its stdout; fails on a non-zero exit.
pub fn host(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    check(&format!("{program} {}", args.join(" ")), out)
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let name = unique(prefix);
        host("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `program args` inside; stdout, or an error with stderr on failure.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.name))?;
        check(
            &format!("[{}] {program} {}", self.name, args.join(" ")),
            out,
        )
    }

    /// Runs `program args` inside and returns the whole output, whatever the exit status.
    pub fn output(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.name))
    }

    /// `ip -n <ns> args`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        host("ip", &a)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.run("sysctl", &["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// The MAC address of `iface`.
    pub fn mac(&self, iface: &str) -> anyhow::Result<String> {
        let out = self.ip(&["-br", "link", "show", iface])?;
        out.split_whitespace()
            .nth(2)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no MAC in {out:?}"))
    }

    /// An interface counter (`tx_packets`, `rx_bytes`, ...), from `ip -s -j link`. (Not from
    /// /sys/class/net: under `nsenter --net` that still shows the host's interfaces.)
    pub fn stat(&self, iface: &str, counter: &str) -> anyhow::Result<u64> {
        let out = self.ip(&["-s", "-j", "link", "show", iface])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let (dir, name) = counter
            .split_once('_')
            .ok_or_else(|| anyhow!("counter {counter}: expected tx_* or rx_*"))?;
        v[0]["stats64"][dir][name]
            .as_u64()
            .ok_or_else(|| anyhow!("no {counter} in {out}"))
    }

    /// Whether an XDP program is attached to `iface`.
    pub fn has_xdp(&self, iface: &str) -> anyhow::Result<bool> {
        let out = self.ip(&["-d", "link", "show", iface])?;
        Ok(out.contains("prog/xdp"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever still runs inside (clients, servers), then delete it.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill has no memory-safety preconditions.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Joins `a:a_if` and `b:b_if` with a veth pair, brings both up, and turns offloads off so
/// segments cross it as they would a wire.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])?;
    for (ns, iface) in [(a, a_if), (b, b_if)] {
        ns.ip(&["link", "set", iface, "up"])?;
        // Best effort: not every offload exists on every kernel.
        let _ = ns.output(
            "ethtool",
            &[
                "-K", iface, "tso", "off", "gso", "off", "gro", "off", "tx", "off", "rx", "off",
            ],
        );
    }
    Ok(())
}

/// A device namespace on the bed.
pub struct Device {
    pub ns: Netns,
    /// Its address.
    pub ip: String,
    /// The MAC of its interface (`eth0`).
    pub mac: String,
    /// The gateway-side interface facing it.
    pub gw_if: String,
}

/// Two (or more) devices, a gateway and an upstream:
///
/// ```text
/// dev<i>:eth0 10.201.<i>.2/24 -- gw:d<i> 10.201.<i>.1/24
///                                  gw:up0 10.201.99.1/24 -- up:eth0 10.201.99.2/24
/// ```
/// IPv6 is off on the devices and neighbours are static, so devices send exactly what a test
/// makes them send.
pub struct Bed {
    pub devices: Vec<Device>,
    pub gw: Netns,
    pub up: Netns,
    pub upstream_ip: String,
}

impl Bed {
    pub fn new(devices: usize) -> anyhow::Result<Self> {
        require_root()?;
        let gw = Netns::new("gwg")?;
        let up = Netns::new("gwu")?;
        gw.sysctl("net.ipv4.ip_forward", "1")?;
        veth(&gw, "up0", &up, "eth0")?;
        gw.ip(&["addr", "add", "10.201.99.1/24", "dev", "up0"])?;
        up.ip(&["addr", "add", "10.201.99.2/24", "dev", "eth0"])?;
        up.ip(&["route", "add", "10.201.0.0/16", "via", "10.201.99.1"])?;
        let mut list = Vec::new();
        for i in 1..=devices {
            let ns = Netns::new("gwd")?;
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
            let gw_if = format!("d{i}");
            veth(&ns, "eth0", &gw, &gw_if)?;
            // Frames the gateway answers with XDP_TX are delivered to a veth peer promptly only
            // if the peer runs an XDP program itself (otherwise they wait in its ring for the
            // next poll). The project's pass-only program serves.
            let obj = empty_xdp_object()?;
            ns.ip(&[
                "link",
                "set",
                "dev",
                "eth0",
                "xdpdrv",
                "obj",
                &obj.to_string_lossy(),
                "sec",
                "xdp",
            ])?;
            let ip = format!("10.201.{i}.2");
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            gw.ip(&["addr", "add", &format!("10.201.{i}.1/24"), "dev", &gw_if])?;
            ns.ip(&["route", "add", "default", "via", &format!("10.201.{i}.1")])?;
            let mac = ns.mac("eth0")?;
            let gw_mac = gw.mac(&gw_if)?;
            ns.ip(&[
                "neigh",
                "replace",
                &format!("10.201.{i}.1"),
                "lladdr",
                &gw_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
            gw.ip(&[
                "neigh",
                "replace",
                &ip,
                "lladdr",
                &mac,
                "dev",
                &gw_if,
                "nud",
                "permanent",
            ])?;
            list.push(Device { ns, ip, mac, gw_if });
        }
        Ok(Self {
            devices: list,
            gw,
            up,
            upstream_ip: "10.201.99.2".into(),
        })
    }

    /// The `[gateway]` lines of `two_device_config`.
    pub const TWO_DEVICE_GATEWAY: &'static str = "unknown_devices = \"guest\"";

    /// A configuration body for a two-device bed: the filter on `d1` and `d2`, the first device
    /// ("laptop") known by its MAC, the second ("sensor") by its address, both in policy
    /// "students"; devices in no inventory get "guest".
    pub fn two_device_config(&self, sensor_suspended: bool) -> String {
        self.two_device_config_with(sensor_suspended, "", "")
    }

    /// As `two_device_config`, with `students` lines added to the "students" policy and
    /// `extra` tables (categories) appended.
    pub fn two_device_config_with(
        &self,
        sensor_suspended: bool,
        students: &str,
        extra: &str,
    ) -> String {
        let (laptop, sensor) = (&self.devices[0], &self.devices[1]);
        format!(
            r#"
[[interface]]
name = "{}"

[[interface]]
name = "{}"

[[policy]]
name = "guest"

[[policy]]
name = "students"
{students}

[[device]]
name = "laptop"
mac = "{}"
policy = "students"
type = "laptop"

[[device]]
name = "sensor"
ip = "{}"
policy = "students"
type = "iot"
suspended = {sensor_suspended}

{extra}
"#,
            laptop.gw_if, sensor.gw_if, laptop.mac, sensor.ip
        )
    }

    /// Pings the upstream `count` times from device `i` (0-based); returns replies received.
    pub fn ping(&self, i: usize, count: u32) -> anyhow::Result<u32> {
        let dev = self.devices.get(i).context("no such device")?;
        let out = dev.ns.output(
            "ping",
            &[
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.05",
                "-W",
                "1",
                &self.upstream_ip,
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let received = text
            .lines()
            .find(|l| l.contains("received"))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("unexpected ping output: {text}"))?;
        Ok(received)
    }
}

/// A dnsmasq in `ns` answering on `addr`:53, logging every query it receives.
pub struct Dnsmasq {
    child: Child,
    pub log: PathBuf,
}

impl Dnsmasq {
    /// Answers `A` queries for each `(name, address)` (and its subdomains); NXDOMAIN otherwise.
    pub fn start(ns: &Netns, addr: &str, records: &[(&str, &str)]) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!("{}.log", unique("gwdnsmasq")));
        let mut args = vec![
            "--keep-in-foreground".to_string(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={addr}"),
            "--log-queries".into(),
            format!("--log-facility={}", log.display()),
            "--user=root".into(),
            "--pid-file=".into(),
        ];
        for (name, ip) in records {
            args.push(format!("--address=/{name}/{ip}"));
        }
        let child = ns
            .command("dnsmasq")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq")?;
        let d = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ns
            .run("ss", &["-uln"])
            .map(|o| o.contains(&format!("{addr}:53")))
            .unwrap_or(false)
        {
            if Instant::now() > deadline {
                bail!("dnsmasq did not start listening on {addr}:53");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    /// The names dnsmasq was asked for (its query log).
    pub fn queries(&self) -> Vec<String> {
        let mut s = String::new();
        let _ = fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s.lines()
            .filter_map(|l| l.split_once("query[").map(|(_, rest)| rest))
            .filter_map(|rest| rest.split_whitespace().nth(1).map(str::to_lowercase))
            .collect()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
    }
}

/// A DNS lookup's outcome: the status (NOERROR, NXDOMAIN, ...) and the answer addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub status: String,
    pub answers: Vec<String>,
}

/// `dig` (or `kdig`) from `ns`: `server`, `name`, `qtype`.
pub fn dig(
    ns: &Netns,
    tool: &str,
    server: &str,
    name: &str,
    qtype: &str,
) -> anyhow::Result<Lookup> {
    // The two tools spell the same options differently; both print "status: X" in the header.
    let (retry, timeout, header) = if tool == "kdig" {
        ("+retry=0", "+timeout=2", "+header")
    } else {
        ("+tries=1", "+time=2", "+comments")
    };
    let out = ns.output(
        tool,
        &[
            &format!("@{server}"),
            name,
            qtype,
            retry,
            timeout,
            "+noall",
            header,
            "+answer",
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split([',', ';']).next())
        .map(|s| s.trim().to_string())
        .ok_or_else(|| anyhow!("{tool} {name} {qtype}: no status in {text:?}"))?;
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter(|l| l.split_whitespace().count() >= 4)
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    Ok(Lookup { status, answers })
}

/// The pass-only XDP object the build produces (`gateway-empty`): `$GATEWAY_EMPTY_OBJ`, else
/// the newest one under the workspace's target directory.
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
            "info,gateway_user::daemon=debug,gateway_user::history=debug",
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
        let log = std::env::temp_dir().join(format!("{}.log", unique("gwdaemon")));
        let file = fs::File::create(&log)?;
        let socket_path = std::env::temp_dir().join(format!("{}.sock", unique("gwnotify")));
        let notify = std::os::unix::net::UnixDatagram::bind(&socket_path)?;
        notify.set_read_timeout(Some(Duration::from_millis(100)))?;
        let child = ns
            .command(&pins.bin)
            .args(["run", "--config"])
            .arg(&pins.config)
            .env("RUST_LOG", rust_log)
            .env("NOTIFY_SOCKET", &socket_path)
            .stdout(file.try_clone()?)
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} run", pins.bin.display()))?;
        let mut d = Self {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
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
                    "gateway run did not report ready within 20 s:\n{}",
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
        let _ = fs::remove_file(&self.log);
    }
}

/// Waits up to 10 s until `f` holds (counters and answers come from other processes).
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what}: not seen within 10 s")
}

impl Bed {
    /// Every veth of the bed without offloads: what the gateway sees is what a wire carries.
    pub fn offloads_off(&self) -> anyhow::Result<()> {
        let off = ["tso", "off", "gso", "off", "gro", "off", "tx", "off"];
        let mut ifaces: Vec<(&Netns, &str)> = vec![(&self.gw, "up0"), (&self.up, "eth0")];
        for d in &self.devices {
            ifaces.push((&d.ns, "eth0"));
            ifaces.push((&self.gw, d.gw_if.as_str()));
        }
        for (ns, iface) in ifaces {
            let mut args = vec!["-K", iface];
            args.extend(off);
            ns.run("ethtool", &args)?;
        }
        Ok(())
    }
}

/// HTTPS servers in a namespace, with a fresh self-signed certificate: socat forks a TLS server
/// per connection. A connection the gateway reset on the device's side stays half open on the
/// server's (with part of a ClientHello, when the name was in its second segment) until it times
/// out: it must not hold up the next client, as it would a one-connection-at-a-time server.
/// Killed, and its files removed, on drop.
pub struct HttpsUpstream {
    servers: Vec<Child>,
    dir: PathBuf,
}

impl HttpsUpstream {
    pub fn start(ns: &Netns, ports: &[u16]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("gwhttps"));
        fs::create_dir_all(&dir)?;
        let mut up = Self {
            servers: Vec::new(),
            dir,
        };
        let (cert, key, page) = (
            up.dir.join("cert.pem"),
            up.dir.join("key.pem"),
            up.dir.join("page.http"),
        );
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=upstream.test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()?;
        check("openssl req", out)?;
        let body = "<html><body>upstream answered</body></html>\n";
        fs::write(
            &page,
            format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )?;
        for port in ports {
            let child = ns
                .command("socat")
                .arg(format!(
                    "OPENSSL-LISTEN:{port},fork,reuseaddr,verify=0,cert={},key={}",
                    cert.display(),
                    key.display()
                ))
                // The response, then the connection held open for the client to read it and
                // close first (closing at once races the client's request under load).
                .arg(format!("SYSTEM:cat {}; sleep 5", page.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting socat")?;
            up.servers.push(child);
        }
        Ok(up)
    }
}

impl Drop for HttpsUpstream {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// How a TLS client's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// The handshake completed (and the page came back, for HTTP clients).
    Completed,
    /// The connection was reset.
    Reset,
}

/// A client's exit status, stdout and stderr, as one text to search and to show on failure.
pub fn output_text(o: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `curl https://NAME/` from `ns`, with NAME resolved to `upstream`.
pub fn curl_https(ns: &Netns, upstream: &str, name: &str) -> anyhow::Result<Handshake> {
    let o = ns.output(
        "curl",
        &[
            "-sSk",
            "--max-time",
            "20",
            "--resolve",
            &format!("{name}:443:{upstream}"),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{name}/"),
        ],
    )?;
    let t = output_text(&o);
    match o.status.code() {
        Some(0) if t.contains("200") => Ok(Handshake::Completed),
        // 35: the TLS handshake failed; 56: receiving failed; with the reset as the cause.
        Some(35 | 56) if t.contains("reset") => Ok(Handshake::Reset),
        _ => bail!("curl {name}: {t}"),
    }
}
