//! Writes a validated configuration into the kernel maps, atomically.
//!
//! The maps hold two generations of policy state. `apply` writes the complete new state into the
//! standby generation (changing only entries that differ), flips `CONTROL.active`, waits for packets
//! that started on the old generation to finish (an RCU grace period), and then brings the old generation in step so
//! it is ready to be the standby next time. A packet reads `CONTROL` once, so it is judged
//! wholly by the old or wholly by the new configuration.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    hash::Hash,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::lpm_trie::Key;
use gateway_common::{
    domain::{RuleSet, fingerprint},
    maps::{
        CidrData, DECISION_CACHE_SLOTS, DEVICE_SLOTS, DEVICE_SUSPENDED, DOMAIN_LOAD_PERCENT,
        DecisionKey, DecisionSlot, DeviceName, DeviceRef, DnsAnswer, GenSettings, IP_BUCKETS,
        MAC_BUCKETS, MAX_POLICIES, MAX_RULESETS, POLICY_BLOCK_PORTS, POLICY_DEFAULT_BLOCK,
        POLICY_HTTPS_EMPTY, POLICY_LOG_BLOCKED, POLICY_LOG_NONE, POLICY_MONITOR,
        POLICY_PARSE_ERROR_BLOCK, POLICY_PRESENT, POLICY_QUIC_BLOCK, POLICY_TLS_DROP,
        POLICY_UNPARSED_TLS_BLOCK, PolicyEntry, SETTINGS_HAS_BLOCK_PORTS, SETTINGS_HAS_CIDR,
        SETTINGS_HAS_IP, SETTINGS_HAS_MAC, SETTINGS_TLS_PORTS, SETTINGS_VALID, TLS_PORT_WORDS,
        block_port_key, cidr_data, policy_index,
    },
    table::{self, Bucket, DomainBucket, IpBucket, MacBucket, TableFull},
};

use crate::{
    config::{Config, DnsBlockAnswer, LogLevel, Mode},
    kernel::Maps,
    lists::Domains,
    mmap::MmapArray,
};

/// How long packets that read the old generation may still be running, where the kernel cannot
/// say (see `sys::wait_for_running_programs`). XDP programs run for microseconds; this is
/// generous.
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
    /// What the categories and policies say about each domain.
    pub rules: DomainRules,
    /// Domain-table buckets per generation.
    pub domain_buckets: u32,
    /// (policy id, transport, port) the policies block.
    pub block_ports: BTreeSet<(u32, u8, u16)>,
    /// The TLS ports as a bitmap (`TLS_PORTS` of one generation).
    pub tls_ports: Vec<u64>,
}

/// What the last `apply` built, kept so the next one changes only what differs: a 10-domain
/// edit of a 1M-domain policy recomputes and writes those domains' buckets, not the whole table.
#[derive(Debug, Default)]
pub struct ApplyCache {
    seed: u64,
    rules: DomainRules,
    domain_image: Vec<DomainBucket>,
}

impl ApplyCache {
    /// Domains in the domain table.
    pub fn domains(&self) -> usize {
        self.rules.domains.len()
    }
}

/// The domain table `image` (as built for the previous rules), changed in place for the domains
/// in `changed`: removed ones deleted, new and changed ones inserted. Returns the buckets
/// written, or `None` when that cannot be done in place (another seed or size, a fingerprint
/// collision, a full neighbourhood): then the table is built anew.
fn update_domains(
    image: &mut [DomainBucket],
    rules: &DomainRules,
    changed: &Changed,
    seed: u64,
) -> Option<Vec<usize>> {
    let buckets = image.len() as u32;
    let mut dirty = Vec::new();
    for (d, _) in changed {
        if !rules.domains.contains_key(d) {
            let fp = fingerprint(d.as_bytes(), seed);
            if let Some(b) = table::remove(image, seed, &fp) {
                dirty.push(b);
            }
        }
    }
    for (d, old) in changed {
        let Some(&id) = rules.domains.get(d) else {
            continue;
        };
        let fp = fingerprint(d.as_bytes(), seed);
        // A new domain whose fingerprint is taken: a collision; rebuild with a new seed.
        if *old == 0 && table::lookup(|i| image.get(i as usize), buckets, seed, &fp).is_some() {
            return None;
        }
        table::insert_noting(image, seed, fp, id, |b| dirty.push(b)).ok()?;
    }
    dirty.sort_unstable();
    dirty.dedup();
    Some(dirty)
}

/// Every domain the categories and policies of a configuration name, with the rule set each
/// gets, numbered; and the sources it was compiled from, so that the next configuration can be
/// compiled from the difference.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DomainRules {
    /// Domain (normalised text) -> rule set id; ids index `rulesets`.
    pub domains: HashMap<String, u32>,
    /// Rule sets by id; id 0 is the empty one (never stored in the table), free ids are empty.
    pub rulesets: Vec<RuleSet>,
    /// Rule set -> id.
    pub ids: HashMap<RuleSet, u32>,
    /// Domains per rule set id (an id is freed when it reaches 0).
    uses: Vec<usize>,
    /// Category names and their sources; policy names and their allow and block entries.
    categories: Vec<(String, Vec<Arc<Domains>>)>,
    policies: Vec<(String, BTreeSet<String>, BTreeSet<String>)>,
}

/// Domains whose rule set id changed, each with its old id (0: it had none).
pub type Changed = Vec<(String, u32)>;

/// Above this share of the domains touched, compiling anew is cheaper than the difference.
const INCREMENTAL_LIMIT_PERCENT: usize = 10;

impl DomainRules {
    /// Compiles the rules of `config`, keeping the ids of rule sets that `previous` numbered (so
    /// the table entries of domains whose rules did not change stay as they are).
    pub fn compile(config: &Config, previous: &HashMap<RuleSet, u32>) -> Self {
        // One pass over every source: each domain (allocated and hashed once) -> the index of
        // its rule set in `sets`.
        let size: usize = config
            .categories
            .iter()
            .flat_map(|c| &c.sources)
            .map(|s| s.block.len() + s.allow.len())
            .sum::<usize>()
            + config
                .policies
                .iter()
                .map(|p| p.allow.len() + p.block.len())
                .sum::<usize>();
        let mut domains: HashMap<String, u32> = HashMap::with_capacity(size);
        let mut sets: Vec<RuleSet> = Vec::with_capacity(size);
        let mut add = |d: &String, set: &dyn Fn(&mut RuleSet)| {
            let next = sets.len() as u32;
            let i = *domains.entry(d.clone()).or_insert(next);
            if i == next {
                sets.push(RuleSet::default());
            }
            if let Some(r) = sets.get_mut(i as usize) {
                set(r);
            }
        };
        for (id, c) in config.categories.iter().enumerate() {
            let bit = 1u64 << (id & 63);
            for s in &c.sources {
                for d in &s.block {
                    add(d, &|r| r.categories |= bit);
                }
                for d in &s.allow {
                    add(d, &|r| r.category_exceptions |= bit);
                }
            }
        }
        for (id, p) in config.policies.iter().enumerate() {
            let bit = 1u64 << (id & 63);
            for d in &p.allow {
                add(d, &|r| r.allow_policies |= bit);
            }
            for d in &p.block {
                add(d, &|r| r.block_policies |= bit);
            }
        }
        // Neighbours mostly share a rule set (a list's domains): hash only where it changes.
        let mut distinct: HashSet<RuleSet> = HashSet::new();
        let mut last = None;
        for r in &sets {
            if last != Some(r) {
                distinct.insert(*r);
                last = Some(r);
            }
        }
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
        let mut out = Self {
            rulesets: vec![RuleSet::default(); top + 1],
            uses: vec![0; top + 1],
            ..Self::sources_of(config)
        };
        for (r, id) in &ids {
            out.rulesets[*id as usize] = *r;
        }
        // Rule set index -> id, the same way.
        let mut set_ids = Vec::with_capacity(sets.len());
        let mut last: Option<(&RuleSet, u32)> = None;
        for r in &sets {
            let id = match last {
                Some((l, id)) if l == r => id,
                _ => ids.get(r).copied().unwrap_or(0),
            };
            last = Some((r, id));
            set_ids.push(id);
        }
        for v in domains.values_mut() {
            let id = set_ids.get(*v as usize).copied().unwrap_or(0);
            *v = id;
            if let Some(n) = out.uses.get_mut(id as usize) {
                *n += 1;
            }
        }
        // Domains without any rule (none today: every source entry sets a bit) carry id 0.
        domains.retain(|_, id| *id != 0);
        out.domains = domains;
        out.ids = ids;
        out
    }

    fn sources_of(config: &Config) -> Self {
        Self {
            categories: config
                .categories
                .iter()
                .map(|c| (c.name.clone(), c.sources.clone()))
                .collect(),
            policies: config
                .policies
                .iter()
                .map(|p| (p.name.clone(), p.allow.clone(), p.block.clone()))
                .collect(),
            ..Self::default()
        }
    }

    /// These rules brought to `config`, and each domain whose rule set id changed with its old
    /// id (0: it had none), or `None` when so many changed (a first load, say) that the table is
    /// better built anew. Only the domains of sources that changed are recomputed (a list file
    /// that was read again, inline domains, a policy's entries); when categories or policies
    /// were added, removed or renamed, or too much changed for that to pay, the rules are
    /// compiled anew (keeping the rule set ids) and compared domain by domain.
    pub fn update(self, config: &Config) -> (Self, Option<Changed>) {
        match self.update_in_place(config) {
            Ok((new, changed)) => (new, Some(changed)),
            Err(old) => {
                let old = *old;
                let new = Self::compile(config, &old.ids);
                // Counted up to the limit only: a first load stops at once.
                let limit = (new.domains.len() / 4).max(10_000);
                let gone_or_changed = old
                    .domains
                    .iter()
                    .filter(|(d, id)| new.domains.get(*d) != Some(id))
                    .take(limit + 1)
                    .count();
                let added = new
                    .domains
                    .keys()
                    .filter(|d| !old.domains.contains_key(*d))
                    .take(limit + 1)
                    .count();
                if gone_or_changed + added > limit {
                    return (new, None);
                }
                let mut changed: Changed = old
                    .domains
                    .iter()
                    .filter(|(d, id)| new.domains.get(*d) != Some(id))
                    .map(|(d, id)| (d.clone(), *id))
                    .collect();
                changed.extend(
                    new.domains
                        .keys()
                        .filter(|d| !old.domains.contains_key(*d))
                        .map(|d| (d.clone(), 0)),
                );
                (new, Some(changed))
            }
        }
    }

    /// `update` by recomputing the touched domains only; `Err(self)` when that does not apply.
    fn update_in_place(mut self, config: &Config) -> Result<(Self, Changed), Box<Self>> {
        let next = Self::sources_of(config);
        let same_names = self.categories.len() == next.categories.len()
            && self.policies.len() == next.policies.len()
            && self
                .categories
                .iter()
                .zip(&next.categories)
                .all(|(a, b)| a.0 == b.0)
            && self
                .policies
                .iter()
                .zip(&next.policies)
                .all(|(a, b)| a.0 == b.0);
        let touched = if same_names {
            self.touched_by(&next)
        } else {
            None
        };
        let Some(touched) = touched else {
            return Err(Box::new(self));
        };
        self.categories = next.categories;
        self.policies = next.policies;
        let mut changed = Vec::new();
        for d in touched {
            let want = rule_set_of(config, &d);
            let old = self.domains.get(&d).copied().unwrap_or(0);
            if self.rulesets.get(old as usize) == Some(&want)
                && (old != 0 || want == RuleSet::default())
            {
                continue;
            }
            self.release(old);
            if want == RuleSet::default() {
                self.domains.remove(&d);
            } else {
                let id = self.number(want);
                self.domains.insert(d.clone(), id);
            }
            changed.push((d, old));
        }
        Ok((self, changed))
    }

    /// The domains whose rules may differ between these sources and `next`: every domain of a
    /// category source that is not the same `Arc` on both sides, and the policy entries that
    /// differ. `None` when they are too many.
    fn touched_by<'a>(&'a self, next: &'a Self) -> Option<Vec<String>> {
        let limit = (self.domains.len() * INCREMENTAL_LIMIT_PERCENT / 100).max(10_000);
        let mut touched: BTreeSet<&'a str> = BTreeSet::new();
        for ((_, old), (_, new)) in self.categories.iter().zip(&next.categories) {
            let gone = old
                .iter()
                .filter(|x| !new.iter().any(|y| Arc::ptr_eq(x, y)));
            let came = new
                .iter()
                .filter(|x| !old.iter().any(|y| Arc::ptr_eq(x, y)));
            for s in gone.chain(came) {
                touched.extend(s.block.iter().chain(&s.allow).map(String::as_str));
                if touched.len() > limit {
                    return None;
                }
            }
        }
        for ((_, old_allow, old_block), (_, allow, block)) in
            self.policies.iter().zip(&next.policies)
        {
            touched.extend(old_allow.symmetric_difference(allow).map(String::as_str));
            touched.extend(old_block.symmetric_difference(block).map(String::as_str));
        }
        (touched.len() <= limit).then(|| touched.into_iter().map(str::to_string).collect())
    }

    /// The id of `r`, numbering it (lowest free id) if it is new; counts one more use.
    fn number(&mut self, r: RuleSet) -> u32 {
        let id = match self.ids.get(&r) {
            Some(&id) => id,
            None => {
                let id = (1..self.uses.len())
                    .find(|&i| self.uses[i] == 0)
                    .unwrap_or(self.uses.len());
                if id == self.uses.len() {
                    self.uses.push(0);
                    self.rulesets.push(RuleSet::default());
                }
                self.rulesets[id] = r;
                self.ids.insert(r, id as u32);
                id as u32
            }
        };
        self.uses[id as usize] += 1;
        id
    }

    /// One use of rule set `id` fewer; the id is freed at none.
    fn release(&mut self, id: u32) {
        let i = id as usize;
        if id == 0 || i >= self.uses.len() {
            return;
        }
        self.uses[i] = self.uses[i].saturating_sub(1);
        if self.uses[i] == 0 {
            self.ids.remove(&self.rulesets[i]);
            self.rulesets[i] = RuleSet::default();
        }
    }
}

/// What `config`'s categories and policies say about `domain` (exactly that name).
fn rule_set_of(config: &Config, domain: &str) -> RuleSet {
    let mut r = RuleSet::default();
    for (id, c) in config.categories.iter().enumerate() {
        let bit = 1u64 << (id & 63);
        if c.blocks(domain) {
            r.categories |= bit;
        }
        if c.allows(domain) {
            r.category_exceptions |= bit;
        }
    }
    for (id, p) in config.policies.iter().enumerate() {
        let bit = 1u64 << (id & 63);
        if p.allow.contains(domain) {
            r.allow_policies |= bit;
        }
        if p.block.contains(domain) {
            r.block_policies |= bit;
        }
    }
    r
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

impl Desired {
    /// Compiles `config` with the device slots in `slots`, with the policies in force at `now`
    /// (schedules).
    pub fn compile(config: &Config, slots: &HashMap<String, u32>, now: jiff::Timestamp) -> Self {
        Self::compile_with(
            config,
            slots,
            now,
            DomainRules::compile(config, &HashMap::new()),
        )
    }

    /// As `compile`, with the domain rules already compiled.
    pub fn compile_with(
        config: &Config,
        slots: &HashMap<String, u32>,
        now: jiff::Timestamp,
        rules: DomainRules,
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
        d.rules = rules;
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
            _reserved: 0,
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
    /// The domain buckets that differ from what both generations hold, when the table was
    /// changed in place; `None` when it was built anew (then every bucket is compared).
    dirty_domains: Option<Vec<usize>>,
    rulesets: Vec<RuleSet>,
}

/// The domain table for `seed`: fingerprint -> rule set id. Fails (and a new seed is drawn) if
/// a neighbourhood overflows or two domains share a fingerprint.
fn build_domains(desired: &Desired, seed: u64) -> Option<Vec<DomainBucket>> {
    let buckets = desired.domain_buckets;
    let mut t = vec![DomainBucket::default(); buckets as usize];
    for (d, id) in &desired.rules.domains {
        let fp = fingerprint(d.as_bytes(), seed);
        // Already there: two domains share a fingerprint.
        if table::lookup(|i| t.get(i as usize), buckets, seed, &fp).is_some() {
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

/// The domain table last written, and the domains changed since, for an update in place.
struct Previous {
    image: Vec<DomainBucket>,
    seed: u64,
    changed: Changed,
}

/// Builds the identity tables, keeping `seed` if it works (so unchanged entries stay where they
/// are and only changed buckets are written) and drawing new seeds if a neighbourhood overflows.
/// The domain table is `previous` changed in place when that works.
fn build_images(
    desired: &Desired,
    seed: u64,
    previous: Option<Previous>,
) -> anyhow::Result<Images> {
    let mut seed = if seed == 0 { random_seed()? } else { seed };
    let mut cached = previous
        .filter(|p| p.seed == seed && p.image.len() == desired.domain_buckets as usize)
        .and_then(|mut p| {
            let dirty = update_domains(&mut p.image, &desired.rules, &p.changed, seed)?;
            Some((p.image, Some(dirty)))
        });
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
        let domains = cached
            .take()
            .or_else(|| build_domains(desired, seed).map(|t| (t, None)));
        if let (Ok(macs), Ok(ips), Some((domains, dirty_domains))) = (macs, ips, domains) {
            let mut rulesets = desired.rules.rulesets.clone();
            rulesets.resize(MAX_RULESETS as usize, RuleSet::default());
            return Ok(Images {
                seed,
                macs,
                ips,
                domains,
                dirty_domains,
                rulesets,
            });
        }
        seed = random_seed()?;
    }
    anyhow::bail!(
        "tables are too full ({} MACs, {} addresses, {} domains; at most {}, {} and the configured max_domains)",
        desired.macs.len(),
        desired.ips.len(),
        desired.rules.domains.len(),
        gateway_common::maps::MAX_MAC_IDS,
        gateway_common::maps::MAX_IP_IDS
    )
}

fn random_seed() -> anyhow::Result<u64> {
    let b = crate::secret::random_bytes(8)?;
    let b: [u8; 8] = b.as_slice().try_into().context("8 random bytes")?;
    Ok(u64::from_le_bytes(b) | 1)
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

/// Writes `config` into `maps` and makes it active, with the policies in force now.
pub fn apply(maps: &mut Maps, config: &Config) -> anyhow::Result<Applied> {
    apply_at(maps, config, jiff::Timestamp::now())
}

/// Writes `config` into `maps` and makes it active, with the policies in force at `now`.
pub fn apply_at(maps: &mut Maps, config: &Config, now: jiff::Timestamp) -> anyhow::Result<Applied> {
    let slots = assign_slots(maps, config)?;
    // The cache is taken: if this apply fails part way, the next one starts afresh.
    let (rules, previous) = match maps.apply_cache.take() {
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
    let active_from_boot_ns = crate::sys::boot_ns();
    maps.activate(next)
        .context("activating the new generation")?;
    crate::sys::wait_for_running_programs(GRACE);
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
        crate::stats::retire_slot(maps, slot)?;
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Each domain's rule set, independent of the numbering.
    fn meaning(r: &DomainRules) -> BTreeMap<String, RuleSet> {
        r.domains
            .iter()
            .map(|(d, id)| (d.clone(), r.rulesets[*id as usize]))
            .collect()
    }

    fn config(dir: &Path, text: &str) -> Config {
        let file = dir.join("gateway.toml");
        std::fs::write(&file, text).expect("write");
        Config::load(&file).expect("valid")
    }

    fn text(inline: &str, allow: &str, list: &str) -> String {
        format!(
            "[[category]]\nname = \"ads\"\nlists = [\"{list}\"]\ndomains = [{inline}]\n\
             [[category]]\nname = \"games\"\ndomains = [\"play.example\", \"x3.example\"]\n\
             [[policy]]\nname = \"students\"\nblock_categories = [\"ads\", \"games\"]\nallow = [{allow}]\nblock = [\"bad.example\"]\n"
        )
    }

    #[test]
    fn the_difference_gives_what_compiling_anew_gives() {
        let dir = std::env::temp_dir().join(format!("gw-apply-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let list: String = (0..2000).map(|i| format!("x{i}.example\n")).collect();
        std::fs::write(dir.join("ads.domains"), &list).expect("write");
        std::fs::write(dir.join("other.domains"), "x1.example\nnew.example\n").expect("write");

        let steps = [
            // Start.
            text(
                "\"a.example\", \"b.example\"",
                "\"x5.example\"",
                "ads.domains",
            ),
            // Inline domains changed: one gone, one new, one that the list also has.
            text(
                "\"a.example\", \"c.example\", \"x7.example\"",
                "\"x5.example\"",
                "ads.domains",
            ),
            // A policy allow changed: x5 back to blocked, x6 allowed, the games domain too.
            text(
                "\"a.example\", \"c.example\"",
                "\"x6.example\", \"x3.example\"",
                "ads.domains",
            ),
            // The list file swapped for another.
            text("\"a.example\"", "\"x6.example\"", "other.domains"),
            // Nothing changed.
            text("\"a.example\"", "\"x6.example\"", "other.domains"),
        ];
        let first = config(&dir, &steps[0]);
        let mut rules = DomainRules::compile(&first, &HashMap::new());
        let mut before = meaning(&rules);
        for (i, step) in steps.iter().enumerate().skip(1) {
            let c = config(&dir, step);
            let (next, changed) = match rules.update_in_place(&c) {
                Ok(done) => done,
                Err(_) => panic!("step {i}: compiled anew"),
            };
            let after = meaning(&next);
            assert_eq!(
                after,
                meaning(&DomainRules::compile(&c, &HashMap::new())),
                "step {i}"
            );
            // Exactly the domains whose rule set changed are reported, with their old id.
            let differ: BTreeSet<&String> = before
                .keys()
                .chain(after.keys())
                .filter(|d| before.get(*d) != after.get(*d))
                .collect();
            let reported: BTreeSet<&String> = changed.iter().map(|(d, _)| d).collect();
            assert_eq!(reported, differ, "step {i}");
            // Ids in use are consistent: every rule set numbered once, counted right.
            for (r, id) in &next.ids {
                assert_eq!(next.rulesets[*id as usize], *r);
                let n = next.domains.values().filter(|v| *v == id).count();
                assert_eq!(next.uses[*id as usize], n, "step {i}: uses of {id}");
            }
            if i == steps.len() - 1 {
                assert!(
                    changed.is_empty(),
                    "an unchanged configuration changed {changed:?}"
                );
            }
            before = after;
            rules = next;
        }

        // A renamed category moves no bits here, but renames are compiled anew all the same;
        // the domains compared one by one: nothing changed.
        let renamed = config(&dir, &steps[4].replace("\"games\"", "\"fun\""));
        let rules = match rules.update_in_place(&renamed) {
            Ok(_) => panic!("a renamed category was updated in place"),
            Err(rules) => *rules,
        };
        let (again, changed) = rules.update(&renamed);
        assert_eq!(changed, Some(Vec::new()));
        assert_eq!(
            meaning(&again),
            meaning(&DomainRules::compile(&renamed, &HashMap::new()))
        );
        // A category dropped: its domains lose their rules, and are reported.
        let fewer = config(
            &dir,
            "[[category]]\nname = \"fun\"\ndomains = [\"play.example\"]\n[[policy]]\nname = \"students\"\nblock_categories = [\"fun\"]\n",
        );
        let (fewer_rules, changed) = again.clone().update(&fewer);
        let changed = changed.expect("a few domains changed");
        assert_eq!(
            meaning(&fewer_rules),
            meaning(&DomainRules::compile(&fewer, &HashMap::new()))
        );
        assert!(changed.iter().any(|(d, id)| d == "a.example" && *id != 0));
        // The same, with the numbers kept as the daemon keeps them: "ads" stays as an empty
        // category, so the names are the same and the update is in place; the result is what
        // compiling the renumbered configuration anew gives, "fun" keeps its bit, and ads'
        // domains lose their rules.
        let previous = renamed.category_names();
        let mut kept = fewer.clone();
        assert!(kept.keep_category_numbers(&previous).is_empty());
        assert_eq!(kept.categories.len(), previous.len());
        let (kept_rules, changed) = match again.update_in_place(&kept) {
            Ok(done) => done,
            Err(_) => panic!("a dropped category with its number kept was compiled anew"),
        };
        assert_eq!(
            meaning(&kept_rules),
            meaning(&DomainRules::compile(&kept, &HashMap::new()))
        );
        let fun = previous.iter().position(|n| n == "fun").expect("fun");
        let play = kept_rules
            .domains
            .get("play.example")
            .expect("play.example");
        assert_eq!(
            kept_rules.rulesets[*play as usize].categories,
            1 << fun,
            "fun keeps its number"
        );
        assert!(!kept_rules.domains.contains_key("a.example"));
        assert!(changed.iter().any(|(d, id)| d == "a.example" && *id != 0));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
