//! A configuration compiled into what one generation of the kernel maps must hold (`Desired`):
//! policies, identities, the domain rules. `DomainRules` compiles a new configuration from the
//! difference to the last one, so that the work of a reload follows the size of the change.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use gateway_common::{
    domain::RuleSet,
    maps::{
        DEVICE_SUSPENDED, DOMAIN_LOAD_PERCENT, DeviceRef, DnsAnswer, GenSettings,
        POLICY_BLOCK_PORTS, POLICY_DEFAULT_BLOCK, POLICY_HTTP_DROP, POLICY_HTTPS_EMPTY,
        POLICY_LOG_BLOCKED, POLICY_LOG_NONE, POLICY_MONITOR, POLICY_PARSE_ERROR_BLOCK,
        POLICY_PRESENT, POLICY_QUIC_BLOCK, POLICY_SAFE_SEARCH, POLICY_TLS_DROP,
        POLICY_UNPARSED_HTTP_BLOCK, POLICY_UNPARSED_TLS_BLOCK, PolicyEntry,
        SETTINGS_HAS_BLOCK_PORTS, SETTINGS_HAS_CIDR, SETTINGS_HAS_IP, SETTINGS_HAS_MAC,
        SETTINGS_HTTP_PORTS, SETTINGS_TLS_PORTS, SETTINGS_VALID, below_id, domain_value, here_id,
    },
    table,
};

use super::{Config, DnsBlockAnswer, LogLevel, Mode, lists::Domains};

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
    /// The plain-HTTP ports as a bitmap (`HTTP_PORTS` of one generation).
    pub http_ports: Vec<u64>,
    /// The SafeSearch targets and covered names (`SAFE_TARGETS`, `SAFE_NAMES`).
    pub safe_search: super::safe_search::SafeImage,
    /// Every policy's `dns_resolvers` together (`RESOLVERS` of one generation; at most
    /// `MAX_RESOLVERS`); bit `i` of a policy's `resolvers` is entry `i`.
    pub resolvers: Vec<[u8; 16]>,
}

/// Every domain the categories and policies of a configuration name, with the rule set each
/// gets, numbered; and the sources it was compiled from, so that the next configuration can be
/// compiled from the difference.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DomainRules {
    /// Domain (normalised text) -> its table value: the rule set ids (indexes of `rulesets`) for
    /// the name and for the names below it (`gateway_common::maps::domain_value`).
    pub domains: HashMap<String, u32>,
    /// Rule sets by id; id 0 is the empty one (never stored in the table), free ids are empty.
    pub rulesets: Vec<RuleSet>,
    /// Rule set -> id.
    pub ids: HashMap<RuleSet, u32>,
    /// Uses per rule set id, by domains and their halves (an id is freed when it reaches 0).
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
            .map(|s| s.names().count())
            .sum::<usize>()
            + config
                .policies
                .iter()
                .map(|p| p.allow.len() + p.block.len())
                .sum::<usize>();
        let mut domains: HashMap<String, u32> = HashMap::with_capacity(size);
        // Per domain: the rule set of the name itself, and of the names below it.
        let mut sets: Vec<[RuleSet; 2]> = Vec::with_capacity(size);
        let mut add = |d: &String, halves: [bool; 2], set: &dyn Fn(&mut RuleSet)| {
            let next = sets.len() as u32;
            let i = *domains.entry(d.clone()).or_insert(next);
            if i == next {
                sets.push([RuleSet::default(); 2]);
            }
            if let Some(pair) = sets.get_mut(i as usize) {
                for (r, on) in pair.iter_mut().zip(halves) {
                    if on {
                        set(r);
                    }
                }
            }
        };
        const BOTH: [bool; 2] = [true, true];
        const HERE: [bool; 2] = [true, false];
        const BELOW: [bool; 2] = [false, true];
        for (id, c) in config.categories.iter().enumerate() {
            let bit = 1u64 << (id & 63);
            for s in &c.sources {
                for (names, halves, exception) in [
                    (&s.block, BOTH, false),
                    (&s.exact.block, HERE, false),
                    (&s.below.block, BELOW, false),
                    (&s.allow, BOTH, true),
                    (&s.exact.allow, HERE, true),
                    (&s.below.allow, BELOW, true),
                ] {
                    let field = |r: &mut RuleSet| {
                        if exception {
                            r.category_exceptions |= bit
                        } else {
                            r.categories |= bit
                        }
                    };
                    for d in names {
                        add(d, halves, &field);
                    }
                }
            }
        }
        for (id, p) in config.policies.iter().enumerate() {
            let bit = 1u64 << (id & 63);
            for d in &p.allow {
                add(d, BOTH, &|r| r.allow_policies |= bit);
            }
            for d in &p.block {
                add(d, BOTH, &|r| r.block_policies |= bit);
            }
        }
        // Neighbours mostly share a rule set (a list's domains): hash only where it changes.
        let mut distinct: HashSet<RuleSet> = HashSet::new();
        let mut last = None;
        for r in sets.iter().flatten() {
            if last != Some(r) && *r != RuleSet::default() {
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
        // Rule set index -> the domain's value (both ids), the same way.
        let mut set_ids = Vec::with_capacity(sets.len());
        let mut last: Option<(&[RuleSet; 2], u32)> = None;
        for pair in &sets {
            let value = match last {
                Some((l, v)) if l == pair => v,
                _ => {
                    let [here, below] = pair.map(|r| ids.get(&r).copied().unwrap_or(0));
                    domain_value(here, below)
                }
            };
            last = Some((pair, value));
            set_ids.push(value);
        }
        for v in domains.values_mut() {
            let value = set_ids.get(*v as usize).copied().unwrap_or(0);
            *v = value;
            for id in [here_id(value), below_id(value)] {
                if id != 0
                    && let Some(n) = out.uses.get_mut(id as usize)
                {
                    *n += 1;
                }
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
            let want = rule_sets_of(config, &d);
            let old = self.domains.get(&d).copied().unwrap_or(0);
            let have =
                [here_id(old), below_id(old)].map(|id| self.rulesets.get(id as usize).copied());
            if have == want.map(Some) && (old != 0 || want == [RuleSet::default(); 2]) {
                continue;
            }
            self.release(here_id(old));
            self.release(below_id(old));
            if want == [RuleSet::default(); 2] {
                self.domains.remove(&d);
            } else {
                let [here, below] = want.map(|r| self.number(r));
                self.domains.insert(d.clone(), domain_value(here, below));
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
                touched.extend(s.names().map(String::as_str));
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

    /// The id of `r`, numbering it (lowest free id) if it is new; counts one more use. The empty
    /// rule set is id 0, never counted.
    fn number(&mut self, r: RuleSet) -> u32 {
        if r == RuleSet::default() {
            return 0;
        }
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

/// What `config`'s categories and policies say about the name `domain` itself, and about the
/// names below it.
fn rule_sets_of(config: &Config, domain: &str) -> [RuleSet; 2] {
    let mut r = [RuleSet::default(); 2];
    for (id, c) in config.categories.iter().enumerate() {
        let bit = 1u64 << (id & 63);
        for s in &c.sources {
            for (half, (block, allow)) in r.iter_mut().zip(s.rules_of(domain)) {
                if block {
                    half.categories |= bit;
                }
                if allow {
                    half.category_exceptions |= bit;
                }
            }
        }
    }
    for (id, p) in config.policies.iter().enumerate() {
        let bit = 1u64 << (id & 63);
        for half in &mut r {
            if p.allow.contains(domain) {
                half.allow_policies |= bit;
            }
            if p.block.contains(domain) {
                half.block_policies |= bit;
            }
        }
    }
    r
}

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
        let all: std::collections::BTreeSet<[u8; 16]> = config
            .policies
            .iter()
            .filter_map(|p| p.dns_resolvers.as_ref())
            .flatten()
            .copied()
            .collect();
        d.resolvers = all.into_iter().collect();
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
                (!p.safe_search.is_empty(), POLICY_SAFE_SEARCH),
                (p.http_drop, POLICY_HTTP_DROP),
                (p.unparsed_http_block, POLICY_UNPARSED_HTTP_BLOCK),
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
                resolvers: p.dns_resolvers.as_ref().map_or(0, |set| {
                    d.resolvers
                        .iter()
                        .enumerate()
                        .filter(|(_, a)| set.contains(*a))
                        .fold(0, |m, (i, _)| m | 1 << i)
                }),
                _pad: 0,
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
        d.tls_ports = super::images::port_bitmap(&config.tls_ports);
        if config
            .tls_ports
            .iter()
            .ne([crate::config::DEFAULT_TLS_PORT].iter())
        {
            flags |= SETTINGS_TLS_PORTS;
        }
        d.http_ports = super::images::port_bitmap(&config.http_ports);
        if config
            .http_ports
            .iter()
            .ne([crate::config::DEFAULT_HTTP_PORT].iter())
        {
            flags |= SETTINGS_HTTP_PORTS;
        }
        let engines: Vec<&[usize]> = config
            .policies
            .iter()
            .map(|p| p.safe_search.as_slice())
            .collect();
        d.safe_search =
            super::safe_search::SafeImage::compile(&config.safe_search.engines, &engines);
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

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::Path};

    use super::*;

    /// Each domain's rule sets (the name's, the names' below), independent of the numbering.
    fn meaning(r: &DomainRules) -> BTreeMap<String, [RuleSet; 2]> {
        r.domains
            .iter()
            .map(|(d, v)| {
                (
                    d.clone(),
                    [here_id(*v), below_id(*v)].map(|id| r.rulesets[id as usize]),
                )
            })
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
                let n = next
                    .domains
                    .values()
                    .flat_map(|v| [here_id(*v), below_id(*v)])
                    .filter(|v| v == id)
                    .count();
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
            kept_rules.rulesets[here_id(*play) as usize].categories,
            1 << fun,
            "fun keeps its number"
        );
        assert!(!kept_rules.domains.contains_key("a.example"));
        assert!(changed.iter().any(|(d, id)| d == "a.example" && *id != 0));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A name's two halves are numbered apart and updated in place like whole rules.
    #[test]
    fn scoped_rules_compile_to_their_halves() {
        let dir = std::env::temp_dir().join(format!("gw-halves-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let text = "[[category]]\nname = \"ads\"\nlists = [\"ads.txt\"]\n[[policy]]\nname = \"p\"\nblock_categories = [\"ads\"]\n";
        std::fs::write(
            dir.join("ads.txt"),
            "[Adblock Plus]\n|e.example^\n||*.w.example^\n||s.example^\n",
        )
        .expect("list");
        let c = config(&dir, text);
        let rules = DomainRules::compile(&c, &HashMap::new());
        let ads = RuleSet {
            categories: 1,
            ..RuleSet::default()
        };
        let none = RuleSet::default();
        let m = meaning(&rules);
        assert_eq!(m["e.example"], [ads, none]);
        assert_eq!(m["w.example"], [none, ads]);
        assert_eq!(m["s.example"], [ads, ads]);
        assert_eq!(
            rules.rulesets.iter().filter(|r| **r == ads).count(),
            1,
            "one id for the set"
        );
        // Rewritten (a new mtime and size): e widened, w gone, s for the name only.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(
            dir.join("ads.txt"),
            "[Adblock Plus]\n||e.example^\n|s.example^\n",
        )
        .expect("list");
        let c = config(&dir, text);
        let (next, changed) = match rules.update_in_place(&c) {
            Ok(done) => done,
            Err(_) => panic!("compiled anew"),
        };
        assert_eq!(
            meaning(&next),
            meaning(&DomainRules::compile(&c, &HashMap::new()))
        );
        let m = meaning(&next);
        assert_eq!((m["e.example"], m["s.example"]), ([ads, ads], [ads, none]));
        assert!(!m.contains_key("w.example"));
        let reported: BTreeSet<&str> = changed.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(
            reported,
            BTreeSet::from(["e.example", "s.example", "w.example"])
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
