//! `/metrics`: the kernel counters (summed in `stats`) and the daemon's state, in the Prometheus
//! text exposition (OpenMetrics) format, every name prefixed `gateway_`.
//!
//! Device labels follow `[api] device_labels`: the device's pseudonym by default (aggregates
//! carry no device names unless the operator says so), its name, or no per-device series.

use std::collections::HashMap;

use gateway_common::{
    enums::Reason,
    maps::{DEVICE_SLOTS, MAX_DECISION_KEYS, UNKNOWN_DEVICE},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{
    history::{Pseudonym, RecorderStats},
    stats::Snapshot,
    status::ReloadStatus,
};
use crate::config::{Config, DeviceLabels};

/// What the daemon knows beyond the kernel counters.
#[derive(Debug, Clone)]
pub struct Info {
    pub config: std::sync::Arc<Config>,
    pub status: ReloadStatus,
    /// Domains in the active domain table.
    pub domains: usize,
    pub recorder: Option<std::sync::Arc<RecorderStats>>,
    /// For `device_labels = "pseudonym"`.
    pub pseudonym: Option<Pseudonym>,
    /// The shipping pipelines' counts.
    pub ship: Option<std::sync::Arc<super::ship::ShipStats>>,
}

/// Reasons that mean a frame or a query could not be parsed.
pub const PARSE_FAILURES: &[Reason] = &[
    Reason::TruncatedL2,
    Reason::VlanLimit,
    Reason::TruncatedL3,
    Reason::BadL3,
    Reason::Ipv6ExtLimit,
    Reason::TruncatedL4,
    Reason::DnsNotQuery,
    Reason::DnsQdcount,
    Reason::DnsTruncated,
    Reason::DnsCompression,
    Reason::DnsLabelTooLong,
    Reason::DnsNameTooLong,
    Reason::DnsEmptyName,
    Reason::DnsBadChar,
    Reason::TlsUnparsed,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrameLabels {
    verdict: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    device: String,
    policy: String,
    protocol: String,
    action: String,
    reason: String,
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabel {
    device: String,
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabels {
    interface: String,
    mode: String,
    link: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListLabels {
    category: String,
    list: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListKindLabels {
    category: String,
    list: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListResultLabels {
    category: String,
    list: String,
    result: String,
}

/// What each category's list files gave when the configuration in force was read.
fn list_metrics(r: &mut Registry, config: &Config, now: jiff::Timestamp) {
    let lines: Family<ListLabels, Gauge> = gauge(
        r,
        "gateway_list_lines",
        "Lines of each list file in the configuration in force",
    );
    let rules: Family<ListKindLabels, Gauge> = gauge(
        r,
        "gateway_list_rules",
        "Rules each list file gave, by kind (block, exception)",
    );
    let skipped: Family<ListKindLabels, Gauge> = gauge(
        r,
        "gateway_list_skipped_lines",
        "Lines of each list file skipped, by kind (cosmetic, path, browser_option, ...)",
    );
    let invalid: Family<ListLabels, Gauge> = gauge(
        r,
        "gateway_list_invalid_names",
        "Names in each list file that are not valid domains",
    );
    let age: Family<ListLabels, Gauge> = gauge(
        r,
        "gateway_list_age_seconds",
        "Age of each list file (since it was last written)",
    );
    let success: Family<ListLabels, Gauge> = gauge(
        r,
        "gateway_list_last_success_timestamp_seconds",
        "Lists by URL: when the server last answered with a list taken or a 304 (Unix time)",
    );
    let failures: Family<ListLabels, Gauge> = gauge(
        r,
        "gateway_list_fetch_failures",
        "Lists by URL: attempts failed or refused since the last success",
    );
    let fetches: Family<ListResultLabels, Counter> = counter(
        r,
        "gateway_list_fetches",
        "Lists by URL: download attempts by result (changed, unchanged, failed, refused)",
    );
    for c in &config.categories {
        for l in &c.lists {
            let name = l.url.clone().unwrap_or_else(|| l.path.clone());
            let at = ListLabels {
                category: c.name.clone(),
                list: name.clone(),
            };
            let kind = |kind: &str| ListKindLabels {
                category: c.name.clone(),
                list: name.clone(),
                kind: kind.to_string(),
            };
            if l.url.is_some() {
                let meta = crate::config::remote::Meta::read(&crate::config::remote::meta_path(
                    std::path::Path::new(&l.path),
                ))
                .unwrap_or_default();
                if let Some(t) = meta.last_success {
                    success.get_or_create(&at).set(t);
                }
                failures.get_or_create(&at).set(meta.failures as i64);
                for (result, n) in &meta.results {
                    fetches
                        .get_or_create(&ListResultLabels {
                            category: c.name.clone(),
                            list: name.clone(),
                            result: result.clone(),
                        })
                        .inc_by(*n);
                }
            }
            lines.get_or_create(&at).set(l.lines as i64);
            rules.get_or_create(&kind("block")).set(l.block as i64);
            rules.get_or_create(&kind("exception")).set(l.allow as i64);
            for (k, n) in &l.skipped {
                skipped.get_or_create(&kind(k)).set(n.lines as i64);
            }
            invalid.get_or_create(&at).set(l.invalid as i64);
            if let Ok(written) = std::fs::metadata(&l.path).and_then(|m| m.modified())
                && let Ok(written) = jiff::Timestamp::try_from(written)
            {
                age.get_or_create(&at)
                    .set(now.as_second().saturating_sub(written.as_second()).max(0));
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// A fleet gateway's bundle: the revision in force, the last poll that ended well, and the
/// failures by reason (every reason present, zero until it happens).
fn fleet_metrics(r: &mut Registry, config: &Config) {
    if config.fleet.is_none() {
        return;
    }
    let record = crate::config::bundle::Record::read(&config.state_dir);
    plain_gauge(
        r,
        "gateway_bundle_revision",
        "Revision of the fleet bundle in force (0: none, the gateway's own file)",
        record.revision.map_or(0, |v| v as i64),
    );
    if let Some(t) = record.last_success {
        plain_gauge(
            r,
            "gateway_bundle_last_success_timestamp_seconds",
            "When a poll for the fleet bundle last ended well: a 304, or a bundle activated (Unix time)",
            t,
        );
    }
    let failures: Family<ReasonLabels, Counter> = counter(
        r,
        "gateway_bundle_failures",
        "Fleet bundles not taken, by reason (network, http, size, signature, rollback, archive, manifest, validation, apply)",
    );
    for reason in crate::config::bundle::Failure::ALL {
        failures
            .get_or_create(&ReasonLabels {
                reason: reason.label().to_string(),
            })
            .inc_by(record.failures.get(&reason).copied().unwrap_or(0));
    }
}

/// The shipping pipelines that are configured: remote-write in samples, syslog in rows.
/// The SafeSearch enforcement names in force: whether each family is resolved, and how many
/// addresses the kernel answers with.
fn safe_search_metrics(r: &mut Registry, s: &Snapshot) {
    if s.safe_search.is_empty() {
        return;
    }
    let resolved: Family<TargetLabels, Gauge> = gauge(
        r,
        "gateway_safe_search_resolved",
        "1 when the SafeSearch enforcement name's addresses of the family are known (its queries are answered by the kernel); 0 while its queries pass to the resolver",
    );
    let addresses: Family<TargetLabels, Gauge> = gauge(
        r,
        "gateway_safe_search_addresses",
        "Addresses the kernel answers a SafeSearch enforcement name with, by family",
    );
    for t in &s.safe_search {
        for (family, v) in [("ipv4", &t.ipv4), ("ipv6", &t.ipv6)] {
            let l = TargetLabels {
                target: t.target.clone(),
                family: family.to_string(),
            };
            resolved.get_or_create(&l).set(i64::from(v.is_some()));
            addresses
                .get_or_create(&l)
                .set(v.as_ref().map_or(0, |a| a.len() as i64));
        }
    }
}

fn ship_metrics(r: &mut Registry, config: &Config, ship: &super::ship::ShipStats) {
    use std::sync::atomic::Ordering::Relaxed;
    // (configured, counts, pending, sent, dropped, errors: name and help of each)
    let pipelines = [
        (
            config.telemetry.is_some(),
            &ship.remote_write,
            [
                (
                    "gateway_remote_write_pending_samples",
                    "Samples waiting to be pushed (in memory and in the spool)",
                ),
                (
                    "gateway_remote_write_sent_samples",
                    "Samples the remote-write receiver took",
                ),
                (
                    "gateway_remote_write_dropped_samples",
                    "Samples dropped: beyond the spool's cap, or refused by the receiver for good",
                ),
                (
                    "gateway_remote_write_errors",
                    "Pushes that failed (and collections that did)",
                ),
            ],
        ),
        (
            config.history.ship.is_some(),
            &ship.syslog,
            [
                (
                    "gateway_history_ship_pending_rows",
                    "History rows not yet confirmed shipped to syslog",
                ),
                (
                    "gateway_history_shipped_rows",
                    "History rows the syslog receiver had (a row sent again counts again)",
                ),
                (
                    "gateway_history_ship_lost_rows",
                    "History rows retention deleted before they were shipped",
                ),
                (
                    "gateway_history_ship_errors",
                    "Connections and writes to the syslog receiver that failed",
                ),
            ],
        ),
    ];
    for (configured, s, [pending, sent, dropped, errors]) in pipelines {
        if !configured {
            continue;
        }
        plain_gauge(r, pending.0, pending.1, s.pending() as i64);
        plain_counter(r, sent.0, sent.1, s.sent.load(Relaxed));
        plain_counter(r, dropped.0, dropped.1, s.dropped.load(Relaxed));
        plain_counter(r, errors.0, errors.1, s.errors.load(Relaxed));
    }
}

fn counter<
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
>(
    r: &mut Registry,
    name: &str,
    help: &str,
) -> Family<L, Counter> {
    let f = Family::<L, Counter>::default();
    r.register(name, help, f.clone());
    f
}

fn gauge<
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
>(
    r: &mut Registry,
    name: &str,
    help: &str,
) -> Family<L, Gauge> {
    let f = Family::<L, Gauge>::default();
    r.register(name, help, f.clone());
    f
}

fn plain_counter(r: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    r.register(name, help, c);
}

fn plain_gauge(r: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    r.register(name, help, g);
}

/// The metrics for `s` and `info` as exposition text.
pub fn render(s: &Snapshot, info: &Info, now: jiff::Timestamp) -> anyhow::Result<String> {
    let config = &info.config;
    let mut r = Registry::default();

    // Devices: their label and the policy in force now.
    let effective = config.effective_policies(now);
    let policy_name = |id: usize| {
        config
            .policies
            .get(id)
            .map_or_else(|| format!("policy-{id}"), |p| p.name.clone())
    };
    let mut device_policy: HashMap<&str, String> = config
        .devices
        .iter()
        .zip(&effective)
        .map(|(d, p)| (d.name.as_str(), policy_name(*p)))
        .collect();
    device_policy.insert(UNKNOWN_DEVICE, policy_name(config.unknown_policy));
    let label = |device: &str| -> String {
        match config.api.device_labels {
            DeviceLabels::Name => device.to_string(),
            DeviceLabels::None => String::new(),
            DeviceLabels::Pseudonym if device == UNKNOWN_DEVICE => device.to_string(),
            DeviceLabels::Pseudonym => info
                .pseudonym
                .as_ref()
                .map_or_else(String::new, |p| p.of(device)),
        }
    };
    let policy_of = |device: &str| device_policy.get(device).cloned().unwrap_or_default();

    let frames: Family<FrameLabels, Counter> = counter(
        &mut r,
        "gateway_frames",
        "Frames the XDP program judged, by verdict and reason",
    );
    let bytes: Family<FrameLabels, Counter> = counter(
        &mut r,
        "gateway_frame_bytes",
        "Bytes of the frames the XDP program judged, by verdict and reason",
    );
    let parse: Family<ReasonLabel, Counter> = counter(
        &mut r,
        "gateway_parse_failures",
        "Frames and queries that could not be parsed, by reason (passed unjudged unless on_parse_error = block)",
    );
    // Every parse-failure reason has a series from the start (rate() needs the zero).
    for reason in PARSE_FAILURES {
        parse
            .get_or_create(&ReasonLabel {
                reason: reason.label().to_string(),
            })
            .inc_by(0);
    }
    let mut fragments = 0;
    for row in &s.reasons {
        let l = FrameLabels {
            verdict: row.verdict.to_string(),
            reason: row.reason.to_string(),
        };
        frames.get_or_create(&l).inc_by(row.packets);
        bytes.get_or_create(&l).inc_by(row.bytes);
        if PARSE_FAILURES.iter().any(|p| p.label() == row.reason) {
            parse
                .get_or_create(&ReasonLabel {
                    reason: row.reason.to_string(),
                })
                .inc_by(row.packets);
        }
        if row.reason == Reason::Fragment.label() {
            fragments += row.packets;
        }
    }
    plain_counter(
        &mut r,
        "gateway_frames_seen",
        "Frames the XDP program saw",
        s.totals.packets,
    );
    plain_counter(
        &mut r,
        "gateway_frames_passed",
        "Frames passed to the network stack",
        s.totals.passed,
    );
    plain_counter(
        &mut r,
        "gateway_frames_dropped",
        "Frames dropped (blocked, suspended)",
        s.totals.dropped,
    );
    plain_counter(
        &mut r,
        "gateway_frames_answered",
        "Frames answered from the kernel (DNS answers, TCP resets)",
        s.totals.transmitted,
    );
    plain_counter(
        &mut r,
        "gateway_fragments",
        "Non-first IP fragments (passed: they carry no ports)",
        fragments,
    );

    let decisions: Family<DecisionLabels, Counter> = counter(
        &mut r,
        "gateway_decisions",
        "Decisions on names, ports and devices, by device, policy in force, protocol, action, reason and category",
    );
    for d in &s.decisions {
        let category = d
            .category
            .and_then(|c| config.categories.get(usize::from(c)))
            .map_or_else(String::new, |c| c.name.clone());
        decisions
            .get_or_create(&DecisionLabels {
                device: label(&d.device),
                policy: policy_of(&d.device),
                protocol: d.proto.to_string(),
                action: d.action.to_string(),
                reason: d.reason.to_string(),
                category,
            })
            .inc_by(d.count);
    }

    if config.api.device_labels != DeviceLabels::None {
        let dev_frames: Family<DeviceLabel, Counter> =
            counter(&mut r, "gateway_device_frames", "Frames from each device");
        let dev_bytes: Family<DeviceLabel, Counter> =
            counter(&mut r, "gateway_device_bytes", "Bytes from each device");
        let dev_dropped: Family<DeviceLabel, Counter> = counter(
            &mut r,
            "gateway_device_dropped_frames",
            "Frames from each device that were dropped",
        );
        for d in &s.devices {
            let l = DeviceLabel {
                device: label(&d.device),
                policy: policy_of(&d.device),
            };
            dev_frames.get_or_create(&l).inc_by(d.packets);
            dev_bytes.get_or_create(&l).inc_by(d.bytes);
            dev_dropped.get_or_create(&l).inc_by(d.dropped_packets);
        }
    }
    let per_policy: Family<PolicyLabel, Gauge> = gauge(
        &mut r,
        "gateway_devices",
        "Configured devices by the policy in force now",
    );
    for p in &config.policies {
        // Every policy has a series, 0 when no device is in it.
        per_policy
            .get_or_create(&PolicyLabel {
                policy: p.name.clone(),
            })
            .set(0);
    }
    for p in &effective {
        per_policy
            .get_or_create(&PolicyLabel {
                policy: policy_name(*p),
            })
            .inc();
    }

    list_metrics(&mut r, config, now);
    fleet_metrics(&mut r, config);

    let global = |k: &str| s.global.get(k).copied().unwrap_or(0);
    plain_counter(
        &mut r,
        "gateway_events_lost",
        "Decision events lost because the event ring was full",
        global("ring_lost"),
    );
    plain_counter(
        &mut r,
        "gateway_decision_map_full",
        "Decisions that could not be counted per device because the decision map was full",
        global("decision_map_full"),
    );
    plain_counter(
        &mut r,
        "gateway_tls_flows_evicted",
        "TLS flow states evicted from the flow table before their walk ended",
        global("flows_evicted"),
    );
    plain_counter(
        &mut r,
        "gateway_tls_flow_names_lost",
        "ClientHellos whose partial server name was evicted",
        global("flow_name_lost"),
    );

    let entries: Family<MapLabel, Gauge> = gauge(
        &mut r,
        "gateway_map_entries",
        "Entries in use in the kernel tables",
    );
    let capacity: Family<MapLabel, Gauge> = gauge(
        &mut r,
        "gateway_map_capacity",
        "Capacity of the kernel tables",
    );
    let slots_used = s
        .devices
        .iter()
        .filter(|d| d.device != UNKNOWN_DEVICE)
        .count();
    for (map, used, cap) in [
        (
            "domains",
            info.domains as u64,
            u64::from(config.max_domains),
        ),
        ("tls_flows", s.tls_flows, u64::from(config.max_tls_flows)),
        (
            "decisions",
            s.decision_keys as u64,
            u64::from(MAX_DECISION_KEYS),
        ),
        ("devices", slots_used as u64, u64::from(DEVICE_SLOTS - 1)),
    ] {
        let l = MapLabel { map: map.into() };
        entries.get_or_create(&l).set(used as i64);
        capacity.get_or_create(&l).set(cap as i64);
    }

    plain_counter(
        &mut r,
        "gateway_reloads",
        "Configuration reloads applied",
        info.status.reloads,
    );
    plain_counter(
        &mut r,
        "gateway_reloads_failed",
        "Configuration reloads rejected (invalid) or failed (the running configuration stayed)",
        info.status.failed,
    );
    plain_counter(
        &mut r,
        "gateway_schedule_switches",
        "Policy switches at schedule window boundaries",
        info.status.schedule_switches,
    );
    plain_gauge(
        &mut r,
        "gateway_generation",
        "The configuration generation in force (0 or 1)",
        i64::from(s.generation),
    );
    let attached: Family<InterfaceLabels, Gauge> = gauge(
        &mut r,
        "gateway_interface_attached",
        "Interfaces the filter is attached to, with the XDP mode and link type",
    );
    for i in &s.interfaces {
        attached
            .get_or_create(&InterfaceLabels {
                interface: i.name.clone(),
                mode: i.mode.to_string(),
                link: i.link.to_string(),
            })
            .set(1);
    }

    let rec = info.recorder.as_deref();
    let load = |f: fn(&RecorderStats) -> &std::sync::atomic::AtomicU64| {
        rec.map_or(0, |s| f(s).load(std::sync::atomic::Ordering::Relaxed))
    };
    plain_counter(
        &mut r,
        "gateway_history_events",
        "Decision events read from the kernel ring",
        load(|s| &s.events),
    );
    plain_counter(
        &mut r,
        "gateway_history_rows_written",
        "Decisions stored in the history",
        load(|s| &s.rows_written),
    );
    plain_counter(
        &mut r,
        "gateway_history_rows_deleted",
        "History rows deleted by retention (age or count)",
        load(|s| &s.rows_deleted),
    );
    plain_counter(
        &mut r,
        "gateway_history_write_errors",
        "Batches of decisions the history could not store",
        load(|s| &s.write_errors),
    );
    plain_gauge(
        &mut r,
        "gateway_history_rows",
        "Rows in the history at the last retention pass",
        load(|s| &s.rows) as i64,
    );

    if let Some(ship) = &info.ship {
        ship_metrics(&mut r, config, ship);
    }
    safe_search_metrics(&mut r, s);

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r)
        .map_err(|e| anyhow::anyhow!("encoding the metrics: {e}"))?;
    Ok(out)
}

/// The OpenMetrics text `render` gives, in the Prometheus text format (0.0.4) that scrapers
/// without OpenMetrics and `promtool check metrics` read: a counter family is named with its
/// `_total` suffix in `HELP` and `TYPE`, and the `# EOF` and `# UNIT` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 16);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_with_total_in_the_prometheus_format() {
        let om = "# HELP gateway_reloads Reloads applied.\n# TYPE gateway_reloads counter\ngateway_reloads_total 3\n# HELP gateway_generation The generation.\n# TYPE gateway_generation gauge\ngateway_generation 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP gateway_reloads_total Reloads applied.\n# TYPE gateway_reloads_total counter\ngateway_reloads_total 3\n# HELP gateway_generation The generation.\n# TYPE gateway_generation gauge\ngateway_generation 1\n"
        );
    }

    #[test]
    fn every_list_has_its_lines_rules_skipped_kinds_and_age() {
        let dir = std::env::temp_dir().join(format!("gw-list-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join("l.txt"),
            "! Title: t\n||a.example^\n@@||ok.a.example^\nx.example##.ad\n/re/\n",
        )
        .expect("write");
        let toml = "[[category]]\nname = \"ads\"\nlists = [\"l.txt\"]\n";
        let config = Config::parse(toml, &dir.join("t.toml")).expect("config");
        let mut r = Registry::default();
        list_metrics(&mut r, &config, jiff::Timestamp::now());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
        let list = dir.join("l.txt").display().to_string();
        for want in [
            format!("gateway_list_lines{{category=\"ads\",list=\"{list}\"}} 5"),
            format!("gateway_list_rules{{category=\"ads\",list=\"{list}\",kind=\"block\"}} 1"),
            format!("gateway_list_rules{{category=\"ads\",list=\"{list}\",kind=\"exception\"}} 1"),
            format!(
                "gateway_list_skipped_lines{{category=\"ads\",list=\"{list}\",kind=\"cosmetic\"}} 1"
            ),
            format!(
                "gateway_list_skipped_lines{{category=\"ads\",list=\"{list}\",kind=\"regex\"}} 1"
            ),
            format!("gateway_list_invalid_names{{category=\"ads\",list=\"{list}\"}} 0"),
            format!("gateway_list_age_seconds{{category=\"ads\",list=\"{list}\"}} "),
        ] {
            assert!(text.contains(&want), "{want} in\n{text}");
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
