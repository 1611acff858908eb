//! What the benchmarks share: the benchmark configuration and device, the round statistics,
//! and the Markdown tables.

use std::fmt::Write as _;

use gateway_user::config::Config;

use crate::datapath::Row;

/// Devices in the benchmark configuration: a realistic inventory, so lookups hit a populated map.
pub const BENCH_DEVICES: u32 = 2_000;
/// The MAC of the device the benchmark frames come from.
pub const BENCH_MAC: [u8; 6] = [0x02, 0xbe, 0x00, 0x00, 0x03, 0xe8];
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

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

/// The median of `v` (the upper one of an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The lowest of `v`.
pub fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// A Markdown table: a title line, the header, the alignment row (numbers right-aligned; the
/// first column left-aligned if `label_first`), and the rows.
pub fn table(
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
