//! Every map of the filter. Layouts live in `gateway_common::maps`; the daemon pins all of them
//! but `TRACE` under its bpffs directory, so they outlive it.

use aya_ebpf::{
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf,
    },
};
use gateway_common::{
    domain::RuleSet,
    enums::{GLOBAL_SLOTS, Global, REASON_SLOTS, VERDICT_SLOTS},
    maps::HTTP_PORT_WORDS,
    maps::{
        BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, CidrData, Control, Counter, DEVICE_SLOTS, DecisionKey,
        DeviceName, DeviceRef, DeviceTraffic, GENERATIONS, GenSettings, IP_BUCKETS, IfaceInfo,
        MAC_BUCKETS, MAX_CIDR_IDS, MAX_DECISION_KEYS, MAX_IFACES, MAX_POLICIES, Meta, PolicyEntry,
        Trace,
    },
    maps::{DECISION_CACHE_SLOTS, DecisionSlot},
    maps::{DEFAULT_DOMAIN_BUCKETS, MAX_RULESETS, policy_index, ruleset_index},
    maps::{
        DEFAULT_TLS_FLOWS, DNS_STREAM_FLOWS, DnsStream, FLOW_MARK_SLOTS, FLOW_NAME_SLOTS, FlowKey,
        FlowName, FlowState, MAX_BLOCK_PORTS, MAX_RESOLVERS, TLS_PORT_WORDS,
    },
    packet::Addr,
    safe_search::{MAX_SAFE_TARGETS, SAFE_NAME_SLOTS, SafeKey, SafeName, SafeTarget, target_index},
    table::{self, DomainBucket, IpBucket, MacBucket},
};

use crate::dns::Scratch;

/// `[0]`: ABI version and creation time of the pinned set. Written by the daemon.
#[map]
static META: Array<Meta> = Array::with_max_entries(1, 0);

/// The active generation and both generations' settings. The daemon writes a generation's
/// settings while it is standby and then flips `active`; the kernel reads the record once per
/// packet.
///
/// A global in a data section of its own, not an array map: the loader makes the section a
/// one-entry array map (named after the section) and every reference an address in its value,
/// which the verifier knows is valid. Reading it costs one instruction where a map lookup costs
/// a dozen (key on the stack, bounds check, scaling, null check) — on every frame. The daemon
/// pins that map like the others and, when it loads the filter again, gives the loader the
/// pinned record's contents as the section's, so loading writes back what is there.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.control")]
static CONTROL: Shared<Control> = Shared::zeroed();

/// A value the daemon writes and the kernel only reads. Interior mutability keeps the compiler
/// from assuming the initial value (all zero) is the value.
#[repr(transparent)]
struct Shared<T>(core::cell::UnsafeCell<T>);

// SAFETY: the kernel only reads it; the daemon's writes go through the map (see `CONTROL`).
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    const fn zeroed() -> Self {
        // SAFETY: only used with plain-data types, for which all zero bytes are a value.
        Self(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }))
    }

    #[inline(always)]
    fn get(&self) -> &T {
        // SAFETY: never written by this program. The daemon rewrites the record whole (the
        // map syscall), changing only what no packet in flight reads (the standby generation)
        // or `Control::active`, whose bytes but the lowest are zero either way; every other byte
        // is written with the value it had.
        unsafe { &*self.0.get() }
    }
}

/// `[generation * MAX_POLICIES + policy]`: the policies of each generation. Written by the daemon.
#[map]
static POLICIES: Array<PolicyEntry> = Array::with_max_entries(GENERATIONS * MAX_POLICIES, 0);

/// Source MAC -> device: a cuckoo table (`gateway_common::table`), bucket
/// `generation * MAC_BUCKETS + i`. Consulted first on Ethernet links. The daemon writes the
/// standby generation's image through mmap; the kernel only reads.
#[map]
static DEVICE_BY_MAC: Array<MacBucket> =
    Array::with_max_entries(GENERATIONS * MAC_BUCKETS, BPF_F_MMAPABLE);

/// Exact source address (IPv4-mapped or IPv6) -> device, laid out like `DEVICE_BY_MAC`.
/// Consulted second.
#[map]
static DEVICE_BY_IP: Array<IpBucket> =
    Array::with_max_entries(GENERATIONS * IP_BUCKETS, BPF_F_MMAPABLE);

/// Domain fingerprint -> rule set id: a cuckoo table (`gateway_common::table`), bucket
/// `generation * buckets + i`, where `buckets` is `GenSettings::domain_buckets` (the daemon sets
/// the map's size at load from `max_domains`). Written by the daemon through mmap.
#[map]
static DOMAINS: Array<DomainBucket> =
    Array::with_max_entries(GENERATIONS * DEFAULT_DOMAIN_BUCKETS, BPF_F_MMAPABLE);

/// `[generation * MAX_RULESETS + id]`: what the domain table's entries mean (categories listing
/// the domain, policies allowing or blocking it). Written by the daemon through mmap.
#[map]
static RULESETS: Array<RuleSet> =
    Array::with_max_entries(GENERATIONS * MAX_RULESETS, BPF_F_MMAPABLE);

/// Per CPU: working memory of the DNS path (question name, text, fingerprints, checksum copy).
/// Not pinned; nothing survives a frame.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Decision events for the daemon (history, logs). Reserved and submitted per decision on a
/// name; when it is full the event is dropped and `GLOBAL_COUNTERS[RingLost]` counts it: the data
/// path never waits for the daemon.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(gateway_common::maps::EVENT_RING_BYTES, 0);

/// `bpf_ringbuf_submit` flags and `bpf_ringbuf_query` selector (uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Emits a decision event (or counts it lost).
#[inline(always)]
pub fn emit(fill: impl FnOnce(&mut gateway_common::maps::DecisionEvent)) {
    match EVENTS.reserve::<gateway_common::maps::DecisionEvent>(0) {
        Some(mut entry) => {
            // SAFETY: the reservation is sizeof(DecisionEvent) bytes, exclusively ours.
            let ev = unsafe { &mut *entry.as_mut_ptr() };
            fill(ev);
            // No wakeup per event (an irq_work and a scheduler wakeup each: microseconds under
            // load); the daemon drains on a timer, and is woken only when the ring is half full.
            let avail = EVENTS.query(BPF_RB_AVAIL_DATA);
            let flags = if avail > u64::from(gateway_common::maps::EVENT_RING_BYTES / 2) {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(flags);
        }
        None => count_global(Global::RingLost),
    }
}

/// Programs the filter tail-calls: `[PROG_DNS]` the DNS program, `[PROG_TLS]` the TLS
/// program, `[PROG_DNS_TCP]` and `[PROG_DNS_MSG]` the DNS-over-TCP programs. Filled by the daemon for each
/// loaded instance and pinned beside its program (the kernel empties an array nothing in user
/// space refers to). A tail-called program is verified on its own.
#[map]
pub static PROGS: ProgramArray = ProgramArray::with_max_entries(5, 0);

/// Index of the DNS program in `PROGS`.
pub const PROG_DNS: u32 = 0;
/// Index of the TLS program in `PROGS`.
pub const PROG_TLS: u32 = 1;
/// Index of the DNS-over-TCP stream program in `PROGS`.
pub const PROG_DNS_TCP: u32 = 2;
/// Index of the DNS-over-TCP message program in `PROGS` (the two tail-call each other, a
/// message at a time).
pub const PROG_DNS_MSG: u32 = 3;
/// Index of the plain-HTTP program in `PROGS` (it tail-calls itself for the next request of a
/// segment).
pub const PROG_HTTP: u32 = 4;

/// TCP flow to port 53 -> where its DNS stream is (`DnsStream`). LRU: the oldest flows make room.
#[map]
pub static DNS_STREAMS: LruHashMap<FlowKey, DnsStream> =
    LruHashMap::with_max_entries(DNS_STREAM_FLOWS, 0);

/// `[generation * MAX_RESOLVERS + i]`: the addresses policies' `dns_resolvers` name (bit `i` of
/// `PolicyEntry::resolvers`). Written by the daemon (standby generation only).
#[map]
static RESOLVERS: Array<Addr> = Array::with_max_entries(GENERATIONS * MAX_RESOLVERS, 0);

/// Whether `dst` is one of the resolvers of `generation` whose bits `mask` has.
#[inline(always)]
pub fn resolver_listed(generation: u32, mask: u32, dst: &Addr) -> bool {
    let base = (generation & 1) * MAX_RESOLVERS;
    let mut i = 0;
    while i < MAX_RESOLVERS {
        if (mask >> i) & 1 != 0
            && RESOLVERS
                .get(base + i)
                .is_some_and(|a| a.0[0] == dst.0[0] && a.0[1] == dst.0[1])
        {
            return true;
        }
        i += 1;
    }
    false
}

/// TCP flow -> where its ClientHello walk stopped, or that it is blocked. LRU: the oldest flows
/// make room (the daemon derives evictions from the created/removed counters). Sized by the
/// daemon at load (`[gateway] max_tls_flows`).
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(DEFAULT_TLS_FLOWS, 0);

/// TCP flow -> the part of its host name read so far, when the name continues in the next
/// segment.
#[map]
pub static FLOW_NAMES: LruHashMap<FlowKey, FlowName> =
    LruHashMap::with_max_entries(FLOW_NAME_SLOTS, 0);

/// `[FlowKey::mark_slot]`: how many flows of the slot have state in `FLOWS` (see
/// `gateway_common::maps::FLOW_MARK_SLOTS`).
#[map]
pub static FLOW_MARKS: Array<u64> = Array::with_max_entries(FLOW_MARK_SLOTS, 0);

/// `block_port_key(generation, policy, proto, port)` -> 1: the ports policies block. Written by
/// the daemon (standby generation only).
#[map]
pub static BLOCK_PORTS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_BLOCK_PORTS, 0);

/// `[generation * TLS_PORT_WORDS + port / 64]`, bit `port % 64`: the TCP ports whose
/// ClientHellos are inspected, when the generation has `SETTINGS_TLS_PORTS`. Written by the
/// daemon through mmap (standby generation only).
#[map]
static TLS_PORTS: Array<u64> =
    Array::with_max_entries(GENERATIONS * TLS_PORT_WORDS, BPF_F_MMAPABLE);

/// Whether `port` is a TLS port of `generation`'s bitmap.
#[inline(always)]
pub fn tls_port(generation: u32, port: u16) -> bool {
    let word = (generation & 1) * TLS_PORT_WORDS + u32::from(port >> 6);
    TLS_PORTS
        .get(word)
        .is_some_and(|w| (*w >> (port & 63)) & 1 != 0)
}

/// `[generation * HTTP_PORT_WORDS + port / 64]`, bit `port % 64`: the TCP ports whose requests
/// are read as plain HTTP, when the generation has `SETTINGS_HTTP_PORTS`. Written by the daemon
/// through mmap (standby generation only).
#[map]
static HTTP_PORTS: Array<u64> =
    Array::with_max_entries(GENERATIONS * HTTP_PORT_WORDS, BPF_F_MMAPABLE);

/// Whether `port` is a plain-HTTP port of `generation`'s bitmap.
#[inline(always)]
pub fn http_port(generation: u32, port: u16) -> bool {
    let word = (generation & 1) * HTTP_PORT_WORDS + u32::from(port >> 6);
    HTTP_PORTS
        .get(word)
        .is_some_and(|w| (*w >> (port & 63)) & 1 != 0)
}

/// Covered name (`SafeKey`: whole-name fingerprint, generation) -> per policy, the SafeSearch
/// target answering it (`SafeName`). Written by the daemon (standby generation only).
#[map]
static SAFE_NAMES: HashMap<SafeKey, SafeName> = HashMap::with_max_entries(SAFE_NAME_SLOTS, 0);

/// `[target_index(generation, t)]`: the SafeSearch enforcement names and their addresses
/// (`SafeTarget`). Names are written with their generation; addresses by the daemon's
/// resolver in both generations at any time, a whole set at a time (see `SafeTarget`).
#[map]
static SAFE_TARGETS: Array<SafeTarget> =
    Array::with_max_entries(GENERATIONS * MAX_SAFE_TARGETS, BPF_F_MMAPABLE);

/// The SafeSearch target (index + 1) covering the name with whole-name fingerprint `fp` for
/// `policy`, or 0.
#[inline(always)]
pub fn safe_target_of(generation: u32, fp: u64, policy: u32) -> u32 {
    let key = SafeKey {
        fp,
        generation: generation & 1,
        _pad: 0,
    };
    // SAFETY: the value is only read.
    match unsafe { SAFE_NAMES.get(key) } {
        Some(v) => u32::from(v.targets[(policy & 63) as usize]),
        None => 0,
    }
}

/// A SafeSearch target's record.
#[inline(always)]
pub fn safe_target(generation: u32, target: u32) -> Option<&'static SafeTarget> {
    SAFE_TARGETS.get(target_index(generation, target))
}

/// Whether `BLOCK_PORTS` has this key.
#[inline(always)]
pub fn port_blocked(key: u32) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { BLOCK_PORTS.get(key) }.is_some()
}

/// Whether the slot of a flow is marked.
#[inline(always)]
pub fn flow_marked(slot: u32) -> bool {
    FLOW_MARKS.get(slot).is_some_and(|n| *n != 0)
}

/// Adds 1 to (or takes 1 from) the mark of a flow's slot.
#[inline(always)]
pub fn mark_flow(slot: u32, add: bool) {
    let Some(p) = FLOW_MARKS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: `p` points at a u64 in map memory.
    let now = unsafe { core::ptr::read_volatile(p) };
    let delta: u64 = if add {
        1
    } else if now > 0 {
        u64::MAX
    } else {
        return;
    };
    atomic_add(p, delta);
}

/// `*p += delta` as one atomic instruction (the value is shared between CPUs).
#[inline(always)]
fn atomic_add(p: *mut u64, delta: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: `p` is a valid, aligned u64 of map memory; BPF_ATOMIC | BPF_ADD on it.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {d}",
            p = in(reg) p,
            d = in(reg) delta,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as above (host builds of this crate only type-check it).
    unsafe {
        *p = (*p).wrapping_add(delta);
    }
}

/// Longest prefix of (generation, source address) -> device. Consulted last, and only when the
/// generation has CIDR devices. Written by the daemon.
#[map]
static DEVICE_BY_CIDR: LpmTrie<CidrData, DeviceRef> =
    LpmTrie::with_max_entries(GENERATIONS * MAX_CIDR_IDS, BPF_F_NO_PREALLOC);

/// Per CPU, `[reason * VERDICT_SLOTS + verdict]`: frames and bytes by why and what. Every frame
/// but an uninspected pass is counted here exactly once. Summed by the daemon; never reset.
/// `[stats_index(Uninspected, Pass)]` is the daemon's: the traffic of device slots it zeroed
/// for reuse (`stats::retire_slot`), so that the uninspected passes it derives — every frame
/// of `DEVICE_TRAFFIC` and of retired slots, less the other reasons' — never go back.
#[map]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_SLOTS * VERDICT_SLOTS, 0);

/// Per CPU, `[slot]`: what each device sent and how much of it was dropped. Slot 0 is devices in
/// no inventory. Every frame is counted here exactly once. The daemon zeroes a slot before
/// giving it to another device, and adds what the slot had counted to `STATS` (see there).
#[map]
static DEVICE_TRAFFIC: PerCpuArray<DeviceTraffic> = PerCpuArray::with_max_entries(DEVICE_SLOTS, 0);

/// Per CPU, (slot, protocol, action, reason, category) -> decisions. Inserted by the kernel on
/// first use; a full map loses the count (`GLOBAL_COUNTERS[DecisionMapFull]` says so).
#[map]
static DECISIONS: PerCpuHashMap<DecisionKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_DECISION_KEYS, 0);

/// Per CPU, `[DecisionKey::cache_slot]`: the decision counts of the keys that own their slot
/// (`DecisionSlot`); the others are counted in `DECISIONS`.
#[map]
static DECISION_CACHE: PerCpuArray<DecisionSlot> =
    PerCpuArray::with_max_entries(DECISION_CACHE_SLOTS, 0);

/// Per CPU, `[Global]`: gateway-wide conditions that are not frames.
#[map]
static GLOBAL_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GLOBAL_SLOTS, 0);

/// `[slot]`: the device a slot belongs to. Written by the daemon; the kernel never reads it.
#[map]
static DEVICE_NAMES: Array<DeviceName> = Array::with_max_entries(DEVICE_SLOTS, 0);

/// Interfaces the daemon attached to, with link type and attach mode. Daemon-only.
#[map]
static IFACES: Array<IfaceInfo> = Array::with_max_entries(MAX_IFACES, 0);

/// `[0]`: the outcome of the last frame, written only when `TRACE_FLAGS` has `TRACE_MAP` (replay, fixtures).
#[map]
static TRACE: Array<Trace> = Array::with_max_entries(1, 0);

/// The settings of `generation` (as the main program saw it active).
#[inline(always)]
pub fn settings_of(generation: u32) -> &'static GenSettings {
    &CONTROL.get().generations[(generation & 1) as usize]
}

/// The generation the packet is judged with, and its settings (read in place: the fields are
/// loaded where they are used instead of being copied and spilled up front).
#[inline(always)]
pub fn active() -> (u32, &'static GenSettings) {
    let c = CONTROL.get();
    // Read once: the daemon may flip it while the packet is judged. `& 1` proves the
    // generation < GENERATIONS for every index derived from it.
    // SAFETY: a valid, aligned u32 of the record.
    let generation = unsafe { core::ptr::read_volatile(&c.active) } & 1;
    (generation, &c.generations[generation as usize])
}

/// The `resolvers` of policy `id` of `generation` (0: any resolver).
#[inline(always)]
pub fn policy_resolvers(generation: u32, id: u32) -> u32 {
    POLICIES
        .get(policy_index(generation, id & 63))
        .map_or(0, |p| p.resolvers)
}

/// The policy `id` of `generation` (all zero, an allow-all policy, if absent).
#[inline(always)]
pub fn policy(generation: u32, id: u32) -> PolicyEntry {
    POLICIES
        .get(policy_index(generation, id & 63))
        .copied()
        .unwrap_or_default()
}

/// `*to = *from` between values of different maps, as a `memcpy` the BPF backend expands
/// inline. A plain assignment may become `memmove` (LLVM cannot tell the two maps apart),
/// which the backend leaves to a byte-at-a-time subprogram.
#[inline(always)]
pub fn copy<T: Copy>(to: &mut T, from: &T) {
    // SAFETY: two valid, distinct, aligned values of T (a `&mut` and a `&` cannot overlap).
    unsafe { core::ptr::copy_nonoverlapping(from, to, 1) };
}

/// The per-CPU scratch memory.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU map value; XDP runs with preemption disabled, so only this frame uses it.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// The rule set id of domain fingerprint `fp` in `generation`.
#[inline(always)]
pub fn domain(generation: u32, buckets: u32, seed: u64, fp: u64) -> Option<u32> {
    if buckets == 0 {
        return None;
    }
    let base = generation * buckets;
    table::lookup(|i| DOMAINS.get(base + i), buckets, seed, &fp)
}

/// Rule set `id` of `generation`.
#[inline(always)]
pub fn ruleset(generation: u32, id: u32) -> Option<RuleSet> {
    RULESETS.get(ruleset_index(generation, id)).copied()
}

/// The device with source MAC `key` (`table::mac_key`) in `generation`. The daemon never writes the active
/// generation, so the buckets read here are stable.
#[inline(always)]
pub fn device_by_mac(generation: u32, seed: u64, key: u64) -> Option<DeviceRef> {
    let base = generation * MAC_BUCKETS;
    table::lookup_home(|i| DEVICE_BY_MAC.get(base + i), MAC_BUCKETS, seed, &key)
        .or_else(|| unpack(mac_alternate(base, seed, key)))
}

/// A `DeviceRef` in a register (`NOT_FOUND` for none): out-of-line functions return this rather
/// than an `Option` through the stack, which misaligned-access codegen could store misaligned.
const NOT_FOUND: u64 = u64::MAX;

#[inline(always)]
fn pack(d: Option<DeviceRef>) -> u64 {
    match d {
        Some(d) => u64::from(d.slot) | u64::from(d.policy) << 32 | u64::from(d.flags) << 48,
        None => NOT_FOUND,
    }
}

#[inline(always)]
fn unpack(v: u64) -> Option<DeviceRef> {
    (v != NOT_FOUND).then_some(DeviceRef {
        slot: v as u32,
        policy: (v >> 32) as u16,
        flags: (v >> 48) as u16,
    })
}

/// The alternate-bucket probe, out of line: it runs only when the home bucket misses.
#[inline(never)]
fn mac_alternate(base: u32, seed: u64, key: u64) -> u64 {
    pack(table::lookup_alternate(
        |i| DEVICE_BY_MAC.get(base + i),
        MAC_BUCKETS,
        seed,
        &key,
    ))
}

/// The device with source address `addr` (IPv4-mapped or IPv6) in `generation`.
#[inline(always)]
pub fn device_by_ip(generation: u32, seed: u64, addr: &Addr) -> Option<DeviceRef> {
    let base = generation * IP_BUCKETS;
    table::lookup(|i| DEVICE_BY_IP.get(base + i), IP_BUCKETS, seed, &addr.0)
}

/// The device whose CIDR holds `addr` (IPv4-mapped or IPv6) in `generation`.
#[inline(always)]
pub fn device_by_cidr(generation: u32, addr: &Addr) -> Option<DeviceRef> {
    let bytes = addr.to_bytes();
    let mut key = aya_ebpf::maps::lpm_trie::Key::new(
        (core::mem::size_of::<CidrData>() * 8) as u32,
        [0u8; 20],
    );
    // Byte stores on purpose: the key is a packed struct at an arbitrary stack offset, and with
    // misaligned loads enabled LLVM would otherwise merge these into 8-byte stores the verifier
    // rejects ("misaligned stack access"). Volatile stores are never merged.
    let data = core::ptr::addr_of_mut!(key).cast::<u8>();
    // The padding after the address is written too: then no byte is left to the zeroing
    // above, which LLVM would otherwise do with a call to `memset` (a byte loop).
    // SAFETY: offsets 4..24 lie within the 24-byte key (prefix length, then 20 data bytes).
    unsafe {
        data.add(4).write_volatile(generation as u8);
        let mut i = 0;
        while i < 16 {
            data.add(5 + i).write_volatile(bytes[i]);
            i += 1;
        }
        while i < 19 {
            data.add(5 + i).write_volatile(0);
            i += 1;
        }
    }
    DEVICE_BY_CIDR.get(&key).copied()
}

#[inline(always)]
pub fn count_stats(index: u32, bytes: u64) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU value; XDP runs with preemption disabled, so nothing else writes it.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count_device(slot: u32, bytes: u64, dropped: bool) {
    if let Some(t) = DEVICE_TRAFFIC.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, as in `count_stats`.
        unsafe {
            (*t).packets += 1;
            (*t).bytes += bytes;
            if dropped {
                (*t).dropped_packets += 1;
                (*t).dropped_bytes += bytes;
            }
        }
    }
}

/// Counts one decision on a device; returns false if the counter map is full.
#[inline(always)]
pub fn count_decision(key: &DecisionKey) -> bool {
    if let Some(slot) = DECISION_CACHE.get_ptr_mut(key.cache_slot()) {
        // SAFETY: per-CPU value, as in `count_stats`.
        let slot = unsafe { &mut *slot };
        let word = key.to_word();
        if slot.count != 0 && slot.key == word {
            slot.count += 1;
            return true;
        }
        if slot.count == 0 {
            slot.key = word;
            slot.count = 1;
            return true;
        }
    }
    if let Some(c) = DECISIONS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, as in `count_stats`.
        unsafe { *c += 1 };
        return true;
    }
    // BPF_NOEXIST: another CPU may have created it meanwhile; then its slot for this CPU is 0
    // and the next decision is counted there. One lost count in that race is accepted.
    DECISIONS.insert(key, 1u64, 1).is_ok()
}

#[inline(always)]
pub fn count_global(what: Global) {
    if let Some(c) = GLOBAL_COUNTERS.get_ptr_mut(what as u32) {
        // SAFETY: per-CPU value, as in `count_stats`.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn trace(t: &Trace) {
    if let Some(p) = TRACE.get_ptr_mut(0) {
        // SAFETY: only replay runs a traced program, one frame at a time.
        unsafe {
            let seq = (*p).seq.wrapping_add(1);
            *p = *t;
            (*p).seq = seq;
        }
    }
}
