//! The DNS and TLS verdicts: a blocked query and a ClientHello judged on cold and warm caches,
//! at domain tables of 1,000 to 1,000,000 names.

use anyhow::Context as _;
use aya::programs::Xdp;
use gateway_common::enums::{LinkType, Reason, Verdict};
use gateway_user::{
    config::Config,
    kernel::{EMPTY_PROGRAM, load_empty},
    offline::{
        frames::{self, L2, L3, L4},
        testrun::{TestRunner, time_program},
    },
};
use serde::Serialize;

use crate::common::{BENCH_MAC, GATEWAY_MAC, bench_config, best, median, table};

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
    /// Answers built in the kernel, each frame run once, harness share taken off (mean of
    /// 20,000): an NXDOMAIN for a listed name, and a SafeSearch answer (CNAME and an address)
    /// for a covered one, over as many distinct names of each.
    pub nxdomain_ns: f64,
    pub safe_search_ns: f64,
}

pub fn dns_query_frame(name: &str) -> Vec<u8> {
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
pub fn dns_config(n: usize) -> anyhow::Result<Config> {
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
    let mut big = gateway_user::config::Domains::default();
    for i in 0..n {
        big.block.insert(format!("d{i}.site{}.example", i % 1000));
    }
    config.categories[0] = gateway_user::config::Category::with_domains("big", big);
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
        let (nxdomain_ns, safe_search_ns) = answers(&config, n, empty_prog)?;
        let buckets = u64::from(gateway_user::config::domain_buckets(config.max_domains));
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
            nxdomain_ns,
            safe_search_ns,
        });
    }
    Ok(rows)
}

/// The cold costs of an NXDOMAIN answer and of a SafeSearch answer (see `DnsRow`), with the
/// domain table of `config` (`n` listed names): the bench policy answering NXDOMAIN and with
/// every SafeSearch engine, whose targets have addresses.
fn answers(config: &Config, n: usize, empty_prog: &mut Xdp) -> anyhow::Result<(f64, f64)> {
    let mut config = config.clone();
    let students = config.policy_id("students").context("students policy")?;
    let engines = config.safe_search.engines.clone();
    let p = &mut config.policies[students];
    p.dns_answer = gateway_user::config::DnsBlockAnswer::Nxdomain;
    p.safe_search = (0..engines.len())
        .filter(|&i| engines[i].name != "youtube-moderate")
        .collect();
    let mut runner = TestRunner::with_trace(&config, LinkType::Ethernet, false)?;
    let mut checked = TestRunner::new(&config, LinkType::Ethernet)?;
    for e in &engines {
        let r = gateway_user::kernel::safe_search::Resolved {
            v4: Some(vec![std::net::Ipv4Addr::new(192, 0, 2, 1)]),
            v6: Some(Vec::new()),
            ttl: 300,
        };
        runner.maps.safe_targets.resolved(&e.target, r.clone());
        checked.maps.safe_targets.resolved(&e.target, r);
    }
    let covered: Vec<&String> = engines
        .iter()
        .filter(|e| e.name != "youtube-moderate")
        .flat_map(|e| e.names.iter())
        .collect();
    let frames = 20_000usize;
    let (mut nx, mut ss) = (0f64, 0f64);
    for i in 0..frames {
        let k = (i * 7919) % n.max(1);
        let listed = dns_query_frame(&format!("x.d{k}.site{}.example", k % 1000));
        let safe = dns_query_frame(covered[i % covered.len()]);
        if i < covered.len() {
            let r = checked.run(&listed)?;
            anyhow::ensure!(
                r.verdict == Verdict::Tx && r.reason == Reason::Category,
                "NXDOMAIN frame: {r:?}"
            );
            let r = checked.run(&safe)?;
            anyhow::ensure!(
                r.verdict == Verdict::Tx && r.reason == Reason::SafeSearch,
                "SafeSearch frame: {r:?}"
            );
        }
        nx += (runner.time(&listed, 1)?.as_nanos() as f64)
            - time_program(empty_prog, &listed, 1)?.as_nanos() as f64;
        ss += (runner.time(&safe, 1)?.as_nanos() as f64)
            - time_program(empty_prog, &safe, 1)?.as_nanos() as f64;
    }
    Ok((nx / frames as f64, ss / frames as f64))
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
    /// A plain-HTTP request head (Host in no list, a browser's headers) to port 80: best round,
    /// and run once per flow (20,000 flows), harness share taken off, median.
    pub http_ns: f64,
    pub http_once_ns: f64,
}

pub fn tls_segment(sport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    crate::streams::tcp(sport, 443, seq, false, payload)
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
        // A plain-HTTP request, as a browser sends it.
        let head = b"GET /index.html HTTP/1.1\r\nHost: www.unlisted-site.example\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\nAccept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\nAccept-Encoding: gzip, deflate\r\nAccept-Language: en-US,en;q=0.9\r\nConnection: keep-alive\r\n\r\n";
        let http = |sport: u16| crate::streams::tcp(sport, 80, 1, false, head);
        let r = checked.run(&http(9))?;
        anyhow::ensure!(
            r.reason == Reason::Default && r.verdict == Verdict::Pass,
            "HTTP request: {r:?}"
        );
        let mut h = Vec::new();
        for _ in 0..rounds {
            h.push(runner.time(&http(9), repeat)?.as_nanos() as f64);
        }
        let mut once = Vec::new();
        for k in 0..flows {
            let f = http(1024 + (k % 60_000) as u16);
            once.push(
                runner.time(&f, 1)?.as_nanos() as f64
                    - time_program(empty_prog, &f, 1)?.as_nanos() as f64,
            );
        }
        rows.push(TlsRow {
            domains: n,
            empty_ns: best(&e),
            one_segment_ns: best(&o),
            first_of_two_ns: median(&first),
            second_of_two_ns: median(&second),
            http_ns: best(&h),
            http_once_ns: median(&once),
        });
    }
    Ok(rows)
}

/// The TLS rows as a table.
pub fn render_tls(rows: &[TlsRow]) -> String {
    table(
        "TLS and HTTP verdicts (BPF_PROG_TEST_RUN; ClientHello of ~1,900 bytes, name in no list; two segments: 20,000 flows, each segment run once, harness share taken off, median; a browser's request head of 380 bytes to port 80, Host in no list)",
        &[
            "domains",
            "empty (ns)",
            "hello, one segment (ns)",
            "first of two (ns)",
            "second of two (ns)",
            "HTTP request (ns)",
            "HTTP request, once (ns)",
        ],
        false,
        rows.iter().map(|r| {
            vec![
                r.domains.to_string(),
                format!("{:.0}", r.empty_ns),
                format!("{:.0}", r.one_segment_ns),
                format!("{:.0}", r.first_of_two_ns),
                format!("{:.0}", r.second_of_two_ns),
                format!("{:.0}", r.http_ns),
                format!("{:.0}", r.http_once_ns),
            ]
        }),
    )
}

/// The DNS rows as a table.
pub fn render_dns(rows: &[DnsRow]) -> String {
    table(
        "DNS verdicts (BPF_PROG_TEST_RUN; warm = best round; cold = 100,000 distinct names once each; answers: 20,000 frames once each, harness share taken off)",
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
            "NXDOMAIN answer, once (ns)",
            "SafeSearch answer, once (ns)",
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
                format!("{:.0}", r.nxdomain_ns),
                format!("{:.0}", r.safe_search_ns),
                format!("{:.1}", r.miss_ns / r.empty_ns),
            ]
        }),
    )
}
