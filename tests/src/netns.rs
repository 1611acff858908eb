//! Network namespaces and the bed built of them: devices, the gateway and an upstream, joined
//! by veth pairs with offloads off.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use anyhow::{Context as _, anyhow};

use crate::{check, empty_xdp_object, host, require_root, unique};

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

/// A device namespace joined to `gw`: `eth0` `<net>.2/24` — `gw:<gw_if>` `<net>.1/24`, IPv6
/// off, static neighbours, the pass-only XDP program on its end of the pair.
pub fn device(gw: &Netns, net: &str, gw_if: &str) -> anyhow::Result<Device> {
    let ns = Netns::new("gwd")?;
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    veth(&ns, "eth0", gw, gw_if)?;
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
    let ip = format!("{net}.2");
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    gw.ip(&["addr", "add", &format!("{net}.1/24"), "dev", gw_if])?;
    ns.ip(&["route", "add", "default", "via", &format!("{net}.1")])?;
    let mac = ns.mac("eth0")?;
    let gw_mac = gw.mac(gw_if)?;
    ns.ip(&[
        "neigh",
        "replace",
        &format!("{net}.1"),
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
        gw_if,
        "nud",
        "permanent",
    ])?;
    Ok(Device {
        ns,
        ip,
        mac,
        gw_if: gw_if.to_string(),
    })
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
            list.push(device(&gw, &format!("10.201.{i}"), &format!("d{i}"))?);
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

    /// A configuration body for a one-device bed: the filter on the device's interface, the
    /// device ("laptop", known by its MAC) in policy "students", which blocks `block`.
    pub fn one_device_config(&self, block: &[&str]) -> String {
        let dev = &self.devices[0];
        let block: Vec<String> = block.iter().map(|d| format!("{d:?}")).collect();
        format!(
            "[[interface]]\nname = \"{}\"\n\n[[policy]]\nname = \"students\"\nblock = [{}]\n\n\
             [[device]]\nname = \"laptop\"\nmac = \"{}\"\npolicy = \"students\"\n",
            dev.gw_if,
            block.join(", "),
            dev.mac
        )
    }

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

/// One gateway of a `FleetBed` and its device.
pub struct Site {
    pub gw: Netns,
    pub device: Device,
}

/// `n` gateways, each with one device, behind one upstream that holds the fleet's origin:
///
/// ```text
/// dev<g>:eth0 10.203.<g>.2/24 -- gw<g>:d1 10.203.<g>.1/24
///                                gw<g>:up0 10.202.<g>.1/24 -- up:g<g> 10.202.<g>.2/24
/// up:lo 10.202.0.2/32: the origin (nginx) and the DNS server, reached through each gateway
/// ```
pub struct FleetBed {
    pub sites: Vec<Site>,
    pub up: Netns,
    /// The origin's and DNS server's address.
    pub origin: String,
}

impl FleetBed {
    pub fn new(gateways: usize) -> anyhow::Result<Self> {
        require_root()?;
        let up = Netns::new("gwu")?;
        let origin = "10.202.0.2".to_string();
        up.ip(&["addr", "add", &format!("{origin}/32"), "dev", "lo"])?;
        let mut sites = Vec::new();
        for g in 1..=gateways {
            let gw = Netns::new("gwg")?;
            gw.sysctl("net.ipv4.ip_forward", "1")?;
            let up_if = format!("g{g}");
            veth(&gw, "up0", &up, &up_if)?;
            gw.ip(&["addr", "add", &format!("10.202.{g}.1/24"), "dev", "up0"])?;
            up.ip(&["addr", "add", &format!("10.202.{g}.2/24"), "dev", &up_if])?;
            gw.ip(&["route", "add", "default", "via", &format!("10.202.{g}.2")])?;
            let device = device(&gw, &format!("10.203.{g}"), "d1")?;
            up.ip(&[
                "route",
                "add",
                &format!("10.203.{g}.0/24"),
                "via",
                &format!("10.202.{g}.1"),
            ])?;
            sites.push(Site { gw, device });
        }
        Ok(Self { sites, up, origin })
    }
}
