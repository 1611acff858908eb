//! Everything the counters say at one moment (`Snapshot`), read through `kernel::counters`,
//! and its tables for `gateway stats`.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
};

use aya::maps::IterableMap as _;
use gateway_common::{
    enums::{
        Action, AttachMode, GLOBAL_SLOTS, Global, LinkType, Proto, REASON_SLOTS, Reason, Verdict,
        stats_index,
    },
    maps::{DeviceTraffic, IfaceInfo, MAX_IFACES, NO_CATEGORY, UNKNOWN_DEVICE, UNKNOWN_SLOT},
};
use serde::Serialize;

use crate::kernel::{
    Maps,
    counters::{Summable, batch_read, decision_counts, device_slots, reason_counters, sum},
};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReasonRow {
    pub reason: &'static str,
    pub verdict: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeviceRow {
    pub device: String,
    pub slot: u32,
    pub packets: u64,
    pub bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DecisionRow {
    pub device: String,
    pub proto: &'static str,
    pub action: &'static str,
    pub reason: &'static str,
    /// The category's number in the kernel's counters, and its name when the daemon said
    /// which categories its configuration numbers (see `Snapshot::name_categories`).
    pub category: Option<u8>,
    pub category_name: Option<String>,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InterfaceRow {
    pub name: String,
    pub ifindex: u32,
    pub link: &'static str,
    pub mode: &'static str,
}

#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
    pub passed: u64,
    pub dropped: u64,
    pub transmitted: u64,
}

/// Everything the counters say, at one moment.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Snapshot {
    pub generation: u32,
    pub totals: Totals,
    pub reasons: Vec<ReasonRow>,
    pub devices: Vec<DeviceRow>,
    pub decisions: Vec<DecisionRow>,
    pub global: BTreeMap<&'static str, u64>,
    /// TLS flows with state now (a ClientHello in progress, or blocked).
    pub tls_flows: u64,
    /// Keys in the per-device decision map (its fill).
    pub decision_keys: usize,
    pub interfaces: Vec<InterfaceRow>,
    /// The SafeSearch enforcement names in force and what the kernel knows of their addresses.
    pub safe_search: Vec<SafeSearchRow>,
}

/// A SafeSearch enforcement name: its addresses per family (`None`: not resolved yet, its
/// queries pass) and the TTL the kernel answers with.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SafeSearchRow {
    pub target: String,
    pub ipv4: Option<Vec<String>>,
    pub ipv6: Option<Vec<String>>,
    pub ttl: u32,
}

impl Snapshot {
    /// Names the decisions' categories: `names[i]` is category `i` of the configuration in
    /// force (what the daemon writes in its status file). A number without a name stays
    /// unnamed.
    pub fn name_categories(&mut self, names: &[String]) {
        for d in &mut self.decisions {
            d.category_name = d.category.and_then(|c| names.get(usize::from(c)).cloned());
        }
    }

    /// The device row called `name`.
    pub fn device(&self, name: &str) -> Option<&DeviceRow> {
        self.devices.iter().find(|d| d.device == name)
    }

    /// Packets counted for (reason, verdict).
    pub fn reason_packets(&self, reason: Reason, verdict: Verdict) -> u64 {
        self.reasons
            .iter()
            .find(|r| r.reason == reason.label() && r.verdict == verdict.label())
            .map_or(0, |r| r.packets)
    }
}

/// Reads every counter.
pub fn snapshot(maps: &Maps) -> anyhow::Result<Snapshot> {
    let mut s = Snapshot {
        generation: maps.active_generation()?,
        ..Snapshot::default()
    };

    let counters = reason_counters(maps)?;
    for reason_id in 0..REASON_SLOTS {
        let Some(reason) = Reason::from_u32(reason_id) else {
            continue;
        };
        for verdict in Verdict::ALL {
            let index = stats_index(reason, *verdict);
            let c = counters.get(&index).copied().unwrap_or_default();
            if c.packets == 0 {
                continue;
            }
            s.totals.packets += c.packets;
            s.totals.bytes += c.bytes;
            match verdict {
                Verdict::Pass => s.totals.passed += c.packets,
                Verdict::Drop => s.totals.dropped += c.packets,
                Verdict::Tx => s.totals.transmitted += c.packets,
            }
            s.reasons.push(ReasonRow {
                reason: reason.label(),
                verdict: verdict.label(),
                packets: c.packets,
                bytes: c.bytes,
            });
        }
    }

    let mut names = device_slots(maps)?;
    names.insert(UNKNOWN_SLOT, UNKNOWN_DEVICE.to_string());
    let traffic: Option<HashMap<u32, DeviceTraffic>> =
        batch_read::<u32, DeviceTraffic>(maps.device_traffic.map(), Some(Summable::add))?
            .map(|all| all.into_iter().collect());
    for (slot, name) in &names {
        let t = match &traffic {
            Some(all) => all.get(slot).copied().unwrap_or_default(),
            None => sum(&maps.device_traffic.get(slot, 0)?),
        };
        s.devices.push(DeviceRow {
            device: name.clone(),
            slot: *slot,
            packets: t.packets,
            bytes: t.bytes,
            dropped_packets: t.dropped_packets,
            dropped_bytes: t.dropped_bytes,
        });
    }

    for (k, count) in decision_counts(maps)? {
        s.decision_keys += 1;
        let (Some(proto), Some(action), Some(reason)) = (
            Proto::from_u32(k.proto.into()),
            Action::from_u32(k.action.into()),
            Reason::from_u32(k.reason.into()),
        ) else {
            continue;
        };
        if count == 0 {
            continue;
        }
        s.decisions.push(DecisionRow {
            device: names
                .get(&k.slot)
                .cloned()
                .unwrap_or_else(|| format!("slot-{}", k.slot)),
            proto: proto.label(),
            action: action.label(),
            reason: reason.label(),
            category: (k.category != NO_CATEGORY).then_some(k.category),
            category_name: None,
            count,
        });
    }
    s.decisions.sort_by(|a, b| {
        (&a.device, a.proto, a.action, a.reason, a.category)
            .cmp(&(&b.device, b.proto, b.action, b.reason, b.category))
    });

    let globals: Option<HashMap<u32, u64>> =
        batch_read::<u32, u64>(maps.global.map(), Some(Summable::add))?
            .map(|all| all.into_iter().collect());
    for g in Global::ALL {
        let index = *g as u32;
        if index < GLOBAL_SLOTS {
            let v = match &globals {
                Some(all) => all.get(&index).copied().unwrap_or(0),
                None => sum(&maps.global.get(&index, 0)?),
            };
            s.global.insert(g.label(), v);
        }
    }

    // The LRU flow table evicts silently: what was created and neither removed nor is still
    // there was evicted.
    s.tls_flows = maps.flows.keys().filter(Result::is_ok).count() as u64;
    let created = s
        .global
        .get(Global::FlowsCreated.label())
        .copied()
        .unwrap_or(0);
    let removed = s
        .global
        .get(Global::FlowsRemoved.label())
        .copied()
        .unwrap_or(0);
    s.global.insert(
        "flows_evicted",
        created.saturating_sub(removed).saturating_sub(s.tls_flows),
    );

    for i in 0..MAX_IFACES {
        let info: IfaceInfo = maps.ifaces.get(&i, 0)?;
        if info.ifindex == 0 {
            continue;
        }
        let len = info
            .name
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(info.name.len());
        s.interfaces.push(InterfaceRow {
            name: String::from_utf8_lossy(&info.name[..len]).into_owned(),
            ifindex: info.ifindex,
            link: LinkType::from_u32(info.link).map_or("unknown", LinkType::label),
            mode: AttachMode::from_u32(info.mode).map_or("unknown", AttachMode::label),
        });
    }
    for (target, a) in maps.safe_targets.targets(s.generation) {
        use gateway_common::safe_search::{SAFE_V4_KNOWN, SAFE_V6_KNOWN};
        let v4 = a.v4_be.iter().take(usize::from(a.n4));
        let v6 = a.v6_be.iter().take(usize::from(a.n6));
        s.safe_search.push(SafeSearchRow {
            target,
            ipv4: (a.flags & SAFE_V4_KNOWN != 0).then(|| {
                v4.map(|b| std::net::Ipv4Addr::from(*b).to_string())
                    .collect()
            }),
            ipv6: (a.flags & SAFE_V6_KNOWN != 0).then(|| {
                v6.map(|b| std::net::Ipv6Addr::from(*b).to_string())
                    .collect()
            }),
            ttl: a.ttl,
        });
    }
    Ok(s)
}

/// The snapshot as tables for people.
pub fn render(s: &Snapshot) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "frames {}  bytes {}  passed {}  dropped {}  answered {}  (generation {})",
        s.totals.packets,
        s.totals.bytes,
        s.totals.passed,
        s.totals.dropped,
        s.totals.transmitted,
        s.generation
    );
    if !s.interfaces.is_empty() {
        let _ = writeln!(
            o,
            "\n{:<16} {:>8} {:<10} {:<8}",
            "INTERFACE", "IFINDEX", "LINK", "MODE"
        );
        for i in &s.interfaces {
            let _ = writeln!(
                o,
                "{:<16} {:>8} {:<10} {:<8}",
                i.name, i.ifindex, i.link, i.mode
            );
        }
    }
    if !s.safe_search.is_empty() {
        let _ = writeln!(o, "\n{:<32} {:>6}  ADDRESSES", "SAFESEARCH TARGET", "TTL");
        for t in &s.safe_search {
            let family = |v: &Option<Vec<String>>| match v {
                None => "(not resolved yet)".to_string(),
                Some(a) if a.is_empty() => "(none)".to_string(),
                Some(a) => a.join(" "),
            };
            let _ = writeln!(
                o,
                "{:<32} {:>6}  {} / {}",
                t.target,
                t.ttl,
                family(&t.ipv4),
                family(&t.ipv6)
            );
        }
    }
    let _ = writeln!(
        o,
        "\n{:<20} {:<8} {:>12} {:>14}",
        "REASON", "VERDICT", "FRAMES", "BYTES"
    );
    for r in &s.reasons {
        let _ = writeln!(
            o,
            "{:<20} {:<8} {:>12} {:>14}",
            r.reason, r.verdict, r.packets, r.bytes
        );
    }
    let _ = writeln!(
        o,
        "\n{:<24} {:>12} {:>14} {:>12} {:>14}",
        "DEVICE", "FRAMES", "BYTES", "DROPPED", "DROPPED_BYTES"
    );
    for d in &s.devices {
        let _ = writeln!(
            o,
            "{:<24} {:>12} {:>14} {:>12} {:>14}",
            d.device, d.packets, d.bytes, d.dropped_packets, d.dropped_bytes
        );
    }
    if !s.decisions.is_empty() {
        let _ = writeln!(
            o,
            "\n{:<24} {:<10} {:<8} {:<16} {:<16} {:>12}",
            "DEVICE", "PROTO", "ACTION", "REASON", "CATEGORY", "COUNT"
        );
        for d in &s.decisions {
            let category = match (&d.category_name, d.category) {
                (Some(name), _) => name.clone(),
                (None, Some(c)) => format!("category-{c}"),
                (None, None) => "-".to_string(),
            };
            let _ = writeln!(
                o,
                "{:<24} {:<10} {:<8} {:<16} {:<16} {:>12}",
                d.device, d.proto, d.action, d.reason, category, d.count
            );
        }
    }
    let lost: Vec<String> = s
        .global
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if !lost.is_empty() {
        let _ = writeln!(o, "\n{}", lost.join("  "));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(category: Option<u8>) -> DecisionRow {
        DecisionRow {
            device: "laptop".into(),
            proto: "dns",
            action: "block",
            reason: "category",
            category,
            category_name: None,
            count: 3,
        }
    }

    /// Categories are named by their number in the configuration in force; a number the
    /// list does not cover, and a decision without a category, are shown as such.
    #[test]
    fn decisions_show_category_names() {
        let mut s = Snapshot {
            decisions: vec![decision(Some(1)), decision(Some(7)), decision(None)],
            ..Snapshot::default()
        };
        s.name_categories(&["ads".to_string(), "dns-bypass".to_string()]);
        let named: Vec<Option<&str>> = s
            .decisions
            .iter()
            .map(|d| d.category_name.as_deref())
            .collect();
        assert_eq!(named, [Some("dns-bypass"), None, None]);
        let text = render(&s);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .filter(|l| l.starts_with("laptop"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        let categories: Vec<&str> = rows.iter().map(|r| r[4]).collect();
        assert_eq!(categories, ["dns-bypass", "category-7", "-"]);
    }
}
