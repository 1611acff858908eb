//! Writes a validated configuration into the kernel maps, atomically.
//!
//! The maps hold two generations of policy state. `apply` writes the complete new state into the
//! standby generation (changing only entries that differ), flips `CONTROL.active`, waits for packets
//! that started on the old generation to finish, and then brings the old generation in step so
//! it is ready to be the standby next time. A packet reads `CONTROL` once, so it is judged
//! wholly by the old or wholly by the new configuration.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    hash::Hash,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::lpm_trie::Key;
use gateway_common::{
    domain::{RuleSet, fingerprint},
    maps::{
        CidrData, DEVICE_SLOTS, DEVICE_SUSPENDED, DOMAIN_LOAD_PERCENT, DecisionKey, DeviceName,
        DeviceRef, DeviceTraffic, DnsAnswer, GenSettings, IP_BUCKETS, MAC_BUCKETS, MAX_POLICIES,
        MAX_RULESETS, POLICY_BLOCK_PORTS, POLICY_DEFAULT_BLOCK, POLICY_HTTPS_EMPTY,
        POLICY_LOG_BLOCKED, POLICY_LOG_NONE, POLICY_MONITOR, POLICY_PARSE_ERROR_BLOCK,
        POLICY_PRESENT, POLICY_QUIC_BLOCK, POLICY_TLS_DROP, POLICY_UNPARSED_TLS_BLOCK, PolicyEntry,
        SETTINGS_HAS_BLOCK_PORTS, SETTINGS_HAS_CIDR, SETTINGS_HAS_IP, SETTINGS_HAS_MAC,
        SETTINGS_TLS_PORTS, SETTINGS_VALID, TLS_PORT_WORDS, block_port_key, cidr_data,
        policy_index,
    },
    table::{self, Bucket, DomainBucket, IpBucket, MacBucket, TableFull},
};

use crate::{
    config::{Config, DnsBlockAnswer, LogLevel, Mode},
    kernel::{Maps, zeroed_per_cpu},
    mmap::MmapArray,
};

/// How long packets that read the old generation may still be running. XDP programs run for
/// microseconds under RCU; this is generous.
pub const GRACE: Duration = Duration::from_millis(20);

/// The state a generation must hold for a configuration.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Desired {
    pub settings: GenSettings,
    pub policies: Vec<PolicyEntry>,
    pub macs: HashMap<[u8; 6], DeviceRef>,
    pub ips: HashMap<[u8; 16], DeviceRef>,
    /// (IPv4-mapped/IPv6 network, prefix in IPv6 bits) -> device.
    pub cidrs: HashMap<([u8; 16], u8), DeviceRef>,
    /// Domain (normalised text) -> rule set id; ids index `rulesets`.
    pub domains: HashMap<String, u32>,
    /// Distinct rule sets; id 0 is the empty one (never stored in the table).
    pub rulesets: Vec<RuleSet>,
    /// Domain-table buckets per generation.
    pub domain_buckets: u32,
    /// (policy id, transport, port) the policies block.
    pub block_ports: BTreeSet<(u32, u8, u16)>,
    /// The TLS ports as a bitmap (`TLS_PORTS` of one generation).
    pub tls_ports: Vec<u64>,
    /// Rule set -> id (`rulesets[id]`).
    pub ruleset_ids: HashMap<RuleSet, u32>,
}

/// What the last `apply` built, kept so the next one changes only what differs: a 10-domain
/// edit of a 1M-domain policy writes those domains' buckets, not the whole table.
#[derive(Debug, Default)]
pub struct ApplyCache {
    seed: u64,
    domains: HashMap<String, u32>,
    ruleset_ids: HashMap<RuleSet, u32>,
    domain_image: Vec<DomainBucket>,
}

/// The domain table `cache` holds, changed into `desired`'s: removed domains deleted, then new
/// and changed ones inserted (an insert replaces the value). `None` when that cannot be done in
/// place (another seed or size, a fingerprint collision, a full neighbourhood): then the table is
/// built anew.
fn update_domains(desired: &Desired, cache: &ApplyCache, seed: u64) -> Option<Vec<DomainBucket>> {
    if cache.seed != seed || cache.domain_image.len() != desired.domain_buckets as usize {
        return None;
    }
    let mut t = cache.domain_image.clone();
    for d in cache.domains.keys() {
        if !desired.domains.contains_key(d) {
            table::remove(&mut t, seed, &fingerprint(d.as_bytes(), seed));
        }
    }
    for (d, id) in &desired.domains {
        match cache.domains.get(d) {
            Some(old) if old == id => {}
            known => {
                let fp = fingerprint(d.as_bytes(), seed);
                // A new domain whose fingerprint is taken: a collision; rebuild with a new seed.
                if known.is_none()
                    && table::lookup(|i| t.get(i as usize), desired.domain_buckets, seed, &fp)
                        .is_some()
                {
                    return None;
                }
                table::insert(&mut t, seed, fp, *id).ok()?;
            }
        }
    }
    Some(t)
}

/// Domain-table buckets for a capacity of `max_domains` (a power of two, at least 1,024).
pub fn domain_buckets(max_domains: u32) -> u32 {
    let slots = u64::from(max_domains) * 100 / u64::from(DOMAIN_LOAD_PERCENT);
    let buckets = slots
        .div_ceil(table::DOMAIN_WAYS as u64)
        .next_power_of_two()
        .max(1024);
    buckets.min(1 << 24) as u32
}

/// Every domain any category or policy names, with what each says about it.
fn rules(config: &Config) -> HashMap<&str, RuleSet> {
    let mut rules: HashMap<&str, RuleSet> = HashMap::new();
    for (id, c) in config.categories.iter().enumerate() {
        let bit = 1u64 << (id & 63);
        for d in &c.domains.block {
            rules.entry(d.as_str()).or_default().categories |= bit;
        }
        for d in &c.domains.allow {
            rules.entry(d.as_str()).or_default().category_exceptions |= bit;
        }
    }
    for (id, p) in config.policies.iter().enumerate() {
        let bit = 1u64 << (id & 63);
        for d in &p.allow {
            rules.entry(d.as_str()).or_default().allow_policies |= bit;
        }
        for d in &p.block {
            rules.entry(d.as_str()).or_default().block_policies |= bit;
        }
    }
    rules
}

impl Desired {
    /// Compiles `config` with the device slots in `slots`, with the policies in force at `now`
    /// (schedules).
    pub fn compile(config: &Config, slots: &HashMap<String, u32>, now: jiff::Timestamp) -> Self {
        Self::compile_after(config, slots, now, &HashMap::new())
    }

    /// As `compile`, keeping the ids of rule sets that `previous` numbered (so a small change
    /// leaves the other domains' entries as they are).
    pub fn compile_after(
        config: &Config,
        slots: &HashMap<String, u32>,
        now: jiff::Timestamp,
        previous: &HashMap<RuleSet, u32>,
    ) -> Self {
        let mut d = Desired::default();
        for p in &config.policies {
            let mut flags = POLICY_PRESENT;
            for (on, bit) in [
                (p.mode == Mode::Monitor, POLICY_MONITOR),
                (p.default_block, POLICY_DEFAULT_BLOCK),
                (p.https_empty, POLICY_HTTPS_EMPTY),
                (p.parse_error_block, POLICY_PARSE_ERROR_BLOCK),
                (p.tls_drop, POLICY_TLS_DROP),
                (p.log == LogLevel::Blocked, POLICY_LOG_BLOCKED),
                (p.log == LogLevel::None, POLICY_LOG_NONE),
                (p.unparsed_tls_block, POLICY_UNPARSED_TLS_BLOCK),
                (p.quic_block, POLICY_QUIC_BLOCK),
                (!p.block_ports.is_empty(), POLICY_BLOCK_PORTS),
            ] {
                if on {
                    flags |= bit;
                }
            }
            let dns_answer = match p.dns_answer {
                DnsBlockAnswer::Nxdomain => DnsAnswer::NxDomain,
                DnsBlockAnswer::Refused => DnsAnswer::Refused,
                DnsBlockAnswer::Sinkhole => DnsAnswer::Sinkhole,
                DnsBlockAnswer::Drop => DnsAnswer::Drop,
            } as u32;
            let id = d.policies.len() as u32;
            d.block_ports
                .extend(p.block_ports.iter().map(|b| (id, b.proto, b.port)));
            d.policies.push(PolicyEntry {
                flags,
                dns_answer,
                block_categories: p.block_categories,
                ttl: p.block_ttl,
                sinkhole_v4_be: p.sinkhole_v4,
                sinkhole_v6_be: p.sinkhole_v6,
            });
        }
        // Rule set ids: the previous ones where the rule set still exists, then the lowest free.
        // Id 0 is the empty rule set.
        let rules = rules(config);
        let distinct: HashSet<RuleSet> = rules.values().copied().collect();
        let mut ids: HashMap<RuleSet, u32> = previous
            .iter()
            .filter(|(r, id)| **id != 0 && distinct.contains(r))
            .map(|(r, id)| (*r, *id))
            .collect();
        let used: HashSet<u32> = ids.values().copied().collect();
        let mut free = (1u32..).filter(|i| !used.contains(i));
        let mut fresh: Vec<&RuleSet> = distinct.iter().filter(|r| !ids.contains_key(r)).collect();
        fresh.sort();
        for r in fresh {
            if let Some(id) = free.next() {
                ids.insert(*r, id);
            }
        }
        let top = ids.values().copied().max().unwrap_or(0) as usize;
        d.rulesets = vec![RuleSet::default(); top + 1];
        for (r, id) in &ids {
            d.rulesets[*id as usize] = *r;
        }
        for (domain, r) in rules {
            if let Some(id) = ids.get(&r) {
                d.domains.insert(domain.to_string(), *id);
            }
        }
        d.ruleset_ids = ids;
        d.domain_buckets = domain_buckets(config.max_domains);
        for dev in &config.devices {
            let Some(&slot) = slots.get(&dev.name) else {
                continue;
            };
            let r = DeviceRef {
                slot,
                policy: config.effective_policy(dev.policy, now) as u16,
                flags: if dev.suspended { DEVICE_SUSPENDED } else { 0 },
            };
            for mac in &dev.macs {
                d.macs.insert(*mac, r);
            }
            for ip in &dev.ips {
                d.ips.insert(*ip, r);
            }
            for c in &dev.cidrs {
                d.cidrs.insert((c.addr, c.prefix), r);
            }
        }
        let mut flags = SETTINGS_VALID;
        if !d.macs.is_empty() {
            flags |= SETTINGS_HAS_MAC;
        }
        if !d.ips.is_empty() {
            flags |= SETTINGS_HAS_IP;
        }
        if !d.cidrs.is_empty() {
            flags |= SETTINGS_HAS_CIDR;
        }
        if !d.block_ports.is_empty() {
            flags |= SETTINGS_HAS_BLOCK_PORTS;
        }
        d.tls_ports = vec![0u64; TLS_PORT_WORDS as usize];
        for &p in &config.tls_ports {
            d.tls_ports[usize::from(p >> 6)] |= 1 << (p & 63);
        }
        if config
            .tls_ports
            .iter()
            .ne([crate::config::DEFAULT_TLS_PORT].iter())
        {
            flags |= SETTINGS_TLS_PORTS;
        }
        d.settings = GenSettings {
            unknown_policy: config.unknown_policy as u32,
            flags,
            table_seed: 0,
            domain_buckets: d.domain_buckets,
            _pad: 0,
        };
        d
    }
}

/// The identity tables of one generation, built for a seed.
struct Images {
    seed: u64,
    macs: Vec<MacBucket>,
    ips: Vec<IpBucket>,
    domains: Vec<DomainBucket>,
    rulesets: Vec<RuleSet>,
}

/// The domain table for `seed`: fingerprint -> rule set id. Fails (and a new seed is drawn) if
/// a neighbourhood overflows or two domains share a fingerprint.
fn build_domains(desired: &Desired, seed: u64) -> Option<Vec<DomainBucket>> {
    let mut t = vec![DomainBucket::default(); desired.domain_buckets as usize];
    let mut seen: HashMap<u64, &str> = HashMap::with_capacity(desired.domains.len());
    for (d, id) in &desired.domains {
        let fp = fingerprint(d.as_bytes(), seed);
        if seen.insert(fp, d).is_some() {
            return None;
        }
        table::insert(&mut t, seed, fp, *id).ok()?;
    }
    Some(t)
}

fn build<B: Bucket>(
    buckets: u32,
    seed: u64,
    entries: impl Iterator<Item = (B::Key, B::Value)>,
) -> Result<Vec<B>, TableFull> {
    let mut t = vec![B::default(); buckets as usize];
    for (k, v) in entries {
        table::insert(&mut t, seed, k, v)?;
    }
    Ok(t)
}

/// Builds the identity tables, keeping `seed` if it works (so unchanged entries stay where they
/// are and only changed buckets are written) and drawing new seeds if a neighbourhood overflows.
fn build_images(
    desired: &Desired,
    seed: u64,
    cache: Option<&ApplyCache>,
) -> anyhow::Result<Images> {
    let mut seed = if seed == 0 { random_seed()? } else { seed };
    let mut cached = cache.and_then(|c| update_domains(desired, c, seed));
    for _ in 0..16 {
        let macs = build::<MacBucket>(
            MAC_BUCKETS,
            seed,
            desired.macs.iter().map(|(m, r)| (table::mac_key(m), *r)),
        );
        let ips = build::<IpBucket>(
            IP_BUCKETS,
            seed,
            desired.ips.iter().map(|(a, r)| (table::ip_key(a), *r)),
        );
        let domains = cached.take().or_else(|| build_domains(desired, seed));
        if let (Ok(macs), Ok(ips), Some(domains)) = (macs, ips, domains) {
            let mut rulesets = desired.rulesets.clone();
            rulesets.resize(MAX_RULESETS as usize, RuleSet::default());
            return Ok(Images {
                seed,
                macs,
                ips,
                domains,
                rulesets,
            });
        }
        seed = random_seed()?;
    }
    anyhow::bail!(
        "tables are too full ({} MACs, {} addresses, {} domains; at most {}, {} and the configured max_domains)",
        desired.macs.len(),
        desired.ips.len(),
        desired.domains.len(),
        gateway_common::maps::MAX_MAC_IDS,
        gateway_common::maps::MAX_IP_IDS
    )
}

fn random_seed() -> anyhow::Result<u64> {
    use std::io::Read as _;
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(u64::from_le_bytes(b) | 1)
}

/// Writes `image` as generation `generation` of `table`; returns the buckets that changed.
fn write_table<B: aya::Pod + PartialEq>(
    table: &mut MmapArray<B>,
    generation: u32,
    image: &[B],
) -> anyhow::Result<usize> {
    anyhow::ensure!(
        table.len() == image.len() * 2,
        "table holds {} entries, not two generations of {}",
        table.len(),
        image.len()
    );
    let base = generation as usize * image.len();
    let mut changes = 0;
    for (i, b) in image.iter().enumerate() {
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
}

/// Writes `config` into `maps` and makes it active, with the policies in force now.
pub fn apply(maps: &mut Maps, config: &Config) -> anyhow::Result<Applied> {
    apply_at(maps, config, jiff::Timestamp::now())
}

/// Writes `config` into `maps` and makes it active, with the policies in force at `now`.
pub fn apply_at(maps: &mut Maps, config: &Config, now: jiff::Timestamp) -> anyhow::Result<Applied> {
    let slots = assign_slots(maps, config)?;
    let cache = maps.apply_cache.take();
    let previous_ids = cache.as_ref().map(|c| &c.ruleset_ids);
    let mut desired =
        Desired::compile_after(config, &slots, now, previous_ids.unwrap_or(&HashMap::new()));
    let active = maps.active_generation()?;
    let next = active ^ 1;
    let images = build_images(&desired, maps.settings(active)?.table_seed, cache.as_ref())?;
    desired.settings.table_seed = images.seed;
    let mut changes = write_generation(maps, next, &desired, &images)
        .with_context(|| format!("writing generation {next}"))?;
    maps.activate(next)
        .context("activating the new generation")?;
    std::thread::sleep(GRACE);
    changes += write_generation(maps, active, &desired, &images)
        .with_context(|| format!("writing generation {active}"))?;
    tracing::info!(
        generation = next,
        changes,
        devices = slots.len(),
        "configuration active"
    );
    maps.apply_cache = Some(ApplyCache {
        seed: images.seed,
        domains: desired.domains,
        ruleset_ids: desired.ruleset_ids,
        domain_image: images.domains,
    });
    Ok(Applied {
        generation: next,
        slots,
        changes,
    })
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
        maps.device_traffic
            .set(slot, zeroed_per_cpu::<DeviceTraffic>()?, 0)?;
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
    changes += write_table(&mut maps.domains, generation, &images.domains)?;
    changes += write_table(&mut maps.rulesets, generation, &images.rulesets)?;
    changes += write_table(&mut maps.tls_ports, generation, &desired.tls_ports)?;

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

/// Device slots as recorded in the maps (slot -> name), for readers that have no configuration.
pub fn slot_names(maps: &Maps) -> anyhow::Result<BTreeMap<u32, String>> {
    let mut out = BTreeMap::new();
    for slot in 1..DEVICE_SLOTS {
        if let Some(name) = maps.device_names.get(&slot, 0)?.as_str() {
            out.insert(slot, name.to_string());
        }
    }
    Ok(out)
}
