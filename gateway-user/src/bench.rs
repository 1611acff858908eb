//! Benchmarks through BPF_PROG_TEST_RUN: the filter next to the empty XDP program, both built
//! and measured in the same run, so the difference is the filter's own cost.

use std::fmt::Write as _;

use anyhow::Context as _;
use aya::programs::Xdp;
use gateway_common::enums::{LinkType, Reason, Verdict};
use serde::Serialize;

use crate::{
    config::Config,
    frames::{self, L2, L3, L4, TcpFlags},
    kernel::{EMPTY_PROGRAM, load_empty},
    testrun::{TestRunner, time_program},
};

/// Devices in the benchmark configuration: a realistic inventory, so lookups hit a populated map.
pub const BENCH_DEVICES: u32 = 2_000;
/// The MAC of the device the benchmark frames come from.
pub const BENCH_MAC: [u8; 6] = [0x02, 0xbe, 0x00, 0x00, 0x03, 0xe8];
const GATEWAY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

/// One measured frame. `*_ns` are the best (lowest) round: on a shared machine the least
/// disturbed round is the closest to the program's own cost; `*_median_ns` show the spread.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub frame: String,
    pub bytes: usize,
    pub empty_ns: f64,
    pub gateway_ns: f64,
    pub delta_ns: f64,
    pub ratio: f64,
    pub empty_median_ns: f64,
    pub gateway_median_ns: f64,
}

/// The benchmark configuration: `BENCH_DEVICES` devices, half known by MAC and half by address.
pub fn bench_config() -> anyhow::Result<Config> {
    let mut text = String::from("[[policy]]\nname = \"students\"\n\n");
    for i in 0..BENCH_DEVICES {
        let b = i.to_be_bytes();
        if i % 2 == 0 {
            let _ = writeln!(
                text,
                "[[device]]\nname = \"dev-{i}\"\nmac = \"02:be:{:02x}:{:02x}:{:02x}:{:02x}\"\npolicy = \"students\"\n",
                b[0], b[1], b[2], b[3]
            );
        } else {
            let _ = writeln!(
                text,
                "[[device]]\nname = \"dev-{i}\"\nip = \"10.{}.{}.{}\"\npolicy = \"students\"\n",
                b[1], b[2], b[3]
            );
        }
    }
    Ok(Config::parse(&text, std::path::Path::new("<bench>"))?)
}

/// The frames of the foundation benchmark: (name, link, frame).
pub fn foundation_frames() -> Vec<(&'static str, LinkType, Vec<u8>)> {
    let eth = L2::Ethernet {
        src: BENCH_MAC,
        dst: GATEWAY_MAC,
    };
    let v4 = L3::V4 {
        src: [10, 0, 3, 232],
        dst: [93, 184, 216, 34],
    };
    let udp = L4::Udp {
        sport: 40000,
        dport: 5000,
    };
    let tcp = L4::Tcp {
        sport: 40000,
        dport: 80,
        seq: 1,
        flags: TcpFlags {
            ack: Some(1),
            psh: true,
            ..TcpFlags::default()
        },
    };
    vec![
        (
            "udp-64",
            LinkType::Ethernet,
            frames::sized(eth, v4, udp, 64),
        ),
        (
            "tcp-1500",
            LinkType::Ethernet,
            frames::sized(eth, v4, tcp, 1514),
        ),
        (
            // HTTPS data of an allowed flow: the TLS-port check and the flow-mark read.
            "tcp443-1500",
            LinkType::Ethernet,
            frames::sized(
                eth,
                v4,
                L4::Tcp {
                    sport: 40000,
                    dport: 443,
                    seq: 1,
                    flags: TcpFlags {
                        ack: Some(1),
                        psh: true,
                        ..TcpFlags::default()
                    },
                },
                1514,
            ),
        ),
        (
            "tlsdata-62",
            LinkType::Ethernet,
            tls_segment(40001, 1, &[23, 3, 3, 0, 64, 0xaa, 0xbb, 0xcc]),
        ),
        (
            "vlan-udp-68",
            LinkType::Ethernet,
            frames::sized(
                L2::Vlan {
                    src: BENCH_MAC,
                    dst: GATEWAY_MAC,
                    vid: 10,
                },
                v4,
                udp,
                68,
            ),
        ),
        (
            "rawip-udp-50",
            LinkType::RawIp,
            frames::sized(
                L2::RawIp,
                L3::V4 {
                    src: [10, 0, 3, 233],
                    dst: [93, 184, 216, 34],
                },
                udp,
                50,
            ),
        ),
    ]
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Measures each foundation frame: `rounds` alternating rounds of `repeat` runs on the empty
/// program and on the filter; the best and the median round of each.
pub fn foundation(rounds: u32, repeat: u32) -> anyhow::Result<Vec<Row>> {
    let config = bench_config()?;
    let mut empty = load_empty()?;
    let mut checked = TestRunner::new(&config, LinkType::Ethernet)?;
    let mut checked_raw = TestRunner::new(&config, LinkType::RawIp)?;
    let mut eth = TestRunner::with_trace(&config, LinkType::Ethernet, false)?;
    let mut raw = TestRunner::with_trace(&config, LinkType::RawIp, false)?;
    let mut rows = Vec::new();
    for (name, link, frame) in foundation_frames() {
        let (check, runner) = if link == LinkType::RawIp {
            (&mut checked_raw, &mut raw)
        } else {
            (&mut checked, &mut eth)
        };
        // The frame must take the path being measured: a known device, passed uninspected.
        // (Checked on a traced twin; the timed instance is the production program.)
        let r = check.run(&frame)?;
        anyhow::ensure!(
            r.verdict == Verdict::Pass && r.reason == Reason::Uninspected && r.slot != 0,
            "benchmark frame {name} took the wrong path: {r:?}"
        );
        let empty_prog: &mut Xdp = empty
            .program_mut(EMPTY_PROGRAM)
            .context("empty program")?
            .try_into()?;
        let mut e = Vec::new();
        let mut g = Vec::new();
        for _ in 0..rounds {
            e.push(time_program(empty_prog, &frame, repeat)?.as_nanos() as f64);
            g.push(runner.time(&frame, repeat)?.as_nanos() as f64);
        }
        let (empty_ns, gateway_ns) = (best(&e), best(&g));
        rows.push(Row {
            frame: name.to_string(),
            bytes: frame.len(),
            empty_ns,
            gateway_ns,
            delta_ns: gateway_ns - empty_ns,
            ratio: if empty_ns > 0.0 {
                gateway_ns / empty_ns
            } else {
                0.0
            },
            empty_median_ns: median(&e),
            gateway_median_ns: median(&g),
        });
    }
    Ok(rows)
}

/// The rows as a table.
pub fn render(title: &str, rows: &[Row]) -> String {
    table(
        title,
        &[
            "frame",
            "bytes",
            "empty XDP (ns)",
            "gateway (ns)",
            "delta (ns)",
            "ratio",
            "medians (ns)",
        ],
        true,
        rows.iter().map(|r| {
            vec![
                r.frame.clone(),
                r.bytes.to_string(),
                format!("{:.0}", r.empty_ns),
                format!("{:.0}", r.gateway_ns),
                format!("{:+.0}", r.delta_ns),
                format!("{:.2}", r.ratio),
                format!("{:.0} / {:.0}", r.empty_median_ns, r.gateway_median_ns),
            ]
        }),
    )
}

/// A Markdown table: a title line, the header, the alignment row (numbers right-aligned; the
/// first column left-aligned if `label_first`), and the rows.
fn table(
    title: &str,
    headers: &[&str],
    label_first: bool,
    rows: impl Iterator<Item = Vec<String>>,
) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{title}");
    let _ = writeln!(o, "| {} |", headers.join(" | "));
    let align: Vec<&str> = (0..headers.len())
        .map(|i| if i == 0 && label_first { "---" } else { "---:" })
        .collect();
    let _ = writeln!(o, "|{}|", align.join("|"));
    for r in rows {
        let _ = writeln!(o, "| {} |", r.join(" | "));
    }
    o
}

/// One row of the DNS benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct DnsRow {
    pub domains: usize,
    /// Kernel memory of the domain table (both generations) and the rule sets, bytes.
    pub table_bytes: u64,
    pub bytes_per_domain: f64,
    /// Writing the whole configuration into the maps (both generations), seconds.
    pub load_seconds: f64,
    pub empty_ns: f64,
    /// A name in no list: every suffix looked up, the policy's default applies.
    pub miss_ns: f64,
    /// A blocked name (`drop`): found, decided, dropped.
    pub block_ns: f64,
    /// 100,000 distinct names, each run once: mean kernel time.
    pub cold_ns: f64,
    /// The empty program run once per frame the same way: the harness's own share of `cold_ns`.
    pub cold_empty_ns: f64,
}

fn dns_query_frame(name: &str) -> Vec<u8> {
    frames::build(
        L2::Ethernet {
            src: BENCH_MAC,
            dst: GATEWAY_MAC,
        },
        L3::V4 {
            src: [10, 0, 3, 232],
            dst: [10, 0, 0, 53],
        },
        L4::Udp {
            sport: 40000,
            dport: 53,
        },
        &frames::dns_query(name),
    )
}

/// The DNS benchmark configuration: the bench devices, and a category of `n` domains that
/// their policy blocks with `drop`.
fn dns_config(n: usize) -> anyhow::Result<Config> {
    let mut config = bench_config()?;
    let mut text = String::from(
        "[[category]]\nname = \"big\"\ndomains = [\"placeholder.example\"]\n\n[[policy]]\nname = \"students\"\nblock_categories = [\"big\"]\ndns_block_answer = \"drop\"\n",
    );
    text.push_str(&format!("[gateway]\nmax_domains = {}\n", n.max(1024)));
    let shell = Config::parse(&text, std::path::Path::new("<bench>"))?;
    config.categories = shell.categories;
    config.max_domains = shell.max_domains;
    let students = config.policy_id("students").context("students policy")?;
    config.policies[students] = shell.policies[0].clone();
    let mut big = crate::lists::Domains::default();
    for i in 0..n {
        big.block.insert(format!("d{i}.site{}.example", i % 1000));
    }
    config.categories[0] = crate::config::Category::with_domains("big", big);
    Ok(config)
}

/// Measures DNS verdicts at each size in `sizes`.
pub fn dns(sizes: &[usize], rounds: u32, repeat: u32) -> anyhow::Result<Vec<DnsRow>> {
    let mut empty = load_empty()?;
    let mut rows = Vec::new();
    for &n in sizes {
        let config = dns_config(n)?;
        // Load: an empty configuration first, then the whole one, as a daemon's first apply.
        let mut empty_config = config.clone();
        empty_config.categories[0].sources.clear();
        // Timed without the trace (it costs a map write per frame); checked with it.
        let mut runner = TestRunner::with_trace(&empty_config, LinkType::Ethernet, false)?;
        let start = std::time::Instant::now();
        runner.reconfigure(&config)?;
        let load_seconds = start.elapsed().as_secs_f64();

        let miss = dns_query_frame("www.not-listed.example");
        let block = dns_query_frame(&format!("www.d{}.site{}.example", n / 2, (n / 2) % 1000));
        let mut checked = TestRunner::new(&config, LinkType::Ethernet)?;
        let r = checked.run(&miss)?;
        anyhow::ensure!(
            r.reason == Reason::Default && r.verdict == Verdict::Pass,
            "miss frame: {r:?}"
        );
        let r = checked.run(&block)?;
        drop(checked);
        anyhow::ensure!(
            r.reason == Reason::Category && r.verdict == Verdict::Drop,
            "block frame: {r:?}"
        );

        let empty_prog: &mut Xdp = empty
            .program_mut(EMPTY_PROGRAM)
            .context("empty program")?
            .try_into()?;
        let (mut e, mut m, mut b) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            e.push(time_program(empty_prog, &miss, repeat)?.as_nanos() as f64);
            m.push(runner.time(&miss, repeat)?.as_nanos() as f64);
            b.push(runner.time(&block, repeat)?.as_nanos() as f64);
        }
        // Cold: distinct names (half listed, half not), each run once.
        // The empty program runs each frame once too: what a single BPF_PROG_TEST_RUN costs
        // around any program (timer reads, context setup, a cold program entry).
        let (mut total, mut total_empty) = (0f64, 0f64);
        let names = 100_000usize;
        for i in 0..names {
            let name = if i % 2 == 0 {
                let k = (i * 7919) % n.max(1);
                format!("x.d{k}.site{}.example", k % 1000)
            } else {
                format!("y{i}.unlisted{}.example", i % 977)
            };
            let frame = dns_query_frame(&name);
            total += runner.time(&frame, 1)?.as_nanos() as f64;
            total_empty += time_program(empty_prog, &frame, 1)?.as_nanos() as f64;
        }
        let buckets = u64::from(crate::apply::domain_buckets(config.max_domains));
        let table_bytes = 2 * buckets * 64 + 2 * u64::from(gateway_common::maps::MAX_RULESETS) * 32;
        rows.push(DnsRow {
            domains: n,
            table_bytes,
            bytes_per_domain: table_bytes as f64 / n as f64,
            load_seconds,
            empty_ns: best(&e),
            miss_ns: best(&m),
            block_ns: best(&b),
            cold_ns: total / names as f64,
            cold_empty_ns: total_empty / names as f64,
        });
    }
    Ok(rows)
}

/// TLS verdicts at one domain-table size.
#[derive(Debug, Clone, Serialize)]
pub struct TlsRow {
    pub domains: usize,
    /// The empty program on the one-segment ClientHello (best round).
    pub empty_ns: f64,
    /// A ClientHello in one segment, name in no list: walked, every suffix looked up, allowed.
    pub one_segment_ns: f64,
    /// A ClientHello in two segments, the name in the second, each run once (the second resumes
    /// the first's state), harness share taken off, median of 20,000 flows: the first segment
    /// (walked, state saved) and the second (state found, walked, decided, state removed).
    pub first_of_two_ns: f64,
    pub second_of_two_ns: f64,
}

fn tls_segment(sport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    frames::build(
        L2::Ethernet {
            src: BENCH_MAC,
            dst: GATEWAY_MAC,
        },
        L3::V4 {
            src: [10, 0, 3, 232],
            dst: [192, 0, 2, 80],
        },
        L4::Tcp {
            sport,
            dport: 443,
            seq,
            flags: TcpFlags {
                ack: Some(1),
                psh: true,
                ..Default::default()
            },
        },
        payload,
    )
}

/// Measures TLS verdicts with the domain table of `dns_config(n)` for each size.
pub fn tls(sizes: &[usize], rounds: u32, repeat: u32) -> anyhow::Result<Vec<TlsRow>> {
    let mut empty = load_empty()?;
    let mut rows = Vec::new();
    for &n in sizes {
        let config = dns_config(n)?;
        // Timed without the trace (it costs a map write per frame); checked with it.
        let mut runner = TestRunner::with_trace(&config, LinkType::Ethernet, false)?;
        let mut checked = TestRunner::new(&config, LinkType::Ethernet)?;
        let hello = frames::client_hello("www.unlisted-site.example", 6);
        let one = tls_segment(40000, 1, &hello);
        let r = checked.run(&one)?;
        anyhow::ensure!(r.reason == Reason::Default, "one-segment hello: {r:?}");
        let empty_prog: &mut Xdp = empty
            .program_mut(EMPTY_PROGRAM)
            .context("empty program")?
            .try_into()?;
        let (mut e, mut o) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            e.push(time_program(empty_prog, &one, repeat)?.as_nanos() as f64);
            o.push(runner.time(&one, repeat)?.as_nanos() as f64);
        }
        // Two segments, the name in the second (it follows the 1,263-byte key share).
        let hello2 = frames::client_hello("www.unlisted-site.example", 12);
        let split = 1200;
        let (mut first, mut second) = (Vec::new(), Vec::new());
        let flows = 20_000u32;
        for k in 0..flows {
            let sport = 1024 + (k % 60_000) as u16;
            let seq = k.wrapping_mul(7919);
            let a = tls_segment(sport, seq, &hello2[..split]);
            let b = tls_segment(sport, seq.wrapping_add(split as u32), &hello2[split..]);
            let ta = runner.time(&a, 1)?.as_nanos() as f64;
            let tb = runner.time(&b, 1)?.as_nanos() as f64;
            first.push(ta - time_program(empty_prog, &a, 1)?.as_nanos() as f64);
            second.push(tb - time_program(empty_prog, &b, 1)?.as_nanos() as f64);
        }
        let r = checked.run(&tls_segment(7, 1, &hello2[..split]))?;
        anyhow::ensure!(r.reason == Reason::TlsPending, "first of two: {r:?}");
        let r = checked.run(&tls_segment(7, 1 + split as u32, &hello2[split..]))?;
        anyhow::ensure!(r.reason == Reason::Default, "second of two: {r:?}");
        rows.push(TlsRow {
            domains: n,
            empty_ns: best(&e),
            one_segment_ns: best(&o),
            first_of_two_ns: median(&first),
            second_of_two_ns: median(&second),
        });
    }
    Ok(rows)
}

/// The TLS rows as a table.
pub fn render_tls(rows: &[TlsRow]) -> String {
    table(
        "TLS verdicts (BPF_PROG_TEST_RUN; ClientHello of ~1,900 bytes, name in no list; two segments: 20,000 flows, each segment run once, harness share taken off, median)",
        &[
            "domains",
            "empty (ns)",
            "hello, one segment (ns)",
            "first of two (ns)",
            "second of two (ns)",
        ],
        false,
        rows.iter().map(|r| {
            vec![
                r.domains.to_string(),
                format!("{:.0}", r.empty_ns),
                format!("{:.0}", r.one_segment_ns),
                format!("{:.0}", r.first_of_two_ns),
                format!("{:.0}", r.second_of_two_ns),
            ]
        }),
    )
}

/// The configuration benchmark at one size.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ConfigRow {
    pub domains: usize,
    /// `gateway check` of a configuration whose category is a list file of `domains` lines:
    /// reading, validating and compiling it, seconds.
    pub check_seconds: f64,
    /// Writing the whole configuration into an empty filter (both generations), seconds.
    pub load_seconds: f64,
    /// Reloading a configuration that differs in 10 domains (read, compile, write, flip, grace
    /// period), seconds; of which reading the configuration; and the entries written.
    pub diff_seconds: f64,
    pub diff_load_seconds: f64,
    pub diff_changes: usize,
    /// Peak resident memory of the process (check, load and diff, as a daemon does them), MiB.
    pub peak_rss_mib: f64,
}

/// VmHWM of this process, MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Measures `gateway check`, a full load and a 10-domain change at `n` domains.
pub fn config(n: usize) -> anyhow::Result<ConfigRow> {
    let dir = std::env::temp_dir().join(format!("gw-bench-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut list = String::with_capacity(n * 28);
    for i in 0..n {
        let _ = writeln!(list, "d{i}.site{}.example", i % 1000);
    }
    std::fs::write(dir.join("big.domains"), &list)?;
    let text = |extra: &str| {
        format!(
            "[gateway]\nmax_domains = {}\n[[category]]\nname = \"big\"\nlists = [\"big.domains\"]\ndomains = [{extra}]\n[[policy]]\nname = \"students\"\nblock_categories = [\"big\"]\n[[device]]\nname = \"tablet\"\nmac = \"02:be:00:00:00:01\"\npolicy = \"students\"\n",
            n + 1024
        )
    };
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text(""))?;
    let start = std::time::Instant::now();
    let full = Config::load(&path)?;
    crate::check::summary(&full)?;
    let check_seconds = start.elapsed().as_secs_f64();

    let mut empty = full.clone();
    empty.categories[0].sources.clear();
    let mut runner = TestRunner::with_trace(&empty, LinkType::Ethernet, false)?;
    let start = std::time::Instant::now();
    runner.reconfigure(&full)?;
    let load_seconds = start.elapsed().as_secs_f64();

    // A reload as the daemon does it: read the configuration again (the unchanged list file is
    // not parsed again), compile the difference, write it, flip, wait out the old generation.
    let extra: Vec<String> = (0..10).map(|i| format!("\"new{i}.example\"")).collect();
    std::fs::write(&path, text(&extra.join(", ")))?;
    let start = std::time::Instant::now();
    let changed = Config::load(&path)?;
    let diff_load_seconds = start.elapsed().as_secs_f64();
    runner.reconfigure(&changed)?;
    let diff_seconds = start.elapsed().as_secs_f64();
    let diff_changes = runner.changes();
    anyhow::ensure!(
        diff_changes <= 100,
        "a 10-domain change wrote {diff_changes} entries"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(ConfigRow {
        domains: n,
        check_seconds,
        load_seconds,
        diff_seconds,
        diff_load_seconds,
        diff_changes,
        peak_rss_mib: peak_rss_mib(),
    })
}

/// The configuration rows as a table.
pub fn render_config(rows: &[ConfigRow]) -> String {
    table(
        "Configuration (a category from a list file; check = read, validate, compile; reload = 10 domains added inline, read to active)",
        &[
            "domains",
            "check (s)",
            "full load (s)",
            "10-domain reload (ms)",
            "of which reading (ms)",
            "entries written",
            "peak RSS (MiB)",
        ],
        false,
        rows.iter().map(|r| {
            vec![
                r.domains.to_string(),
                format!("{:.2}", r.check_seconds),
                format!("{:.2}", r.load_seconds),
                format!("{:.0}", r.diff_seconds * 1000.0),
                format!("{:.1}", r.diff_load_seconds * 1000.0),
                r.diff_changes.to_string(),
                format!("{:.0}", r.peak_rss_mib),
            ]
        }),
    )
}

/// The DNS rows as a table.
pub fn render_dns(rows: &[DnsRow]) -> String {
    table(
        "DNS verdicts (BPF_PROG_TEST_RUN; warm = best round; cold = 100,000 distinct names once each)",
        &[
            "domains",
            "table MiB",
            "bytes/domain",
            "load (s)",
            "empty (ns)",
            "miss, warm (ns)",
            "block, warm (ns)",
            "cold, run once (ns)",
            "empty, run once (ns)",
            "cold verdict (ns)",
            "miss/empty",
        ],
        false,
        rows.iter().map(|r| {
            vec![
                r.domains.to_string(),
                format!("{:.1}", r.table_bytes as f64 / (1 << 20) as f64),
                format!("{:.1}", r.bytes_per_domain),
                format!("{:.2}", r.load_seconds),
                format!("{:.0}", r.empty_ns),
                format!("{:.0}", r.miss_ns),
                format!("{:.0}", r.block_ns),
                format!("{:.0}", r.cold_ns),
                format!("{:.0}", r.cold_empty_ns),
                format!("{:.0}", r.cold_ns - r.cold_empty_ns),
                format!("{:.1}", r.miss_ns / r.empty_ns),
            ]
        }),
    )
}

/// The history and metrics benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    /// Decisions stored per second, in transactions of `batch` rows.
    pub ingest_per_s: f64,
    pub batch: usize,
    /// Decisions the kernel program made (and logged) per second, for `seconds`, drained by
    /// the daemon's recorder into the history.
    pub offered_per_s: f64,
    pub seconds: f64,
    pub decisions: u64,
    /// Events the ring had no room for.
    pub lost: u64,
    /// Rows the recorder stored.
    pub stored: u64,
    /// Devices with decisions in the scrape, and the time to build it (median of 21).
    pub scrape_devices: usize,
    pub scrape_ms: f64,
    pub scrape_bytes: usize,
}

/// Measures history ingest, ring loss at 20,000 logged decisions per second, and a `/metrics`
/// scrape of 1,000 devices.
pub fn history() -> anyhow::Result<HistoryRow> {
    use crate::history::{Names, Naming, Recorder, Row, Store};
    use std::sync::{Arc, RwLock};

    let dir = std::env::temp_dir().join(format!("gw-bench-history-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // Ingest: 200,000 rows, 1,000 per transaction (what a busy drain gives).
    let batch = 1_000;
    let mut store = Store::open(&dir.join("ingest"))?;
    let rows: Vec<Row> = (0..batch)
        .map(|i| Row {
            time_ms: 1_800_000_000_000 + i as i64,
            device: format!("dev-{}", i % 300),
            policy: "students".into(),
            protocol: "dns".into(),
            name: format!("www.d{i}.site{}.example", i % 1000),
            qtype: 1,
            action: "block".into(),
            reason: "category".into(),
            category: Some("big".into()),
        })
        .collect();
    let start = std::time::Instant::now();
    for _ in 0..200 {
        store.insert(&rows)?;
    }
    let ingest_per_s = 200.0 * batch as f64 / start.elapsed().as_secs_f64();
    drop(store);

    // Ring: the real program logs a blocked query 200 times every 10 ms for 10 s, while the
    // recorder drains the ring into a history as the daemon does.
    let config = dns_config(1_000)?;
    let mut runner = TestRunner::with_trace(&config, LinkType::Ethernet, false)?;
    let mut names = Naming::default();
    names.set(
        runner.applied.active_from_boot_ns,
        Names::of(&config, &runner.applied.slots, None),
    );
    let keep = crate::config::History {
        enabled: true,
        retention_days: 30,
        max_rows: 10_000_000,
        max_bytes: 1 << 30,
        pseudonymize: false,
    };
    let recorder = Recorder::start(
        runner.maps.take_events()?,
        Some(Store::open(&dir.join("ring"))?),
        Arc::new(RwLock::new(names)),
        Arc::new(RwLock::new(keep)),
    );
    let frame = dns_query_frame("www.d500.site500.example");
    let (per_tick, tick) = (200u32, std::time::Duration::from_millis(10));
    let start = std::time::Instant::now();
    let mut next = start;
    let mut decisions = 0u64;
    while start.elapsed() < std::time::Duration::from_secs(10) {
        // One run per decision, as traffic gives them (a BPF_PROG_TEST_RUN repeat of 200 here
        // takes 16-32 ms of wall time for 0.2 ms of program time).
        for _ in 0..per_tick {
            runner.time(&frame, 1)?;
        }
        decisions += u64::from(per_tick);
        next += tick;
        if let Some(wait) = next.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // Let the recorder finish the last drain.
    let stats = recorder.stats.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let lost = || -> anyhow::Result<u64> {
        Ok(crate::stats::snapshot(&runner.maps)?
            .global
            .get("ring_lost")
            .copied()
            .unwrap_or(0))
    };
    while stats
        .rows_written
        .load(std::sync::atomic::Ordering::Relaxed)
        + lost()?
        < decisions
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let stored = stats
        .rows_written
        .load(std::sync::atomic::Ordering::Relaxed);
    let lost = lost()?;
    recorder.stop();

    // Scrape: 1,000 devices with decisions in four kinds each.
    let bench = bench_config()?;
    let scrape_devices = 1_000;
    let mut runner = TestRunner::with_trace(&bench, LinkType::Ethernet, false)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow::anyhow!("CPUs: {e}"))?;
    let mut slots: Vec<u32> = runner.applied.slots.values().copied().collect();
    slots.sort_unstable();
    for &slot in slots.iter().take(scrape_devices) {
        for (proto, action, reason, category) in [
            (0u8, 0u8, Reason::Default, gateway_common::maps::NO_CATEGORY),
            (0, 1, Reason::Category, 0),
            (1, 0, Reason::Default, gateway_common::maps::NO_CATEGORY),
            (1, 1, Reason::Explicit, gateway_common::maps::NO_CATEGORY),
        ] {
            let key = gateway_common::maps::DecisionKey {
                slot,
                proto,
                action,
                reason: reason as u8,
                category,
            };
            let values = aya::maps::PerCpuValues::try_from(vec![7u64; cpus])?;
            runner.maps.decisions.insert(key, values, 0)?;
        }
    }
    let mut bench = bench;
    bench.api.device_labels = crate::config::DeviceLabels::Name;
    let info = crate::metrics::Info {
        config: Arc::new(bench),
        status: crate::daemon::ReloadStatus::default(),
        domains: 0,
        recorder: None,
        pseudonym: None,
    };
    let mut times = Vec::new();
    let mut scrape_bytes = 0;
    for _ in 0..21 {
        let start = std::time::Instant::now();
        let s = crate::stats::snapshot(&runner.maps)?;
        let text = crate::metrics::to_prometheus_text(&crate::metrics::render(
            &s,
            &info,
            jiff::Timestamp::now(),
        )?);
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        scrape_bytes = text.len();
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(HistoryRow {
        ingest_per_s,
        batch,
        offered_per_s: decisions as f64 / seconds,
        seconds,
        decisions,
        lost,
        stored,
        scrape_devices,
        scrape_ms: median(&times),
        scrape_bytes,
    })
}

/// The history row as a table.
pub fn render_history(r: &HistoryRow) -> String {
    table(
        "History and metrics (ingest: SQLite WAL, one transaction per batch; ring: the real program logging blocked queries, drained by the daemon's recorder; scrape: /metrics of 1,000 devices)",
        &[
            "ingest (decisions/s)",
            "batch",
            "offered (decisions/s)",
            "decisions",
            "lost",
            "loss (%)",
            "stored",
            "scrape (ms)",
            "scrape (KiB)",
        ],
        false,
        std::iter::once(vec![
            format!("{:.0}", r.ingest_per_s),
            r.batch.to_string(),
            format!("{:.0}", r.offered_per_s),
            r.decisions.to_string(),
            r.lost.to_string(),
            format!("{:.3}", r.lost as f64 * 100.0 / r.decisions.max(1) as f64),
            r.stored.to_string(),
            format!("{:.1}", r.scrape_ms),
            format!("{:.0}", r.scrape_bytes as f64 / 1024.0),
        ]),
    )
}
