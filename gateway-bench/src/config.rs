//! The configuration: `gateway check`, a full load and a 10-domain reload at 1,000 to
//! 1,000,000 domains, with the peak memory of each.

use std::fmt::Write as _;

use gateway_common::enums::LinkType;
use gateway_user::{config::Config, offline::testrun::TestRunner};
use serde::Serialize;

use crate::common::table;

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
    gateway_user::offline::check::summary(&full)?;
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
