//! Typed handles on every map the filter shares: opened from pins or taken from a loaded
//! object; the control record and generation settings; the event ring.

use std::{collections::BTreeMap, path::Path, sync::atomic::AtomicU64};

use anyhow::{Context as _, anyhow};
use aya::maps::{Array, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf};
use gateway_common::{
    domain::RuleSet,
    maps::{
        CidrData, Control, Counter, DEVICE_SLOTS, DecisionKey, DecisionSlot, DeviceName, DeviceRef,
        DeviceTraffic, GenSettings, IfaceInfo, Meta, PolicyEntry, names,
    },
    table::{DomainBucket, IpBucket, MacBucket},
};

use super::mmap::MmapArray;

/// Typed handles on every shared map.
pub struct Maps {
    pub meta: Array<MapData, Meta>,
    /// The control record (one entry; written with the map syscall: the loader does not make
    /// a global's map mmapable).
    pub control: Array<MapData, Control>,
    pub policies: Array<MapData, PolicyEntry>,
    pub by_mac: MmapArray<MacBucket>,
    pub by_ip: MmapArray<IpBucket>,
    pub domains: MmapArray<DomainBucket>,
    pub rulesets: MmapArray<RuleSet>,
    /// The TLS port bitmap of both generations.
    pub tls_ports: MmapArray<u64>,
    /// The plain-HTTP port bitmap of both generations.
    pub http_ports: MmapArray<u64>,
    /// SafeSearch: covered names of both generations.
    pub safe_names: aya::maps::HashMap<
        MapData,
        gateway_common::safe_search::SafeKey,
        gateway_common::safe_search::SafeName,
    >,
    /// SafeSearch: the enforcement names and their addresses (shared with the resolver).
    pub safe_targets: super::safe_search::SafeTargets,
    pub by_cidr: LpmTrie<MapData, CidrData, DeviceRef>,
    pub stats: PerCpuArray<MapData, Counter>,
    pub device_traffic: PerCpuArray<MapData, DeviceTraffic>,
    pub decisions: PerCpuHashMap<MapData, DecisionKey, u64>,
    /// The decision counts of keys that own their slot (`DecisionSlot`); `stats::decision_counts`
    /// adds them to `decisions`.
    pub decision_cache: PerCpuArray<MapData, DecisionSlot>,
    pub global: PerCpuArray<MapData, u64>,
    pub device_names: Array<MapData, DeviceName>,
    pub ifaces: Array<MapData, IfaceInfo>,
    /// Decision events from the kernel.
    /// (`None` once taken by `take_events`, for a reader of its own.)
    pub events: Option<RingBuf<MapData>>,
    /// `[generation * MAX_RESOLVERS + i]`: the addresses of the policies' `dns_resolvers`.
    pub resolvers: Array<MapData, [u8; 16]>,
    /// `block_port_key` -> 1.
    pub block_ports: aya::maps::HashMap<MapData, u32, u8>,
    /// TLS flows with a ClientHello in progress, or blocked.
    pub flows:
        aya::maps::HashMap<MapData, gateway_common::maps::FlowKey, gateway_common::maps::FlowState>,
    /// The uninspected passes (packets, bytes) last reported by `stats::reason_counters`, which
    /// derives them and never reports less.
    pub uninspected_floor: (AtomicU64, AtomicU64),
}

impl Maps {
    /// Opens the maps pinned in `dir`.
    pub fn from_pins(dir: &Path) -> anyhow::Result<Self> {
        Self::from_source(|name| {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        })
    }

    pub(super) fn from_source(
        mut take: impl FnMut(&str) -> anyhow::Result<Map>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            meta: Array::try_from(take(names::META)?)?,
            control: Array::try_from(take(names::CONTROL)?)?,
            policies: Array::try_from(take(names::POLICIES)?)?,
            by_mac: mmap_array(take(names::DEVICE_BY_MAC)?)?,
            by_ip: mmap_array(take(names::DEVICE_BY_IP)?)?,
            domains: mmap_array(take(names::DOMAINS)?)?,
            rulesets: mmap_array(take(names::RULESETS)?)?,
            tls_ports: mmap_array(take(names::TLS_PORTS)?)?,
            http_ports: mmap_array(take(names::HTTP_PORTS)?)?,
            safe_names: aya::maps::HashMap::try_from(take(names::SAFE_NAMES)?)?,
            safe_targets: match take(names::SAFE_TARGETS)? {
                Map::Array(data) => super::safe_search::SafeTargets::new(data)?,
                other => {
                    return Err(anyhow!(
                        "SAFE_TARGETS: expected an array map, found {other:?}"
                    ));
                }
            },
            by_cidr: LpmTrie::try_from(take(names::DEVICE_BY_CIDR)?)?,
            stats: PerCpuArray::try_from(take(names::STATS)?)?,
            device_traffic: PerCpuArray::try_from(take(names::DEVICE_TRAFFIC)?)?,
            decisions: PerCpuHashMap::try_from(take(names::DECISIONS)?)?,
            decision_cache: PerCpuArray::try_from(take(names::DECISION_CACHE)?)?,
            global: PerCpuArray::try_from(take(names::GLOBAL_COUNTERS)?)?,
            device_names: Array::try_from(take(names::DEVICE_NAMES)?)?,
            ifaces: Array::try_from(take(names::IFACES)?)?,
            events: Some(RingBuf::try_from(take(names::EVENTS)?)?),
            block_ports: aya::maps::HashMap::try_from(take(names::BLOCK_PORTS)?)?,
            resolvers: Array::try_from(take(names::RESOLVERS)?)?,
            flows: aya::maps::HashMap::try_from(take(names::FLOWS)?)?,
            uninspected_floor: (AtomicU64::new(0), AtomicU64::new(0)),
        })
    }

    /// The event ring, for a consumer of its own (the history recorder); `drain_events` then
    /// finds nothing.
    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        self.events
            .take()
            .context("the event ring was taken already")
    }

    /// Takes every decision event waiting in the ring.
    pub fn drain_events(&mut self) -> Vec<gateway_common::maps::DecisionEvent> {
        let mut out = Vec::new();
        let Some(events) = self.events.as_mut() else {
            return out;
        };
        while let Some(item) = events.next() {
            if item.len() >= size_of::<gateway_common::maps::DecisionEvent>() {
                // SAFETY: the kernel wrote a DecisionEvent (a Pod) at the start of the item.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
            }
        }
        out
    }

    /// The generation packets are judged with now.
    pub fn active_generation(&self) -> anyhow::Result<u32> {
        Ok(self.control()?.active & 1)
    }

    /// The control record.
    pub fn control(&self) -> anyhow::Result<Control> {
        self.control.get(&0, 0).context("reading CONTROL")
    }

    /// The settings of `generation`.
    pub fn settings(&self, generation: u32) -> anyhow::Result<GenSettings> {
        Ok(self.control()?.generations[(generation & 1) as usize])
    }

    /// Writes the settings of `generation` (which must not be the active one).
    pub fn set_settings(&mut self, generation: u32, settings: GenSettings) -> anyhow::Result<()> {
        let mut c = self.control()?;
        anyhow::ensure!(
            c.active & 1 != generation & 1,
            "refusing to rewrite the active generation's settings"
        );
        c.generations[(generation & 1) as usize] = settings;
        self.control.set(0, c, 0).context("writing CONTROL")?;
        Ok(())
    }

    /// Makes `generation` the one packets are judged with. The syscall copies the whole
    /// record; a packet reading `active` meanwhile sees the old or the new value (only its
    /// lowest byte changes), and every other byte is rewritten with its value.
    pub fn activate(&mut self, generation: u32) -> anyhow::Result<()> {
        let mut c = self.control()?;
        c.active = generation & 1;
        self.control.set(0, c, 0).context("writing CONTROL")?;
        Ok(())
    }
}

fn mmap_array<T: aya::Pod>(map: Map) -> anyhow::Result<MmapArray<T>> {
    match map {
        Map::Array(data) => MmapArray::new(data),
        other => Err(anyhow!("expected an array map, found {other:?}")),
    }
}

/// Number of possible CPUs: the length of every per-CPU value.
pub fn cpu_count() -> anyhow::Result<usize> {
    aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))
}

/// A per-CPU value that is zero on every CPU.
pub fn zeroed_per_cpu<T: aya::Pod + Default>() -> anyhow::Result<PerCpuValues<T>> {
    Ok(PerCpuValues::try_from(vec![T::default(); cpu_count()?])?)
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
