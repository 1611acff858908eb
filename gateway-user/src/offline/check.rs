//! `gateway check`: the configuration validated and compiled as `run` would, without touching
//! the kernel, and a summary of what it holds and what it will take; with `--kernel`, the
//! running kernel probed for what the filter needs and the filter's programs verified by it.

use std::{collections::HashMap, fmt::Write as _};

use anyhow::anyhow;
use gateway_common::maps::names;
use serde::Serialize;

use crate::{
    config::{Config, Desired, domain_buckets},
    kernel::{FILTER_OBJECT, probe},
    offline::testrun::load_filter,
};

#[derive(Debug, Clone, Serialize)]
pub struct CategoryRow {
    pub name: String,
    /// Distinct domains the category blocks.
    pub domains: usize,
    /// Distinct `@@` exceptions.
    pub exceptions: usize,
    /// List files read.
    pub lists: usize,
    /// Lines skipped in its lists (syntax that does not apply to DNS, or not a domain).
    pub skipped: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyRow {
    pub name: String,
    pub devices: usize,
    pub allow: usize,
    pub block: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct MapRow {
    pub name: String,
    pub bytes: u64,
}

/// What `gateway check` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub config: String,
    pub categories: Vec<CategoryRow>,
    pub policies: Vec<PolicyRow>,
    /// Every category's list files: what each gave and what it skipped.
    pub lists: Vec<ListRow>,
    pub devices: usize,
    /// Distinct domains in the domain table (every category and policy entry).
    pub domains: usize,
    /// The domain table's capacity (`max_domains`).
    pub max_domains: u32,
    /// Kernel memory of the filter's maps (both generations), bytes.
    pub kernel_bytes: u64,
    /// The largest maps.
    pub maps: Vec<MapRow>,
}

/// One list file of a category.
#[derive(Debug, Clone, Serialize)]
pub struct ListRow {
    pub category: String,
    #[serde(flatten)]
    pub stats: crate::config::ListStats,
    /// A list by URL: seconds since its copy was downloaded (`None`: never downloaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<i64>,
}

/// Kernel memory the maps take with `config`: key and value of every entry the maps are sized
/// for (both generations; per-CPU maps once per CPU; hash maps also pay ~64 bytes of kernel
/// bookkeeping per entry).
fn map_memory(config: &Config) -> anyhow::Result<Vec<MapRow>> {
    let object = aya_obj::Object::parse(FILTER_OBJECT)
        .map_err(|e| anyhow!("parsing the filter object: {e}"))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mut rows = Vec::new();
    for (section, def) in &object.maps {
        // The loader names a global's map after its data section: the control record is
        // listed under its pin name; the read-only load-time settings (a few bytes) are not.
        let name = if section == names::CONTROL_SECTION {
            names::CONTROL
        } else if section.starts_with('.') {
            continue;
        } else {
            section.as_str()
        };
        let entries = u64::from(match name {
            names::DOMAINS => 2 * domain_buckets(config.max_domains),
            names::FLOWS => config.max_tls_flows.max(1),
            _ => def.max_entries(),
        });
        let kind = def.map_type();
        let per_entry = u64::from(def.key_size()) + u64::from(def.value_size());
        // BPF_MAP_TYPE_* numbers: 2 array, 5 per-CPU hash, 6 per-CPU array, 1 hash, 9 LRU hash,
        // 10 LRU per-CPU hash, 11 LPM trie, 27 ring buffer.
        let bytes = match kind {
            27 => entries,
            2 => u64::from(def.value_size()) * entries,
            6 => u64::from(def.value_size()) * entries * cpus,
            5 | 10 => {
                (u64::from(def.key_size()) + u64::from(def.value_size()) * cpus + 64) * entries
            }
            1 | 9 | 11 => (per_entry + 64) * entries,
            _ => per_entry * entries,
        };
        rows.push(MapRow {
            name: name.to_string(),
            bytes,
        });
    }
    rows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
    Ok(rows)
}

/// Compiles `config` as `run` would and summarises it.
pub fn summary(config: &Config) -> anyhow::Result<Summary> {
    // Slots as a first start would give them: devices in order.
    let slots: HashMap<String, u32> = config
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name.clone(), i as u32 + 1))
        .collect();
    let desired = Desired::compile(config, &slots, jiff::Timestamp::now());
    anyhow::ensure!(
        desired.rules.domains.len() <= config.max_domains as usize,
        "{} domains, more than max_domains = {}: raise [gateway] max_domains",
        desired.rules.domains.len(),
        config.max_domains
    );
    let mut per_policy = vec![0usize; config.policies.len()];
    for d in &config.devices {
        if let Some(n) = per_policy.get_mut(d.policy) {
            *n += 1;
        }
    }
    let maps = map_memory(config)?;
    Ok(Summary {
        config: config.source.display().to_string(),
        categories: config
            .categories
            .iter()
            .map(|c| (c, c.counts()))
            .map(|(c, (domains, exceptions))| CategoryRow {
                name: c.name.clone(),
                domains,
                exceptions,
                lists: c.lists.len(),
                skipped: c.lists.iter().map(|l| l.skipped_lines() + l.invalid).sum(),
            })
            .collect(),
        policies: config
            .policies
            .iter()
            .zip(&per_policy)
            .map(|(p, n)| PolicyRow {
                name: p.name.clone(),
                devices: *n,
                allow: p.allow.len(),
                block: p.block.len(),
            })
            .collect(),
        lists: config
            .categories
            .iter()
            .flat_map(|c| {
                c.lists.iter().map(|l| ListRow {
                    category: c.name.clone(),
                    stats: l.clone(),
                    age_seconds: l
                        .fetched_at
                        .map(|t| (jiff::Timestamp::now().as_second() - t).max(0)),
                })
            })
            .collect(),
        devices: config.devices.len(),
        domains: desired.rules.domains.len(),
        max_domains: config.max_domains,
        kernel_bytes: maps.iter().map(|m| m.bytes).sum(),
        maps: maps.into_iter().take(6).collect(),
    })
}

/// What `gateway check --kernel` found.
#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    /// `uname -r`.
    pub release: String,
    pub features: Vec<probe::Feature>,
    /// Each program and the instructions the verifier processed for it (limit: 1,000,000).
    pub programs: Vec<(String, Option<u32>)>,
}

/// Probes the kernel and, if it has every feature, loads (verifies) the filter's programs as
/// `gateway run` would, sized for `config`, without attaching them. A missing feature is bad
/// input (exit 2) naming it, after the table.
pub fn kernel_report(config: &Config) -> anyhow::Result<KernelReport> {
    let mut report = KernelReport {
        release: probe::release(),
        features: probe::features().to_vec(),
        programs: Vec::new(),
    };
    if report.refusal().is_ok() {
        let filter = load_filter(
            config,
            gateway_common::enums::LinkType::Ethernet,
            false,
            None,
        )?;
        report.programs = filter
            .verified
            .iter()
            .map(|(n, v)| ((*n).to_string(), *v))
            .collect();
    }
    Ok(report)
}

impl KernelReport {
    /// The refusal (bad input: exit 2) if a feature is missing.
    pub fn refusal(&self) -> anyhow::Result<()> {
        probe::refuse_missing(&self.release, &self.features)
    }
}

/// The kernel report as text: every feature, then (when nothing is missing) every program.
pub fn render_kernel(r: &KernelReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "kernel {}", r.release);
    for f in &r.features {
        let mark = if f.present { "ok" } else { "MISSING" };
        let _ = writeln!(o, "  {:<7} {:<24} (since {})", mark, f.what, f.since);
    }
    if r.refusal().is_err() {
        return o;
    }
    let _ = writeln!(o, "programs verified:");
    for (name, insns) in &r.programs {
        let insns = insns.map_or("(not reported)".to_string(), |n| {
            format!("{n} instructions processed")
        });
        let _ = writeln!(o, "  {name:<16} {insns}");
    }
    let _ = writeln!(o, "kernel {}: the filter loads", r.release);
    o
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// The summary as text.
pub fn render(s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}: valid", s.config);
    let _ = writeln!(o, "\ncategories:");
    for c in &s.categories {
        let _ = writeln!(
            o,
            "  {:<24} {:>9} domains {:>7} exceptions  {} list(s), {} line(s) skipped",
            c.name, c.domains, c.exceptions, c.lists, c.skipped
        );
    }
    if !s.lists.is_empty() {
        let _ = writeln!(o, "\nlists:");
    }
    for l in &s.lists {
        let st = &l.stats;
        let how = if st.detected { "detected" } else { "forced" };
        let _ = writeln!(
            o,
            "  {} {}: {} ({how}), {} lines, {} rules used, {} exceptions",
            l.category,
            st.url.as_deref().unwrap_or(&st.path),
            st.format,
            st.lines,
            st.block,
            st.allow
        );
        if st.url.is_some() {
            let _ = match l.age_seconds {
                Some(age) => writeln!(
                    o,
                    "      cached copy {} ({:#} old)",
                    st.path,
                    jiff::SignedDuration::from_secs(age)
                ),
                None => writeln!(
                    o,
                    "      not downloaded yet: empty until the daemon fetches it into {}",
                    st.path
                ),
            };
        }
        if st.name_only + st.subdomains_only + st.important + st.badfilter > 0 {
            let _ = writeln!(
                o,
                "      {} for the name only, {} for its subdomains only, {} $important, {} $badfilter",
                st.name_only, st.subdomains_only, st.important, st.badfilter
            );
        }
        for (kind, k) in &st.skipped {
            let _ = writeln!(
                o,
                "      skipped {kind}: {} (first at line {})",
                k.lines, k.first_line
            );
        }
        if st.invalid > 0 {
            let first = st
                .invalid_examples
                .first()
                .map(|(n, why)| format!(" (line {n}: {why})"))
                .unwrap_or_default();
            let _ = writeln!(o, "      invalid names: {}{first}", st.invalid);
        }
    }
    let _ = writeln!(o, "\npolicies:");
    for p in &s.policies {
        let _ = writeln!(
            o,
            "  {:<24} {:>7} devices {:>7} allow {:>7} block",
            p.name, p.devices, p.allow, p.block
        );
    }
    let _ = writeln!(
        o,
        "\n{} devices; {} distinct domains (max_domains {})",
        s.devices, s.domains, s.max_domains
    );
    let _ = writeln!(o, "kernel memory: {}", mib(s.kernel_bytes));
    for m in &s.maps {
        let _ = writeln!(o, "  {:<24} {}", m.name, mib(m.bytes));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every map the filter pins is in the kernel-memory listing, the control record (a global
    /// in its own data section) included, under its pin name.
    #[test]
    fn memory_listing_covers_every_pinned_map() {
        let config = Config::embedded().expect("the embedded configuration parses");
        let rows = map_memory(&config).expect("the filter object parses");
        for pin in names::PINNED {
            let row = rows.iter().find(|r| r.name == *pin);
            assert!(
                row.is_some_and(|r| r.bytes > 0),
                "{pin} missing or empty in {rows:?}"
            );
        }
        let control = rows.iter().find(|r| r.name == names::CONTROL);
        assert_eq!(
            control.map(|r| r.bytes),
            Some(std::mem::size_of::<gateway_common::maps::Control>() as u64)
        );
    }
}
