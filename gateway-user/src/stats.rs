//! Reading the kernel counters. Per-CPU values are summed here and nowhere else.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    sync::atomic::Ordering,
};

use aya::maps::{IterableMap as _, PerCpuValues};
use gateway_common::{
    enums::{
        Action, AttachMode, GLOBAL_SLOTS, Global, LinkType, Proto, REASON_SLOTS, Reason,
        VERDICT_SLOTS, Verdict, stats_index,
    },
    maps::{
        Counter, DECISION_CACHE_SLOTS, DEVICE_SLOTS, DecisionKey, DecisionSlot, DeviceName,
        DeviceTraffic, IfaceInfo, MAX_IFACES, NO_CATEGORY, UNKNOWN_SLOT,
    },
};
use serde::Serialize;

use crate::{apply::slot_names, kernel::Maps};

/// Values that per-CPU maps hold and that add up across CPUs.
pub trait Summable: aya::Pod + Default {
    fn add(&mut self, other: &Self);
}

impl Summable for u64 {
    fn add(&mut self, other: &Self) {
        *self = self.wrapping_add(*other);
    }
}

impl Summable for Counter {
    fn add(&mut self, o: &Self) {
        self.packets = self.packets.wrapping_add(o.packets);
        self.bytes = self.bytes.wrapping_add(o.bytes);
    }
}

impl Summable for DeviceTraffic {
    fn add(&mut self, o: &Self) {
        self.packets = self.packets.wrapping_add(o.packets);
        self.bytes = self.bytes.wrapping_add(o.bytes);
        self.dropped_packets = self.dropped_packets.wrapping_add(o.dropped_packets);
        self.dropped_bytes = self.dropped_bytes.wrapping_add(o.dropped_bytes);
    }
}

/// The sum over CPUs.
pub fn sum<T: Summable>(values: &PerCpuValues<T>) -> T {
    let mut total = T::default();
    for v in values.iter() {
        total.add(v);
    }
    total
}

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

/// Every element of a map, in a few system calls; the values of a per-CPU map summed over CPUs
/// with `per_cpu_sum` (`None`: not a per-CPU map). `None` where the kernel cannot batch (the
/// caller reads element by element instead).
fn batch_read<K: aya::Pod, V: aya::Pod + Default>(
    map: &aya::maps::MapData,
    per_cpu_sum: Option<fn(&mut V, &V)>,
) -> anyhow::Result<Option<Vec<(K, V)>>> {
    use std::os::fd::AsFd as _;
    let value_size = if per_cpu_sum.is_some() {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow::anyhow!("possible CPUs: {e}"))?;
        size_of::<V>().div_ceil(8) * 8 * cpus
    } else {
        size_of::<V>()
    };
    let Some(raw) = crate::batch::lookup_all(map.fd().as_fd(), size_of::<K>(), value_size)? else {
        return Ok(None);
    };
    Ok(Some(
        raw.into_iter()
            .map(|(k, v)| {
                // SAFETY: the kernel wrote a key of the map's key size, a Pod.
                let key: K = unsafe { std::ptr::read_unaligned(k.as_ptr().cast()) };
                let value = match per_cpu_sum {
                    Some(add) => crate::batch::per_cpu(&v, add),
                    // SAFETY: as above, for the value.
                    None => unsafe { std::ptr::read_unaligned(v.as_ptr().cast()) },
                };
                (key, value)
            })
            .collect(),
    ))
}

/// Name shown for slot 0.
pub const UNKNOWN_DEVICE: &str = "(unknown)";

/// Every decision key's count over all CPUs: `DECISIONS` (read in batches where the kernel can)
/// plus the keys counted in `DECISION_CACHE`. Sorted by key.
pub fn decision_counts(maps: &Maps) -> anyhow::Result<Vec<(DecisionKey, u64)>> {
    let table: Vec<(DecisionKey, u64)> =
        match batch_read::<DecisionKey, u64>(maps.decisions.map(), Some(Summable::add))? {
            Some(all) => all,
            None => maps
                .decisions
                .iter()
                .map(|item| item.map(|(k, v)| (k, sum(&v))))
                .collect::<Result<_, _>>()?,
        };
    let mut all: BTreeMap<DecisionKey, u64> = BTreeMap::new();
    for (k, n) in table {
        *all.entry(k).or_default() += n;
    }
    for slot in decision_cache_slots(maps)? {
        if slot.count != 0 {
            *all.entry(DecisionKey::from_word(slot.key)).or_default() += slot.count;
        }
    }
    Ok(all.into_iter().collect())
}

/// Every CPU's every slot of `DECISION_CACHE` (in batches where the kernel can).
fn decision_cache_slots(maps: &Maps) -> anyhow::Result<Vec<DecisionSlot>> {
    use std::os::fd::AsFd as _;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow::anyhow!("possible CPUs: {e}"))?;
    let size = size_of::<DecisionSlot>();
    let fd = maps.decision_cache.map().fd().as_fd();
    let Some(raw) = crate::batch::lookup_all(fd, size_of::<u32>(), size * cpus)? else {
        let mut out = Vec::new();
        for i in 0..DECISION_CACHE_SLOTS {
            out.extend(maps.decision_cache.get(&i, 0)?.iter().copied());
        }
        return Ok(out);
    };
    Ok(raw
        .iter()
        .flat_map(|(_, v)| v.chunks_exact(size))
        // SAFETY: the kernel wrote one `DecisionSlot` (a Pod) per CPU.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<DecisionSlot>()) })
        .collect())
}

/// Frames and bytes by `stats_index(reason, verdict)`, summed over CPUs.
///
/// The kernel counts uninspected passes (the fast path, most frames) in `DEVICE_TRAFFIC` only:
/// every frame is counted there once, and every other frame once more in `STATS`. So they are
/// derived: all devices' traffic, plus that of slots retired for reuse (kept in the
/// uninspected-pass entry of `STATS`, which the kernel leaves alone), less every other reason.
/// The three are read in that order — the retired traffic, the devices, the other reasons — so
/// frames counted meanwhile can only make the result smaller than the truth, never larger; and
/// it never reports less than it did before (`Maps::uninspected_floor`), so it stays a counter.
pub fn reason_counters(maps: &Maps) -> anyhow::Result<HashMap<u32, Counter>> {
    let implied = stats_index(Reason::Uninspected, Verdict::Pass);
    let retired = sum(&maps.stats.get(&implied, 0)?);
    let mut frames = retired;
    match batch_read::<u32, DeviceTraffic>(maps.device_traffic.map(), Some(Summable::add))? {
        Some(all) => {
            for (_, t) in all {
                frames.add(&frames_of(&t));
            }
        }
        None => {
            for slot in 0..DEVICE_SLOTS {
                let t = sum(&maps.device_traffic.get(&slot, 0)?);
                frames.add(&frames_of(&t));
            }
        }
    }
    let mut counters: HashMap<u32, Counter> =
        match batch_read::<u32, Counter>(maps.stats.map(), Some(Summable::add))? {
            Some(all) => all.into_iter().collect(),
            None => (0..REASON_SLOTS * VERDICT_SLOTS)
                .map(|i| Ok((i, sum(&maps.stats.get(&i, 0)?))))
                .collect::<anyhow::Result<_>>()?,
        };
    counters.remove(&implied);
    let mut derived = frames;
    for c in counters.values() {
        derived.packets = derived.packets.saturating_sub(c.packets);
        derived.bytes = derived.bytes.saturating_sub(c.bytes);
    }
    let floor = &maps.uninspected_floor;
    derived.packets = derived
        .packets
        .max(floor.0.fetch_max(derived.packets, Ordering::Relaxed));
    derived.bytes = derived
        .bytes
        .max(floor.1.fetch_max(derived.bytes, Ordering::Relaxed));
    counters.insert(implied, derived);
    Ok(counters)
}

/// A device's frames and bytes, dropped or not.
fn frames_of(t: &DeviceTraffic) -> Counter {
    Counter {
        packets: t.packets,
        bytes: t.bytes,
    }
}

/// The device slots the maps record (slot -> name): one batched read where the kernel has
/// batch operations, else a lookup per slot.
pub fn device_slots(maps: &Maps) -> anyhow::Result<BTreeMap<u32, String>> {
    Ok(
        match batch_read::<u32, DeviceName>(maps.device_names.map(), None)? {
            Some(all) => all
                .into_iter()
                .filter(|(slot, _)| *slot != 0)
                .filter_map(|(slot, n)| Some((slot, n.as_str()?.to_string())))
                .collect(),
            None => slot_names(maps)?,
        },
    )
}

/// Zeroes a device slot before it is given to another device, and adds what it had counted to
/// the retired traffic (see `reason_counters`). Nothing counts into the slot meanwhile:
/// `apply::assign_slots` reuses only slots released by an earlier apply, whose generations (and
/// the grace period after the flip) are over, so no frame is attributed to it any more.
pub fn retire_slot(maps: &mut Maps, slot: u32) -> anyhow::Result<()> {
    let t = sum(&maps.device_traffic.get(&slot, 0)?);
    maps.device_traffic
        .set(slot, crate::kernel::zeroed_per_cpu::<DeviceTraffic>()?, 0)?;
    if t.packets == 0 && t.bytes == 0 {
        return Ok(());
    }
    let implied = stats_index(Reason::Uninspected, Verdict::Pass);
    let mut retired: Vec<Counter> = maps.stats.get(&implied, 0)?.iter().copied().collect();
    if let Some(first) = retired.first_mut() {
        first.add(&frames_of(&t));
    }
    maps.stats
        .set(implied, aya::maps::PerCpuValues::try_from(retired)?, 0)?;
    Ok(())
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
