//! The SafeSearch maps: a generation's covered names (`SAFE_NAMES`, written with the
//! generation) and the enforcement names' records (`SAFE_TARGETS`), whose addresses the
//! daemon's resolver updates at any time. One handle, shared by the applier and the resolver.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex, MutexGuard, atomic},
};

use aya::maps::MapData;
use gateway_common::safe_search::{
    MAX_SAFE_ADDRS, MAX_SAFE_TARGETS, SAFE_V4_KNOWN, SAFE_V6_KNOWN, SafeAddrs, SafeKey, SafeName,
    SafeTarget, target_index,
};

use super::mmap::MmapArray;

/// What the resolver learnt of an enforcement name. `None`: that family is not known yet (the
/// kernel passes such queries); `Some(empty)`: the name has no address of that family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub v4: Option<Vec<Ipv4Addr>>,
    pub v6: Option<Vec<Ipv6Addr>>,
    /// Seconds the answers may be cached (the kernel's answers carry it).
    pub ttl: u32,
}

impl Resolved {
    fn addrs(&self) -> SafeAddrs {
        let mut a = SafeAddrs {
            ttl: self.ttl,
            ..SafeAddrs::default()
        };
        if let Some(v4) = &self.v4 {
            a.flags |= SAFE_V4_KNOWN;
            for (slot, ip) in a.v4_be.iter_mut().zip(v4.iter().take(MAX_SAFE_ADDRS)) {
                *slot = ip.octets();
                a.n4 += 1;
            }
        }
        if let Some(v6) = &self.v6 {
            a.flags |= SAFE_V6_KNOWN;
            for (slot, ip) in a.v6_be.iter_mut().zip(v6.iter().take(MAX_SAFE_ADDRS)) {
                *slot = ip.octets();
                a.n6 += 1;
            }
        }
        a
    }
}

struct Inner {
    array: MmapArray<SafeTarget>,
    /// The last addresses of every name resolved (written into a generation's new records).
    known: HashMap<String, Resolved>,
}

/// `SAFE_TARGETS`, shared (cheap to clone).
#[derive(Clone)]
pub struct SafeTargets(Arc<Mutex<Inner>>);

impl std::fmt::Debug for SafeTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SafeTargets")
    }
}

impl SafeTargets {
    pub(super) fn new(map: MapData) -> anyhow::Result<Self> {
        Ok(Self(Arc::new(Mutex::new(Inner {
            array: MmapArray::new(map)?,
            known: HashMap::new(),
        }))))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it cannot leave a record half written that matters: every
        // write below is of whole records.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes generation `generation`'s records those of `targets` (record `t` is target `t`),
    /// with the addresses known for each; the other records are cleared. Returns the records
    /// written.
    pub fn write_generation(&self, generation: u32, targets: &[String]) -> usize {
        let mut inner = self.lock();
        let mut changes = 0;
        for t in 0..MAX_SAFE_TARGETS {
            let idx = target_index(generation, t) as usize;
            let want = targets.get(t as usize).and_then(|name| {
                let mut rec = SafeTarget::named(name)?;
                if let Some(r) = inner.known.get(name) {
                    rec.sets[0] = r.addrs();
                }
                Some(rec)
            });
            let want = want.unwrap_or_default();
            let have = inner.array.get(idx);
            // The set in force compared, not which set that is.
            let same = have.is_some_and(|h| {
                h.name_len == want.name_len && h.name == want.name && h.addrs() == want.addrs()
            });
            if !same {
                inner.array.set(idx, want);
                changes += 1;
            }
        }
        changes
    }

    /// New addresses for the enforcement name `name` (a family `None` keeps what was known of it): remembered, and written into each record
    /// of that name (both generations) — the set not in force first, then `current` flipped, so
    /// a frame reads the old set or the new one whole. Returns the records changed.
    pub fn resolved(&self, name: &str, mut r: Resolved) -> usize {
        let mut inner = self.lock();
        // A family not resolved this time keeps what was known of it.
        if let Some(before) = inner.known.get(name) {
            if r.v4.is_none() {
                r.v4 = before.v4.clone();
            }
            if r.v6.is_none() {
                r.v6 = before.v6.clone();
            }
        }
        let addrs = r.addrs();
        inner.known.insert(name.to_string(), r);
        let Some(wanted) = SafeTarget::named(name) else {
            return 0;
        };
        let mut changes = 0;
        for idx in 0..inner.array.len() {
            let Some(mut rec) = inner.array.get(idx) else {
                continue;
            };
            if rec.name_len != wanted.name_len || rec.name != wanted.name || *rec.addrs() == addrs {
                continue;
            }
            let next = (rec.current ^ 1) & 1;
            rec.sets[next as usize] = addrs;
            inner.array.set(idx, rec);
            atomic::fence(atomic::Ordering::Release);
            rec.current = next;
            inner.array.set(idx, rec);
            changes += 1;
        }
        changes
    }

    /// Forgets every address learnt (a shared test filter emptied for its next user; the
    /// records themselves are emptied with the map).
    pub fn forget(&self) {
        self.lock().known.clear();
    }

    /// Every SafeSearch target of `generation` with the addresses in force for it.
    pub fn targets(&self, generation: u32) -> Vec<(String, SafeAddrs)> {
        let inner = self.lock();
        (0..MAX_SAFE_TARGETS)
            .filter_map(|t| inner.array.get(target_index(generation, t) as usize))
            .filter(|r| r.name_len > 0)
            .map(|r| (wire_text(&r), *r.addrs()))
            .collect()
    }
}

/// A record's name as text (`forcesafesearch.google.com`).
fn wire_text(r: &SafeTarget) -> String {
    let wire = r.name.get(..r.name_len as usize).unwrap_or(&[]);
    let mut labels = Vec::new();
    let mut at = 0usize;
    while let Some(&len) = wire.get(at) {
        if len == 0 {
            break;
        }
        let label = wire.get(at + 1..at + 1 + usize::from(len)).unwrap_or(&[]);
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += 1 + usize::from(len);
    }
    labels.join(".")
}

/// `SAFE_NAMES` of one generation as the kernel needs it: key -> value.
pub fn names_of(
    generation: u32,
    seed: u64,
    names: &std::collections::BTreeMap<String, SafeName>,
) -> HashMap<SafeKey, SafeName> {
    names
        .iter()
        .map(|(n, v)| {
            (
                SafeKey {
                    fp: gateway_common::domain::fingerprint(n.as_bytes(), seed),
                    generation: generation & 1,
                    _pad: 0,
                },
                *v,
            )
        })
        .collect()
}
