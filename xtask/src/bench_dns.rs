//! `cargo xtask bench`, second part: blocked-name queries from dnsperf in a device namespace,
//! answered (a) by the gateway in XDP, without and with a decision history, (b) by dnsmasq and
//! (c) by unbound serving the same 100,000-domain blocklist on the same bed. Reports answers per
//! second and the CPU spent per answered query: for the gateway the kernel's own accounting of
//! its XDP program (`kernel.bpf_stats_enabled`; tail calls included) plus the daemon's process
//! CPU time (draining decision events into the history), for dnsmasq and unbound their process
//! CPU time. Work common to all (veths, the client's stack) is not counted.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use gateway_testbed::{Bed, Daemon, Netns, Pins, unique};

/// Names in the blocklist.
const DOMAINS: usize = 100_000;
/// Seconds dnsperf runs per server.
const SECONDS: u64 = 8;

/// The blocklist: the first 100,000 distinct domains of the corpus hosts and adblock lists.
fn blocklist(corpus: &Path) -> anyhow::Result<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (file, prefix, suffix) in [
        ("blocklistproject-basic.hosts", "0.0.0.0 ", ""),
        ("1hosts-lite.adblock", "||", "^"),
    ] {
        let text = std::fs::read_to_string(corpus.join(file))
            .with_context(|| format!("reading {file}"))?;
        for line in text.lines() {
            let Some(d) = line
                .strip_prefix(prefix)
                .and_then(|l| l.strip_suffix(suffix).or(Some(l)))
            else {
                continue;
            };
            let d = d.trim();
            if d.is_empty() || d.contains(char::is_whitespace) || !seen.insert(d.to_string()) {
                continue;
            }
            out.push(d.to_string());
            if out.len() == DOMAINS {
                return Ok(out);
            }
        }
    }
    bail!("the corpus lists hold only {} distinct domains", out.len())
}

/// Run time (ns) and run count the kernel accounted to the program pinned at `pin`.
fn program_stats(pin: &Path) -> anyhow::Result<(u64, u64)> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "prog", "show", "pinned"])
        .arg(pin)
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bpftool prog show {}", pin.display()))?;
    Ok((
        v["run_time_ns"].as_u64().unwrap_or(0),
        v["run_cnt"].as_u64().unwrap_or(0),
    ))
}

/// CPU jiffies (user + system) of process `pid`.
fn process_cpu(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

#[derive(Debug)]
struct Result {
    server: &'static str,
    answers_per_s: f64,
    /// CPU per answer: the XDP program's and the process's.
    xdp_ns_per_answer: f64,
    process_ns_per_answer: f64,
}

impl Result {
    fn cpu_ns_per_answer(&self) -> f64 {
        self.xdp_ns_per_answer + self.process_ns_per_answer
    }
}

/// Whose CPU counts: an XDP program (pinned here), a process, or both.
struct Engine<'a> {
    program: Option<&'a Path>,
    process: Option<u32>,
}

impl Engine<'_> {
    /// CPU spent so far, in nanoseconds: (XDP program, process).
    fn cpu_ns(&self) -> anyhow::Result<(u64, u64)> {
        let xdp = match self.program {
            Some(pin) => program_stats(pin)?.0,
            None => 0,
        };
        // Jiffies are 10 ms (USER_HZ = 100).
        let process = self.process.map_or(0, |pid| process_cpu(pid) * 10_000_000);
        Ok((xdp, process))
    }
}

/// Runs dnsperf from `client` against `server` with the query file; returns the result.
fn dnsperf(
    client: &Netns,
    server: &str,
    queries: &Path,
    label: &'static str,
    engine: &Engine<'_>,
) -> anyhow::Result<Result> {
    let before = engine.cpu_ns()?;
    let child = client
        .command("dnsperf")
        .args(["-s", server, "-d"])
        .arg(queries)
        .args([
            "-l",
            &SECONDS.to_string(),
            "-c",
            "4",
            "-q",
            "200",
            "-t",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting dnsperf")?;
    let out = child.wait_with_output()?;
    let after = engine.cpu_ns()?;
    let per_answer = |a: u64, b: u64, n: f64| a.saturating_sub(b) as f64 / n.max(1.0);
    let text = String::from_utf8_lossy(&out.stdout);
    let completed: f64 = text
        .lines()
        .find(|l| l.contains("Queries completed:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("dnsperf output: {text}"))?;
    let qps: f64 = text
        .lines()
        .find(|l| l.contains("Queries per second:"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("dnsperf output: {text}"))?;
    Ok(Result {
        server: label,
        answers_per_s: qps,
        xdp_ns_per_answer: per_answer(after.0, before.0, completed),
        process_ns_per_answer: per_answer(after.1, before.1, completed),
    })
}

pub fn run(corpus: &Path) -> anyhow::Result<()> {
    let domains = blocklist(corpus)?;
    let dir = std::env::temp_dir().join(unique("gwbench"));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&dir, &domains);
    let _ = std::fs::remove_dir_all(&dir);
    let results = result?;
    let xdp = results
        .first()
        .map_or(1.0, Result::cpu_ns_per_answer)
        .max(1.0);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nBlocked-name queries, dnsperf from a device namespace, {DOMAINS} blocked domains, {SECONDS} s each"
    );
    let _ = writeln!(
        o,
        "| answered by | answers/s | CPU per answer (ns) | of which XDP | of which process | CPU vs gateway |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
    for r in &results {
        let _ = writeln!(
            o,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1}x |",
            r.server,
            r.answers_per_s,
            r.cpu_ns_per_answer(),
            r.xdp_ns_per_answer,
            r.process_ns_per_answer,
            r.cpu_ns_per_answer() / xdp
        );
    }
    print!("{o}");
    Ok(())
}

fn run_in(dir: &Path, domains: &[String]) -> anyhow::Result<Vec<Result>> {
    let queries = dir.join("queries.txt");
    let hosts = dir.join("block.hosts");
    let mut q = String::new();
    let mut h = String::new();
    for d in domains {
        let _ = writeln!(q, "{d} A");
        let _ = writeln!(h, "0.0.0.0 {d}");
    }
    std::fs::write(&queries, q)?;
    std::fs::write(&hosts, &h)?;
    let bed = Bed::new(1)?;
    let client = &bed.devices[0];
    let server = bed.upstream_ip.clone();
    let mut results = Vec::new();

    // (a) The gateway answers in XDP: without decision events (like the resolvers, which log
    // no queries), then with every decision in the history (the default, `log = "all"`). The
    // daemon logs at info level, as deployed.
    for (label, log) in [
        ("gateway (XDP), log = none", "none"),
        ("gateway (XDP), log = all, history", "all"),
    ] {
        let body = format!(
            "[[interface]]\nname = \"{}\"\n\n[[category]]\nname = \"block\"\nlists = [\"{}\"]\n\n[[policy]]\nname = \"default\"\nblock_categories = [\"block\"]\nlog = \"{log}\"\n",
            client.gw_if,
            hosts.display()
        );
        let mut pins = Pins::with_config("", &body)?;
        pins.bin = crate::root().join("target/release/gateway");
        let daemon = Daemon::start_logging(&bed.gw, &pins, &[client.gw_if.as_str()], "info")?;
        let prog = pins.dir.join("programs/ethernet");
        let stats =
            std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
            .context("enabling BPF run-time statistics")?;
        let r = dnsperf(
            &client.ns,
            &server,
            &queries,
            label,
            &Engine {
                program: Some(&prog),
                process: daemon.pid(),
            },
        );
        let _ = std::fs::write(
            "/proc/sys/kernel/bpf_stats_enabled",
            if stats.trim().is_empty() {
                "0"
            } else {
                stats.trim()
            },
        );
        results.push(r?);
    }
    // (b) dnsmasq with the list as hosts entries (0.0.0.0 answers).
    {
        let mut child = bed
            .up
            .command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
                "--pid-file=",
            ])
            .arg(format!("--listen-address={server}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq")?;
        std::thread::sleep(Duration::from_secs(2));
        let r = dnsperf(
            &client.ns,
            &server,
            &queries,
            "dnsmasq",
            &Engine {
                program: None,
                process: Some(child.id()),
            },
        );
        let _ = child.kill();
        let _ = child.wait();
        results.push(r?);
    }
    // (c) unbound with a local zone per domain (NXDOMAIN).
    {
        let conf = dir.join("unbound.conf");
        let mut c = format!(
            "server:\n  interface: {server}\n  access-control: 10.201.0.0/16 allow\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{}\"\n  pidfile: \"\"\n  use-syslog: no\n  num-threads: 1\n  module-config: \"iterator\"\n",
            dir.display()
        );
        for d in domains {
            let _ = writeln!(c, "  local-zone: \"{d}.\" always_nxdomain");
        }
        std::fs::write(&conf, c)?;
        let mut child = bed
            .up
            .command("unbound")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting unbound")?;
        let start = std::time::Instant::now();
        while !bed
            .up
            .run("ss", &["-uln"])
            .map(|o| o.contains(&format!("{server}:53")))
            .unwrap_or(false)
        {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("unbound did not start");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let r = dnsperf(
            &client.ns,
            &server,
            &queries,
            "unbound",
            &Engine {
                program: None,
                process: Some(child.id()),
            },
        );
        let _ = child.kill();
        let _ = child.wait();
        results.push(r?);
    }
    Ok(results)
}

/// Where the shared corpus is, relative to the workspace.
pub fn corpus() -> PathBuf {
    crate::root().join("../shared/corpus/lists")
}
