//! Reading the kernel counters: per-CPU values are summed here and nowhere else. Decision
//! counts (the hash map and its array cache together), the frame counters by reason (the
//! uninspected passes derived), device slots, and a slot's retirement before reuse.

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::Ordering,
};

use aya::maps::{IterableMap as _, PerCpuValues};
use gateway_common::{
    enums::{REASON_SLOTS, Reason, VERDICT_SLOTS, Verdict, stats_index},
    maps::{
        Counter, DECISION_CACHE_SLOTS, DEVICE_SLOTS, DecisionKey, DecisionSlot, DeviceName,
        DeviceTraffic,
    },
};

use super::{Maps, batch, maps::slot_names, zeroed_per_cpu};

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

/// Every element of a map, in a few system calls; the values of a per-CPU map summed over CPUs
/// with `per_cpu_sum` (`None`: not a per-CPU map). `None` where the kernel cannot batch (the
/// caller reads element by element instead).
pub fn batch_read<K: aya::Pod, V: aya::Pod + Default>(
    map: &aya::maps::MapData,
    per_cpu_sum: Option<fn(&mut V, &V)>,
) -> anyhow::Result<Option<Vec<(K, V)>>> {
    use std::os::fd::AsFd as _;
    let value_size = if per_cpu_sum.is_some() {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow::anyhow!("possible CPUs: {e}"))?;
        batch::per_cpu_slot(size_of::<V>()) * cpus
    } else {
        size_of::<V>()
    };
    let Some(raw) = batch::lookup_all(map.fd().as_fd(), size_of::<K>(), value_size)? else {
        return Ok(None);
    };
    Ok(Some(
        raw.into_iter()
            .map(|(k, v)| {
                // SAFETY: the kernel wrote a key of the map's key size, a Pod.
                let key: K = unsafe { std::ptr::read_unaligned(k.as_ptr().cast()) };
                let value = match per_cpu_sum {
                    Some(add) => batch::per_cpu(&v, add),
                    // SAFETY: as above, for the value.
                    None => unsafe { std::ptr::read_unaligned(v.as_ptr().cast()) },
                };
                (key, value)
            })
            .collect(),
    ))
}

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
    let Some(raw) = batch::lookup_all(fd, size_of::<u32>(), size * cpus)? else {
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
        .set(slot, zeroed_per_cpu::<DeviceTraffic>()?, 0)?;
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
