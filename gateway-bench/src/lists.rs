//! List parsing: 1,000,000 lines of each format read into a category's domains (detection,
//! parsing, validation, de-duplication), against the baseline of splitting the same text into
//! lines and nothing else, in the same run.

use std::fmt::Write as _;

use gateway_user::config::{Domains, parse_list};
use serde::Serialize;

use crate::common::table;

#[derive(Debug, Clone, Serialize)]
pub struct ListRow {
    pub format: &'static str,
    pub lines: usize,
    /// Rules used (blocks and exceptions).
    pub rules: usize,
    /// Best of three, seconds.
    pub seconds: f64,
    /// Splitting the same text into lines only, seconds.
    pub baseline_seconds: f64,
}

const LINES: usize = 1_000_000;

/// A list of `LINES` lines in `format`, mostly rules, with the other syntax real lists carry.
fn text(format: &str) -> String {
    let mut t = String::with_capacity(LINES * 40);
    if format == "adblock" {
        t.push_str("[Adblock Plus 2.0]\n! Title: bench\n");
    }
    if format == "rpz" {
        t.push_str(
            "$TTL 300\n@ SOA localhost. root.localhost. 1 3600 600 86400 60\n  NS localhost.\n",
        );
    }
    let header = t.lines().count();
    for i in 0..LINES - header {
        let d = format!("d{i}.site{}.example", i % 5000);
        let _ = match (format, i % 10) {
            ("adblock", 0) => writeln!(t, "{d}##.ad-{i}"),
            ("adblock", 1) => writeln!(t, "||{d}/ads/$third-party"),
            ("adblock", 2) => writeln!(t, "@@||ok.{d}^"),
            ("adblock", _) => writeln!(t, "||{d}^"),
            ("hosts", 0) => writeln!(t, "# comment {i}"),
            ("hosts", _) => writeln!(t, "0.0.0.0 {d}"),
            ("dnsmasq", 0) => writeln!(t, "server=/ok.{d}/#"),
            ("dnsmasq", _) => writeln!(t, "address=/{d}/0.0.0.0"),
            ("rpz", 0) => writeln!(t, "*.{d} CNAME ."),
            ("rpz", _) => writeln!(t, "{d} CNAME ."),
            (_, _) => writeln!(t, "{d}"),
        };
    }
    t
}

/// The table's rows.
pub fn lists() -> anyhow::Result<Vec<ListRow>> {
    let mut rows = Vec::new();
    for format in ["domains", "hosts", "adblock", "dnsmasq", "rpz"] {
        let t = text(format);
        let mut best = f64::MAX;
        let mut base = f64::MAX;
        let mut rules = 0;
        for _ in 0..3 {
            let start = std::time::Instant::now();
            let n = std::hint::black_box(t.lines().count());
            base = base.min(start.elapsed().as_secs_f64());
            let start = std::time::Instant::now();
            let mut d = Domains::default();
            let s = parse_list(&t, "bench", None, &mut d);
            best = best.min(start.elapsed().as_secs_f64());
            anyhow::ensure!(s.format == format, "{format} detected as {}", s.format);
            anyhow::ensure!(s.lines == n, "{format}: {} of {n} lines", s.lines);
            rules = s.block + s.allow;
        }
        rows.push(ListRow {
            format,
            lines: t.lines().count(),
            rules,
            seconds: best,
            baseline_seconds: base,
        });
    }
    Ok(rows)
}

pub fn render_lists(rows: &[ListRow]) -> String {
    table(
        "List parsing (1,000,000 lines read into a category; baseline: the same text split into lines)",
        &["format", "lines", "rules", "parse", "baseline", "ratio"],
        true,
        rows.iter().map(|r| {
            vec![
                r.format.to_string(),
                r.lines.to_string(),
                r.rules.to_string(),
                format!("{:.0} ms", r.seconds * 1e3),
                format!("{:.1} ms", r.baseline_seconds * 1e3),
                format!("{:.0}x", r.seconds / r.baseline_seconds.max(1e-9)),
            ]
        }),
    )
}
