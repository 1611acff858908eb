//! `cargo xtask demo`: the gateway between two simulated devices and an upstream, in network
//! namespaces, with live per-device counters. Halfway through, one device is suspended through
//! the control API (`gateway suspend`): its frames start being dropped at once. At the end: the
//! decision history (`gateway log`) and a `/metrics` excerpt. Everything is removed at the end,
//! also on failure.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use gateway_testbed::{Bed, Daemon, Dnsmasq, Pins, dig};

/// The demo policy's rules and categories.
const STUDENTS: &str = "block_categories = [\"ads\", \"dns-bypass\"]";
const ADS: &str =
    "[[category]]\nname = \"ads\"\ndomains = [\"ads.example\", \"tracker.example\"]\n";

/// Children killed on drop: the traffic generators.
struct Traffic(Vec<Child>);

impl Drop for Traffic {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(gateway: &Path, duration: u64) -> anyhow::Result<()> {
    let bed = Bed::new(2).context("building the namespaces (needs root)")?;
    let gw_section = Bed::TWO_DEVICE_GATEWAY;
    let mut pins = Pins::with_config(
        gw_section,
        &bed.two_device_config_with(false, STUDENTS, ADS),
    )?;
    pins.bin = gateway.to_path_buf();
    let daemon = Daemon::start(&bed.gw, &pins, &["d1", "d2"])?;
    let upstream = Dnsmasq::start(
        &bed.up,
        &bed.upstream_ip,
        &[
            ("allowed.example", "198.51.100.2"),
            ("ads.example", "198.51.100.1"),
        ],
    )?;
    println!("gateway attached to d1 (laptop, known by MAC) and d2 (sensor, known by address)");
    println!(
        "policy \"students\" blocks the category \"ads\" and the built-in dns-bypass (DoH endpoints)"
    );
    println!(
        "both devices ping the upstream {} and resolve names through it\n",
        bed.upstream_ip
    );

    let mut traffic = Traffic(Vec::new());
    for dev in &bed.devices {
        let child = dev
            .ns
            .command("ping")
            .args(["-n", "-q", "-i", "0.2", &bed.upstream_ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ping")?;
        traffic.0.push(child);
    }

    let start = Instant::now();
    let mut suspended = false;
    println!(
        "{:>5}  {:<10} {:>8} {:>10} {:>8}   {:<10} {:>8} {:>10} {:>8}",
        "t(s)", "device", "frames", "bytes", "dropped", "device", "frames", "bytes", "dropped"
    );
    while start.elapsed() < Duration::from_secs(duration) {
        std::thread::sleep(Duration::from_secs(2));
        if !suspended && start.elapsed() >= Duration::from_secs(duration / 2) {
            let out = pins.gateway_in(&bed.gw, "suspend", &["sensor", "--note", "demo"])?;
            anyhow::ensure!(
                out.status.success(),
                "gateway suspend: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            suspended = true;
            println!("-- gateway suspend sensor (through the control API): in force at once --");
        }
        let lookups: Vec<String> = [(&bed.devices[0], "laptop"), (&bed.devices[1], "sensor")]
            .iter()
            .flat_map(|(dev, who)| {
                ["allowed.example", "ads.example", "dns.google"].map(|name| {
                    let answer = match dig(&dev.ns, "dig", &bed.upstream_ip, name, "A") {
                        Ok(r) if r.answers.is_empty() => r.status,
                        Ok(r) => r.answers.join(","),
                        Err(_) => "no answer".into(),
                    };
                    format!("{who}: {name} -> {answer}")
                })
            })
            .collect();
        let l = pins.device("laptop")?;
        let s = pins.device("sensor")?;
        println!(
            "{:>5}  {:<10} {:>8} {:>10} {:>8}   {:<10} {:>8} {:>10} {:>8}",
            start.elapsed().as_secs(),
            "laptop",
            l.0,
            l.1,
            l.2,
            "sensor",
            s.0,
            s.1,
            s.2
        );
        println!("       {}", lookups.join("  |  "));
    }
    drop(traffic);
    println!(
        "\nthe upstream resolver was asked for: {} (blocked names never reached it)",
        upstream
            .queries()
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("\nfinal counters (gateway stats):");
    let out = pins.gateway("stats", &[])?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("\nthe decision history, newest first (gateway log --limit 8):");
    let out = pins.gateway("log", &["--limit", "8"])?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("\n/metrics (blocked decisions; device labels are pseudonyms by default):");
    let metrics = bed
        .gw
        .run(
            "curl",
            &["-sS", "--max-time", "5", "http://127.0.0.1:9477/metrics"],
        )
        .unwrap_or_default();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("gateway_decisions_total") && l.contains("action=\"block\""))
        .take(6)
    {
        println!("  {line}");
    }
    drop(daemon);
    drop(pins);
    drop(bed);
    println!("demo finished; namespaces and pins removed");
    Ok(())
}
