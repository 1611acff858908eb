//! The identity and domain tables of a generation, built from a `Desired` as bucketised cuckoo
//! hash tables (`gateway_common::table`) for a seed: anew, or the last domain table changed in
//! place for the domains that changed.

use anyhow::Context as _;
use gateway_common::{
    domain::{RuleSet, fingerprint},
    maps::{IP_BUCKETS, MAC_BUCKETS, MAX_RULESETS},
    table::{self, Bucket, DomainBucket, IpBucket, MacBucket, TableFull},
};

use super::{Changed, Desired, DomainRules};

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

/// The identity tables of one generation, built for a seed.
pub struct Images {
    pub seed: u64,
    pub macs: Vec<MacBucket>,
    pub ips: Vec<IpBucket>,
    pub domains: Vec<DomainBucket>,
    /// The domain buckets that differ from what both generations hold, when the table was
    /// changed in place; `None` when it was built anew (then every bucket is compared).
    pub dirty_domains: Option<Vec<usize>>,
    pub rulesets: Vec<RuleSet>,
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
pub struct Previous {
    pub image: Vec<DomainBucket>,
    pub seed: u64,
    pub changed: Changed,
}

/// Builds the identity tables, keeping `seed` if it works (so unchanged entries stay where they
/// are and only changed buckets are written) and drawing new seeds if a neighbourhood overflows.
/// The domain table is `previous` changed in place when that works.
pub fn build_images(
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

/// A port set as one generation's bitmap (`TLS_PORTS`, `HTTP_PORTS`): bit `p % 64` of word
/// `p / 64`.
pub(super) fn port_bitmap(ports: &std::collections::BTreeSet<u16>) -> Vec<u64> {
    let mut words = vec![0u64; gateway_common::maps::TLS_PORT_WORDS as usize];
    for &p in ports {
        words[usize::from(p >> 6)] |= 1 << (p & 63);
    }
    words
}
