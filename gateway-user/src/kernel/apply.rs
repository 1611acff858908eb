//! Writes a compiled configuration into the kernel maps, atomically.
//!
//! The maps hold two generations of policy state. `Applier::apply_at` writes the complete new
//! state into the standby generation (changing only entries that differ), flips
//! `CONTROL.active`, waits for packets that started on the old generation to finish (an RCU
//! grace period), and then brings the old generation in step so it is ready to be the standby
//! next time. A packet reads `CONTROL` once, so it is judged wholly by the old or wholly by the
//! new configuration.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::lpm_trie::Key;
use gateway_common::{
    maps::{
        CidrData, DECISION_CACHE_SLOTS, DEVICE_SLOTS, DecisionKey, DecisionSlot, DeviceName,
        DeviceRef, MAX_POLICIES, MAX_RESOLVERS, block_port_key, cidr_data, policy_index,
    },
    safe_search::{SafeKey, SafeName},
    table::DomainBucket,
};

use super::{Maps, counters::retire_slot, mmap::MmapArray, sys};
use crate::config::{Config, Desired, DomainRules, Images, Previous, build_images};

/// How long packets that read the old generation may still be running, where the kernel cannot
/// say (see `sys::wait_for_running_programs`). XDP programs run for microseconds; this is
/// generous.
pub const GRACE: Duration = Duration::from_millis(20);

/// What the last apply built, kept so the next one changes only what differs: a 10-domain
/// edit of a 1M-domain policy recomputes and writes those domains' buckets, not the whole table.
#[derive(Debug)]
struct ApplyCache {
    seed: u64,
    rules: DomainRules,
    domain_image: Vec<DomainBucket>,
}

/// Writes configurations into one filter's maps, each as the difference to the one before.
#[derive(Debug, Default)]
pub struct Applier {
    /// What the last apply built; `None` before the first, and after one that failed part way
    /// (the next then starts afresh).
    cache: Option<ApplyCache>,
}

impl Applier {
    /// Domains in the domain table, as last applied.
    pub fn domains(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.rules.domains.len())
    }

    /// Writes `config` into `maps` and makes it active, with the policies in force now.
    pub fn apply(&mut self, maps: &mut Maps, config: &Config) -> anyhow::Result<Applied> {
        self.apply_at(maps, config, jiff::Timestamp::now())
    }

    /// Writes `config` into `maps` and makes it active, with the policies in force at `now`.
    pub fn apply_at(
        &mut self,
        maps: &mut Maps,
        config: &Config,
        now: jiff::Timestamp,
    ) -> anyhow::Result<Applied> {
        let slots = assign_slots(maps, config)?;
        // The cache is taken: if this apply fails part way, the next one starts afresh.
        let (rules, previous) = match self.cache.take() {
            Some(cache) => {
                let (rules, changed) = cache.rules.update(config);
                let previous = changed.map(|changed| Previous {
                    image: cache.domain_image,
                    seed: cache.seed,
                    changed,
                });
                (rules, previous)
            }
            None => (DomainRules::compile(config, &HashMap::new()), None),
        };
        let mut desired = Desired::compile_with(config, &slots, now, rules);
        let active = maps.active_generation()?;
        let next = active ^ 1;
        let images = build_images(&desired, maps.settings(active)?.table_seed, previous)?;
        desired.settings.table_seed = images.seed;
        let mut changes = write_generation(maps, next, &desired, &images)
            .with_context(|| format!("writing generation {next}"))?;
        let active_from_boot_ns = sys::boot_ns();
        maps.activate(next)
            .context("activating the new generation")?;
        sys::wait_for_running_programs(GRACE);
        changes += write_generation(maps, active, &desired, &images)
            .with_context(|| format!("writing generation {active}"))?;
        tracing::info!(
            generation = next,
            changes,
            devices = slots.len(),
            "configuration active"
        );
        self.cache = Some(ApplyCache {
            seed: images.seed,
            rules: desired.rules,
            domain_image: images.domains,
        });
        Ok(Applied {
            generation: next,
            slots,
            changes,
            active_from_boot_ns,
        })
    }
}

/// Writes `image` as generation `generation` of `table`; returns the buckets that changed.
fn write_table<B: aya::Pod + PartialEq>(
    table: &mut MmapArray<B>,
    generation: u32,
    image: &[B],
) -> anyhow::Result<usize> {
    write_buckets(table, generation, image, 0..image.len())
}

/// Writes the buckets `indices` of `image` as generation `generation` of `table`, those that
/// differ; returns how many did.
fn write_buckets<B: aya::Pod + PartialEq>(
    table: &mut MmapArray<B>,
    generation: u32,
    image: &[B],
    indices: impl IntoIterator<Item = usize>,
) -> anyhow::Result<usize> {
    anyhow::ensure!(
        table.len() == image.len() * 2,
        "table holds {} entries, not two generations of {}",
        table.len(),
        image.len()
    );
    let base = generation as usize * image.len();
    let mut changes = 0;
    for i in indices {
        let b = image.get(i).context("bucket out of range")?;
        if table.get(base + i).as_ref() != Some(b) {
            anyhow::ensure!(
                table.set(base + i, *b),
                "table index {} out of range",
                base + i
            );
            changes += 1;
        }
    }
    Ok(changes)
}

/// What an `apply` did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The generation now active.
    pub generation: u32,
    /// Device name -> slot.
    pub slots: HashMap<String, u32>,
    /// Map entries written or deleted, both generations together.
    pub changes: usize,
    /// `bpf_ktime_get_boot_ns` just before the generation became active: the kernel's events
    /// from then on were decided under this configuration (bar a frame being judged at that
    /// very moment), those before under the previous one.
    pub active_from_boot_ns: u64,
}

/// Gives every configured device a slot: the one it had (found in `DEVICE_NAMES`, so counters
/// continue across restarts), else a free one, zeroed first. Slots of devices that left the
/// configuration are released, but not reused by this same call: the active generation may still
/// count into them until the flip.
fn assign_slots(maps: &mut Maps, config: &Config) -> anyhow::Result<HashMap<String, u32>> {
    let mut owned: HashMap<String, u32> = HashMap::new();
    let mut free: Vec<u32> = Vec::new();
    for slot in 1..DEVICE_SLOTS {
        match maps.device_names.get(&slot, 0)?.as_str() {
            Some(name) => {
                owned.insert(name.to_string(), slot);
            }
            None => free.push(slot),
        }
    }
    let wanted: HashSet<&str> = config.devices.iter().map(|d| d.name.as_str()).collect();
    let mut slots = HashMap::new();
    for (name, slot) in &owned {
        if wanted.contains(name.as_str()) {
            slots.insert(name.clone(), *slot);
        } else {
            maps.device_names.set(*slot, DeviceName::default(), 0)?;
            tracing::info!(device = %name, slot, "device left the configuration; slot released");
        }
    }
    free.reverse();
    let mut reused: Vec<u32> = Vec::new();
    for dev in &config.devices {
        if slots.contains_key(&dev.name) {
            continue;
        }
        let slot = free.pop().context("no free device slot")?;
        retire_slot(maps, slot)?;
        let name = DeviceName::new(&dev.name).context("device name too long")?;
        maps.device_names.set(slot, name, 0)?;
        slots.insert(dev.name.clone(), slot);
        reused.push(slot);
    }
    if !reused.is_empty() {
        let stale: Vec<DecisionKey> = maps
            .decisions
            .keys()
            .filter_map(Result::ok)
            .filter(|k| reused.contains(&k.slot))
            .collect();
        for k in stale {
            maps.decisions.remove(&k)?;
        }
        // The same slots' keys in the decision cache: freed on every CPU.
        for i in 0..DECISION_CACHE_SLOTS {
            let values = maps.decision_cache.get(&i, 0)?;
            let stale = |s: &DecisionSlot| {
                s.count != 0 && reused.contains(&DecisionKey::from_word(s.key).slot)
            };
            if values.iter().any(stale) {
                let kept: Vec<DecisionSlot> = values
                    .iter()
                    .map(|s| {
                        if stale(s) {
                            DecisionSlot::default()
                        } else {
                            *s
                        }
                    })
                    .collect();
                maps.decision_cache
                    .set(i, aya::maps::PerCpuValues::try_from(kept)?, 0)?;
            }
        }
    }
    Ok(slots)
}

/// Brings generation `generation` to `desired`, touching only entries that differ. Returns the
/// number of entries written or deleted.
fn write_generation(
    maps: &mut Maps,
    generation: u32,
    desired: &Desired,
    images: &Images,
) -> anyhow::Result<usize> {
    let g = generation as u8;
    let mut changes = 0;

    for id in 0..MAX_POLICIES {
        let want = desired
            .policies
            .get(id as usize)
            .copied()
            .unwrap_or_default();
        let idx = policy_index(generation, id);
        if maps.policies.get(&idx, 0)? != want {
            maps.policies.set(idx, want, 0)?;
            changes += 1;
        }
    }

    changes += write_table(&mut maps.by_mac, generation, &images.macs)?;
    changes += write_table(&mut maps.by_ip, generation, &images.ips)?;
    changes += match &images.dirty_domains {
        Some(dirty) => write_buckets(
            &mut maps.domains,
            generation,
            &images.domains,
            dirty.iter().copied(),
        )?,
        None => write_table(&mut maps.domains, generation, &images.domains)?,
    };
    changes += write_table(&mut maps.rulesets, generation, &images.rulesets)?;
    changes += write_table(&mut maps.tls_ports, generation, &desired.tls_ports)?;
    changes += write_table(&mut maps.http_ports, generation, &desired.http_ports)?;

    // SafeSearch: the targets' records first (a name of this generation may point at any).
    changes += maps
        .safe_targets
        .write_generation(generation, &desired.safe_search.targets);
    let current: HashMap<SafeKey, SafeName> = maps
        .safe_names
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| k.generation == generation & 1)
        .collect();
    let want = super::safe_search::names_of(
        generation,
        desired.settings.table_seed,
        &desired.safe_search.names,
    );
    let (put, del) = diff(&current, &want);
    for (k, v) in &put {
        maps.safe_names.insert(k, v, 0)?;
    }
    for k in &del {
        maps.safe_names.remove(k)?;
    }
    changes += put.len() + del.len();

    // LPM keys are packed structs without Hash; key them by (prefix length, data) here.
    let current: HashMap<(u32, CidrData), DeviceRef> = maps
        .by_cidr
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| k.data()[0] == g)
        .map(|(k, v)| ((k.prefix_len(), k.data()), v))
        .collect();
    let want: HashMap<(u32, CidrData), DeviceRef> = desired
        .cidrs
        .iter()
        .map(|((addr, prefix), r)| ((8 + u32::from(*prefix), cidr_data(g, addr)), *r))
        .collect();
    let (put, del) = diff(&current, &want);
    for ((len, data), v) in &put {
        maps.by_cidr.insert(&Key::new(*len, *data), *v, 0)?;
    }
    for (len, data) in &del {
        maps.by_cidr.remove(&Key::new(*len, *data))?;
    }
    changes += put.len() + del.len();

    let current: HashMap<u32, u8> = maps
        .block_ports
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| k >> 31 == generation & 1)
        .collect();
    let want: HashMap<u32, u8> = desired
        .block_ports
        .iter()
        .map(|&(policy, proto, port)| (block_port_key(generation, policy, proto, port), 1))
        .collect();
    let (put, del) = diff(&current, &want);
    for (k, v) in &put {
        maps.block_ports.insert(k, v, 0)?;
    }
    for k in &del {
        maps.block_ports.remove(k)?;
    }
    changes += put.len() + del.len();

    for i in 0..MAX_RESOLVERS {
        let want = desired
            .resolvers
            .get(i as usize)
            .copied()
            .unwrap_or_default();
        let idx = (generation & 1) * MAX_RESOLVERS + i;
        if maps.resolvers.get(&idx, 0)? != want {
            maps.resolvers.set(idx, want, 0)?;
            changes += 1;
        }
    }

    if maps.settings(generation)? != desired.settings {
        maps.set_settings(generation, desired.settings)?;
        changes += 1;
    }
    Ok(changes)
}

/// What to insert (missing or different) and what to remove (no longer wanted).
fn diff<K: Eq + Hash + Copy, V: PartialEq + Copy>(
    current: &HashMap<K, V>,
    want: &HashMap<K, V>,
) -> (Vec<(K, V)>, Vec<K>) {
    let put = want
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let del = current
        .keys()
        .filter(|k| !want.contains_key(k))
        .copied()
        .collect();
    (put, del)
}
