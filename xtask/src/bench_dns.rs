//! `cargo xtask bench`, second part: blocked-name queries from dnsperf in a device namespace,
//! answered (a) by the gateway in XDP, without and with a decision history, (b) by dnsmasq and
//! (c) by unbound serving the same 100,000-domain blocklist on the same bed. Reports answers per
//! second and the CPU spent per answered query: for the gateway the kernel's own accounting of
//! its XDP program (`kernel.bpf_stats_enabled`; tail calls included), less what the same
//! accounting reads for an empty XDP program in the same run (its clock reads and the call),
//! plus the daemon's process CPU time (draining decision events into the history); for dnsmasq
//! and unbound their process CPU time (the scheduler's per-thread nanoseconds). Work common to
//! all (veths, the client's stack) is not counted. All servers run back to back in each of
//! `ROUNDS` rounds; the table shows medians, and each round's ratio to the gateway.

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
/// Seconds dnsperf runs per server and round.
const SECONDS: u64 = 5;
/// Rounds of all servers.
const ROUNDS: usize = 5;

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

/// Run time (ns) and run count the kernel accounted to a program: `selector` is bpftool's
/// (`pinned PATH` or `id N`).
fn program_stats(selector: &[&str]) -> anyhow::Result<(u64, u64)> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .args(selector)
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bpftool prog show {}", selector.join(" ")))?;
    Ok((
        v["run_time_ns"].as_u64().unwrap_or(0),
        v["run_cnt"].as_u64().unwrap_or(0),
    ))
}

/// The id of the XDP program attached to `iface` in `ns`.
fn attached_xdp_id(ns: &Netns, iface: &str) -> anyhow::Result<u64> {
    let out = ns.run("ip", &["-j", "link", "show", "dev", iface])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link show")?;
    v[0]["xdp"]["prog"]["id"]
        .as_u64()
        .with_context(|| format!("no XDP program on {iface} in {}", ns.name))
}

/// CPU time (ns) of process `pid` so far: the sum over its threads of the scheduler's own
/// accounting (`/proc/PID/task/TID/schedstat`, nanoseconds; `/proc/PID/stat` counts 10 ms ticks,
/// too coarse for a daemon that is mostly idle).
fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[derive(Debug, Clone)]
struct Result {
    server: &'static str,
    /// Answered by the XDP program (not by a process).
    in_xdp: bool,
    answers_per_s: f64,
    /// CPU per answer: the XDP program's as the kernel accounted it, and the process's.
    xdp_ns_per_answer: f64,
    process_ns_per_answer: f64,
    /// What the kernel's run-time accounting reads for a program that does nothing, per run
    /// (the empty program on the device's interface, in the same run), and the share of it in
    /// `xdp_ns_per_answer` (that per run times the gateway's runs per answer).
    floor_ns_per_run: f64,
    floor_ns_per_answer: f64,
}

impl Result {
    /// The XDP program's CPU per answer, net of the accounting's own cost.
    fn xdp_net_ns_per_answer(&self) -> f64 {
        (self.xdp_ns_per_answer - self.floor_ns_per_answer).max(0.0)
    }

    fn cpu_ns_per_answer(&self) -> f64 {
        self.xdp_net_ns_per_answer() + self.process_ns_per_answer
    }
}

/// Whose CPU counts: an XDP program (pinned here) with the id of the empty program whose
/// accounted time is the floor, a process, or both.
struct Engine<'a> {
    program: Option<(&'a Path, u64)>,
    process: Option<u32>,
}

/// Counters read before and after a run.
#[derive(Default)]
struct Sample {
    /// (run time ns, runs) of the XDP program and of the empty one.
    xdp: (u64, u64),
    empty: (u64, u64),
    process_ns: u64,
}

impl Engine<'_> {
    fn sample(&self) -> anyhow::Result<Sample> {
        let mut s = Sample::default();
        if let Some((pin, empty)) = self.program {
            s.xdp = program_stats(&["pinned", &pin.to_string_lossy()])?;
            s.empty = program_stats(&["id", &empty.to_string()])?;
        }
        s.process_ns = self.process.map_or(0, process_cpu_ns);
        Ok(s)
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
    let before = engine.sample()?;
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
    let after = engine.sample()?;
    let per = |a: u64, b: u64, n: u64| a.saturating_sub(b) as f64 / (n as f64).max(1.0);
    let text = String::from_utf8_lossy(&out.stdout);
    let completed: u64 = text
        .lines()
        .find(|l| l.contains("Queries completed:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("dnsperf output: {text}"))?;
    if completed == 0 {
        bail!("{label}: dnsperf got no answers\n{text}");
    }
    let qps: f64 = text
        .lines()
        .find(|l| l.contains("Queries per second:"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("dnsperf output: {text}"))?;
    let floor_ns_per_run = per(
        after.empty.0,
        before.empty.0,
        after.empty.1.saturating_sub(before.empty.1),
    );
    let xdp_runs = after.xdp.1.saturating_sub(before.xdp.1);
    Ok(Result {
        server: label,
        in_xdp: engine.program.is_some(),
        answers_per_s: qps,
        xdp_ns_per_answer: per(after.xdp.0, before.xdp.0, completed),
        process_ns_per_answer: per(after.process_ns, before.process_ns, completed),
        floor_ns_per_run,
        floor_ns_per_answer: floor_ns_per_run * xdp_runs as f64 / completed as f64,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(corpus: &Path) -> anyhow::Result<()> {
    let domains = blocklist(corpus)?;
    let dir = std::env::temp_dir().join(unique("gwbench"));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&dir, &domains);
    let _ = std::fs::remove_dir_all(&dir);
    print!("{}", render(&result?));
    Ok(())
}

/// The smallest and the largest of `v`.
fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, 0.0f64), |(l, h), c| (l.min(*c), h.max(*c)))
}

/// Each round's CPU per answer of server `i` against that round's gateway (log = none, the
/// first server), with `cpu` as the measure of a result.
fn round_ratios(rounds: &[Vec<Result>], i: usize, cpu: fn(&Result) -> f64) -> Vec<f64> {
    rounds
        .iter()
        .filter_map(|r| Some(cpu(r.get(i)?) / cpu(r.first()?).max(1.0)))
        .collect()
}

/// The table: per server, the median round (and the range over rounds); against the gateway
/// without events, the median of the rounds' ratios (each round's servers ran back to back).
/// The gateway's XDP time is given net of the accounting's own cost (the floor) and as
/// accounted; the ratios on the figures as accounted follow the table.
fn render(rounds: &[Vec<Result>]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nBlocked-name queries, dnsperf from a device namespace, {DOMAINS} blocked domains, {SECONDS} s a run, {ROUNDS} rounds (medians; range over rounds)"
    );
    let _ = writeln!(
        o,
        "| answered by | answers/s | CPU per answer (ns) | of which XDP | XDP as accounted | of which process | CPU vs gateway | each round |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---|");
    let servers = rounds.first().map_or(0, Vec::len);
    let mut accounted = Vec::new();
    for i in 0..servers {
        let runs: Vec<&Result> = rounds.iter().filter_map(|r| r.get(i)).collect();
        let Some(first) = runs.first() else { continue };
        let of = |f: fn(&Result) -> f64| median(runs.iter().map(|r| f(r)).collect());
        let cpu: Vec<f64> = runs.iter().map(|r| r.cpu_ns_per_answer()).collect();
        let (lo, hi) = range(&cpu);
        let ratios = round_ratios(rounds, i, Result::cpu_ns_per_answer);
        let each = ratios
            .iter()
            .map(|x| format!("{x:.1}x"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            o,
            "| {} | {:.0} | {:.0} ({:.0}–{:.0}) | {:.0} | {:.0} | {:.0} | {:.1}x | {each} |",
            first.server,
            of(|r| r.answers_per_s),
            median(cpu.clone()),
            lo,
            hi,
            of(Result::xdp_net_ns_per_answer),
            of(|r| r.xdp_ns_per_answer),
            of(|r| r.process_ns_per_answer),
            median(ratios),
        );
        if !first.in_xdp {
            let raw = round_ratios(rounds, i, |r| r.xdp_ns_per_answer + r.process_ns_per_answer);
            accounted.push(format!("{} {:.1}x", first.server, median(raw)));
        }
    }
    let floors: Vec<f64> = rounds
        .iter()
        .flatten()
        .filter(|r| r.in_xdp)
        .map(|r| r.floor_ns_per_run)
        .collect();
    let (lo, hi) = range(&floors);
    let _ = writeln!(
        o,
        "\nXDP time net of the kernel's run-time accounting: the empty program on the device's interface, accounted the same way in the same runs, read {:.0} ns a run (median; {lo:.0}–{hi:.0}). On the gateway's time as accounted: {}.",
        median(floors),
        accounted.join(", "),
    );
    o
}

/// Files the servers are given: the query list for dnsperf, the blocklist as a hosts file
/// (the gateway and dnsmasq) and unbound's configuration (a local zone per domain).
struct Inputs {
    queries: PathBuf,
    hosts: PathBuf,
    unbound_conf: PathBuf,
}

fn run_in(dir: &Path, domains: &[String]) -> anyhow::Result<Vec<Vec<Result>>> {
    let inputs = Inputs {
        queries: dir.join("queries.txt"),
        hosts: dir.join("block.hosts"),
        unbound_conf: dir.join("unbound.conf"),
    };
    let mut q = String::new();
    let mut h = String::new();
    for d in domains {
        let _ = writeln!(q, "{d} A");
        let _ = writeln!(h, "0.0.0.0 {d}");
    }
    std::fs::write(&inputs.queries, q)?;
    std::fs::write(&inputs.hosts, &h)?;
    let bed = Bed::new(1)?;
    let server = bed.upstream_ip.clone();
    // unbound with a local zone per domain (NXDOMAIN).
    let mut c = format!(
        "server:\n  interface: {server}\n  access-control: 10.201.0.0/16 allow\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{}\"\n  pidfile: \"\"\n  use-syslog: no\n  num-threads: 1\n  module-config: \"iterator\"\n",
        dir.display()
    );
    for d in domains {
        let _ = writeln!(c, "  local-zone: \"{d}.\" always_nxdomain");
    }
    std::fs::write(&inputs.unbound_conf, c)?;
    // Rounds of all servers back to back: the host's load drifts over minutes, and a server
    // measured once could be measured at a better or worse moment than the others.
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        rounds.push(vec![
            gateway_run(&bed, &inputs, "gateway (XDP), log = none", "none")?,
            gateway_run(&bed, &inputs, "gateway (XDP), log = all, history", "all")?,
            dnsmasq_run(&bed, &inputs)?,
            unbound_run(&bed, &inputs)?,
        ]);
    }
    Ok(rounds)
}

/// (a) The gateway answers in XDP: without decision events (`log = "none"`, like the resolvers,
/// which log no queries), or with every decision in the history (`"all"`, the default). The
/// daemon logs at info level, as deployed.
fn gateway_run(
    bed: &Bed,
    inputs: &Inputs,
    label: &'static str,
    log: &str,
) -> anyhow::Result<Result> {
    let client = bed.devices.first().context("the bed has no device")?;
    let body = format!(
        "[[interface]]\nname = \"{}\"\n\n[[category]]\nname = \"block\"\nlists = [\"{}\"]\n\n[[policy]]\nname = \"default\"\nblock_categories = [\"block\"]\nlog = \"{log}\"\n",
        client.gw_if,
        inputs.hosts.display()
    );
    let mut pins = Pins::with_config("", &body)?;
    pins.bin = crate::root().join("target/release/gateway");
    let daemon = Daemon::start_logging(&bed.gw, &pins, &[client.gw_if.as_str()], "info")?;
    let prog = pins.dir.join("programs/ethernet");
    // The bed's pass-only program on the device's interface runs once per answer, under the
    // same accounting: its time is what the accounting itself costs.
    let empty = attached_xdp_id(&client.ns, "eth0")?;
    let stats = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
        .context("enabling BPF run-time statistics")?;
    let r = dnsperf(
        &client.ns,
        &bed.upstream_ip,
        &inputs.queries,
        label,
        &Engine {
            program: Some((&prog, empty)),
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
    r
}

/// (b) dnsmasq with the list as hosts entries (0.0.0.0 answers).
fn dnsmasq_run(bed: &Bed, inputs: &Inputs) -> anyhow::Result<Result> {
    let child = bed
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
        .arg(format!("--listen-address={}", bed.upstream_ip))
        .arg(format!("--addn-hosts={}", inputs.hosts.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dnsmasq")?;
    resolver_run(bed, inputs, "dnsmasq", child)
}

/// (c) unbound with a local zone per domain (NXDOMAIN).
fn unbound_run(bed: &Bed, inputs: &Inputs) -> anyhow::Result<Result> {
    let child = bed
        .up
        .command("unbound")
        .arg("-c")
        .arg(&inputs.unbound_conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting unbound")?;
    resolver_run(bed, inputs, "unbound", child)
}

/// dnsperf against the resolver `child` once it listens; the resolver is stopped after.
fn resolver_run(
    bed: &Bed,
    inputs: &Inputs,
    label: &'static str,
    mut child: std::process::Child,
) -> anyhow::Result<Result> {
    let r = bed
        .devices
        .first()
        .context("the bed has no device")
        .and_then(|client| {
            wait_listening(bed)?;
            dnsperf(
                &client.ns,
                &bed.upstream_ip,
                &inputs.queries,
                label,
                &Engine {
                    program: None,
                    process: Some(child.id()),
                },
            )
        });
    let _ = child.kill();
    let _ = child.wait();
    r
}

/// Waits (up to a minute) until something listens on the upstream's UDP port 53, then a
/// second more for the server to have read its lists.
fn wait_listening(bed: &Bed) -> anyhow::Result<()> {
    let want = format!("{}:53", bed.upstream_ip);
    let start = std::time::Instant::now();
    while !bed
        .up
        .run("ss", &["-uln"])
        .map(|o| o.contains(&want))
        .unwrap_or(false)
    {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("no DNS server started on {want}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}

/// Where the shared corpus is, relative to the workspace.
pub fn corpus() -> PathBuf {
    crate::root().join("../shared/corpus/lists")
}
