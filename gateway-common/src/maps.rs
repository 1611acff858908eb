//! Names, capacities and key/value layouts of the kernel maps.
//!
//! Every type is `#[repr(C)]` with explicit padding and a size assertion, because the kernel and
//! the daemon (and pinned maps that outlive either) must agree on it byte for byte. Fields in
//! network byte order end in `_be`; everything else is host order.
//!
//! Policy state is double-buffered by generation: identity and policy entries carry the
//! generation they belong to (in the key, or as an index offset), and the kernel reads the active
//! generation once per packet from `CONTROL`. The daemon writes a complete new generation and
//! then flips `CONTROL.active`, so no packet sees a mix of two configurations.

use core::mem::size_of;

/// Bumped whenever a layout below changes; stored in `META` so a daemon never adopts pinned
/// maps of another layout.
pub const ABI_VERSION: u32 = 12;

/// Policy generations kept side by side (the active one and the one being written).
pub const GENERATIONS: u32 = 2;
/// Device slots: slot 0 counts devices that are in no inventory; named devices use 1..=MAX_DEVICES.
pub const MAX_DEVICES: u32 = 16_384;
/// Size of the per-slot maps.
pub const DEVICE_SLOTS: u32 = MAX_DEVICES + 1;
/// The slot that counts traffic of devices that are in no inventory.
pub const UNKNOWN_SLOT: u32 = 0;
/// The name `gateway stats`, `/metrics` and the history show for `UNKNOWN_SLOT`.
pub const UNKNOWN_DEVICE: &str = "(unknown)";
/// Policies per generation.
pub const MAX_POLICIES: u32 = 64;
/// Buckets of the MAC table per generation (4 slots each; kept at most half full).
pub const MAC_BUCKETS: u32 = 8_192;
/// Buckets of the address table per generation (2 slots each; kept at most half full).
pub const IP_BUCKETS: u32 = 16_384;
/// MAC identities per generation.
pub const MAX_MAC_IDS: u32 = MAC_BUCKETS * crate::table::MAC_WAYS as u32 / 2;
/// Exact IPv4/IPv6 identities per generation.
pub const MAX_IP_IDS: u32 = IP_BUCKETS * crate::table::IP_WAYS as u32 / 2;
/// `BPF_F_MMAPABLE`: the daemon writes table images through mmap.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// `BPF_F_NO_PREALLOC`: required by LPM tries.
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// CIDR identities per generation.
pub const MAX_CIDR_IDS: u32 = 8_192;
/// Distinct rule sets (combinations of categories and explicit entries) per generation.
pub const MAX_RULESETS: u32 = 16_384;
const _: () = assert!(
    MAX_RULESETS <= 1 << 16,
    "two rule set ids share a domain's value"
);

/// A domain-table value: the rule set for the name itself (`|d^`, and every rule for `d` and
/// its subdomains) in the low 16 bits, the one for names below it (`*.d`, and those same
/// subtree rules) in the high 16. Id 0 is the empty rule set.
#[inline(always)]
pub const fn domain_value(here: u32, below: u32) -> u32 {
    (here & 0xffff) | (below << 16)
}

/// The rule set id of a domain-table value for the name itself.
#[inline(always)]
pub const fn here_id(value: u32) -> u32 {
    value & 0xffff
}

/// The rule set id of a domain-table value for the names below it.
#[inline(always)]
pub const fn below_id(value: u32) -> u32 {
    value >> 16
}
/// Domain-table buckets per generation unless the configuration asks for more
/// (`[gateway] max_domains`): 65,536 buckets of 5 slots, 4 MiB, for up to 262,144 domains.
pub const DEFAULT_DOMAIN_BUCKETS: u32 = 65_536;
/// Share of the domain table's slots that may be used (probing stays short below it).
pub const DOMAIN_LOAD_PERCENT: u32 = 80;

/// Distinct (device, protocol, action, reason, category) decision counters.
pub const MAX_DECISION_KEYS: u32 = 65_536;
/// Slots of `DECISION_CACHE` (a power of two).
pub const DECISION_CACHE_SLOTS: u32 = 1024;
/// Interfaces the daemon records attach information for.
pub const MAX_IFACES: u32 = 64;

/// Map names: the kernel's map symbols and the file names of their pins.
pub mod names {
    pub const META: &str = "META";
    pub const CONTROL: &str = "CONTROL";
    pub const DOMAINS: &str = "DOMAINS";
    pub const RULESETS: &str = "RULESETS";
    pub const SCRATCH: &str = "SCRATCH";
    pub const EVENTS: &str = "EVENTS";
    pub const POLICIES: &str = "POLICIES";
    pub const DEVICE_BY_MAC: &str = "DEVICE_BY_MAC";
    pub const DEVICE_BY_IP: &str = "DEVICE_BY_IP";
    pub const DEVICE_BY_CIDR: &str = "DEVICE_BY_CIDR";
    pub const STATS: &str = "STATS";
    pub const DEVICE_TRAFFIC: &str = "DEVICE_TRAFFIC";
    pub const DECISIONS: &str = "DECISIONS";
    pub const DECISION_CACHE: &str = "DECISION_CACHE";
    pub const GLOBAL_COUNTERS: &str = "GLOBAL_COUNTERS";
    pub const DEVICE_NAMES: &str = "DEVICE_NAMES";
    pub const IFACES: &str = "IFACES";
    pub const TRACE: &str = "TRACE";
    pub const FLOWS: &str = "FLOWS";
    pub const FLOW_NAMES: &str = "FLOW_NAMES";
    pub const FLOW_MARKS: &str = "FLOW_MARKS";
    pub const BLOCK_PORTS: &str = "BLOCK_PORTS";
    pub const TLS_PORTS: &str = "TLS_PORTS";
    pub const DNS_STREAMS: &str = "DNS_STREAMS";
    pub const RESOLVERS: &str = "RESOLVERS";
    pub const HTTP_PORTS: &str = "HTTP_PORTS";
    pub const SAFE_NAMES: &str = "SAFE_NAMES";
    pub const SAFE_TARGETS: &str = "SAFE_TARGETS";

    /// The data section of the kernel's `CONTROL` global, which the loader makes a map of that
    /// name (pinned as `CONTROL`).
    pub const CONTROL_SECTION: &str = ".data.control";

    /// The loader's name for the map pinned as `pin`.
    pub fn in_object(pin: &str) -> &str {
        if pin == CONTROL { CONTROL_SECTION } else { pin }
    }

    /// Maps that are pinned and shared by every attachment and by successive daemons.
    /// (`TRACE` is per loaded object: only `replay` uses it.)
    pub const PINNED: &[&str] = &[
        META,
        CONTROL,
        DOMAINS,
        RULESETS,
        POLICIES,
        DEVICE_BY_MAC,
        DEVICE_BY_IP,
        DEVICE_BY_CIDR,
        STATS,
        DEVICE_TRAFFIC,
        DECISIONS,
        DECISION_CACHE,
        GLOBAL_COUNTERS,
        DEVICE_NAMES,
        IFACES,
        EVENTS,
        FLOWS,
        FLOW_NAMES,
        FLOW_MARKS,
        BLOCK_PORTS,
        TLS_PORTS,
        DNS_STREAMS,
        RESOLVERS,
        HTTP_PORTS,
        SAFE_NAMES,
        SAFE_TARGETS,
    ];
}

/// Load-time globals of the kernel program (set with `EbpfLoader::override_global`).
pub mod globals {
    /// `LinkType` of the attachment this instance serves.
    pub const LINK_TYPE: &str = "LINK_TYPE";
    /// What the filter records of each outcome besides its counters: `TRACE_MAP` (the last
    /// verdict in `TRACE`; replay and fixtures) and `TRACE_LOG` (a debug trace through aya-log;
    /// `gateway run --trace-kernel`). 0 in production, so the fast path pays one test.
    pub const TRACE_FLAGS: &str = "TRACE_FLAGS";
    /// The control record (`Control`), a global the daemon writes; loading sets it to the
    /// pinned record's contents, so a reload writes back what is there.
    pub const CONTROL: &str = "CONTROL";
    /// aya-log's level (`aya_log::Level` as a byte): 0 (the default the daemon loads with) turns
    /// the filter's debug traces off, and the verifier then prunes them.
    pub const KERNEL_LOG_LEVEL: &str = "AYA_LOG_LEVEL";
}

/// `META[0]`: what wrote the pinned maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub abi_version: u32,
    /// Unix seconds when these maps were created.
    pub created: u32,
}
const _: () = assert!(size_of::<Meta>() == 8);

/// Data part of a `DEVICE_BY_CIDR` LPM key: `[generation, addr_be[16], 0, 0, 0]`. The prefix
/// length counts the generation byte: `8 + 96 + len` for IPv4 (mapped), `8 + len` for IPv6.
pub type CidrData = [u8; 20];

/// Builds the LPM data for a generation and an IPv4-mapped/IPv6 address.
#[inline(always)]
pub const fn cidr_data(generation: u8, addr_be: &[u8; 16]) -> CidrData {
    let mut d = [0u8; 20];
    d[0] = generation;
    let mut i = 0;
    while i < 16 {
        d[i + 1] = addr_be[i];
        i += 1;
    }
    d
}

/// Value of the identity tables: which slot counts the device, which policy applies, and its
/// lifecycle flags.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeviceRef {
    pub slot: u32,
    pub policy: u16,
    pub flags: u16,
}
const _: () = assert!(size_of::<DeviceRef>() == 8);

/// `DeviceRef::flags`: all traffic but DHCP/DHCPv6/ARP/NDP is dropped.
pub const DEVICE_SUSPENDED: u16 = 1;

/// `CONTROL[0].generations[generation]`: what applies to the whole generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenSettings {
    /// Policy for devices that are in no inventory.
    pub unknown_policy: u32,
    /// `SETTINGS_*` bits.
    pub flags: u32,
    /// Hash seed of this generation's identity tables and domain fingerprints.
    pub table_seed: u64,
    /// Buckets of the domain table per generation (a power of two).
    pub domain_buckets: u32,
    pub _pad: u32,
    /// Makes the size a power of two: the kernel finds a generation's settings with a shift,
    /// not a multiplication, at the head of every packet's chain of dependent loads.
    pub _reserved: u64,
}
const _: () = assert!(size_of::<GenSettings>() == 32);

/// `CONTROL`: the active generation and the settings of both. One record, so a packet gets
/// both with one read. The daemon writes a generation's settings only while that generation is
/// standby, and `active` alone to switch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// The generation (0 or 1) every lookup of a packet uses.
    pub active: u32,
    pub _pad: u32,
    pub generations: [GenSettings; GENERATIONS as usize],
}
const _: () = assert!(size_of::<Control>() == 72);

/// `GenSettings::flags`: the MAC table has entries for this generation.
pub const SETTINGS_HAS_MAC: u32 = 1;
/// `GenSettings::flags`: the address table has entries for this generation.
pub const SETTINGS_HAS_IP: u32 = 1 << 1;
/// `GenSettings::flags`: `DEVICE_BY_CIDR` has entries for this generation.
pub const SETTINGS_HAS_CIDR: u32 = 1 << 2;
/// `GenSettings::flags`: some policy of this generation blocks ports (`BLOCK_PORTS`).
pub const SETTINGS_HAS_BLOCK_PORTS: u32 = 1 << 3;
/// `GenSettings::flags`: the TLS ports are those of `TLS_PORTS`, not 443 alone.
pub const SETTINGS_TLS_PORTS: u32 = 1 << 4;
/// `GenSettings::flags`: the plain-HTTP ports are those of `HTTP_PORTS`, not 80 alone.
pub const SETTINGS_HTTP_PORTS: u32 = 1 << 5;
/// `GenSettings::flags`: this generation has been completely written.
pub const SETTINGS_VALID: u32 = 1 << 31;

/// `POLICIES[generation * MAX_POLICIES + id]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEntry {
    /// `POLICY_*` bits.
    pub flags: u32,
    /// `DnsAnswer` for blocked names.
    pub dns_answer: u32,
    /// Categories the policy blocks (bit = category id).
    pub block_categories: u64,
    /// TTL of sinkhole answers, seconds.
    pub ttl: u32,
    /// Address of sinkhole A answers.
    pub sinkhole_v4_be: [u8; 4],
    /// Address of sinkhole AAAA answers.
    pub sinkhole_v6_be: [u8; 16],
    /// The resolvers plain DNS may go to (`dns_resolvers`): bit `i` is `RESOLVERS[generation *
    /// MAX_RESOLVERS + i]`; 0, any resolver.
    pub resolvers: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<PolicyEntry>() == 48);

/// Distinct addresses in all policies' `dns_resolvers` together (`PolicyEntry::resolvers`).
pub const MAX_RESOLVERS: u32 = 16;

/// `PolicyEntry::flags`: the entry is in use.
pub const POLICY_PRESENT: u32 = 1;
/// `PolicyEntry::flags`: decide and count, but pass (`mode = "monitor"`).
pub const POLICY_MONITOR: u32 = 1 << 1;
/// `PolicyEntry::flags`: names no rule matches are blocked (`default = "block"`).
pub const POLICY_DEFAULT_BLOCK: u32 = 1 << 2;
/// `PolicyEntry::flags`: HTTPS and SVCB queries are answered empty (`https_records = "empty"`).
pub const POLICY_HTTPS_EMPTY: u32 = 1 << 3;
/// `PolicyEntry::flags`: malformed DNS queries are blocked (`on_parse_error = "block"`).
pub const POLICY_PARSE_ERROR_BLOCK: u32 = 1 << 4;

/// `PolicyEntry::flags`: blocked ClientHellos are dropped, not reset (`tls_block_answer = "drop"`).
pub const POLICY_TLS_DROP: u32 = 1 << 5;
/// `PolicyEntry::flags`: ClientHellos without a readable server name are blocked
/// (`on_unparsed_tls = "block"`).
pub const POLICY_UNPARSED_TLS_BLOCK: u32 = 1 << 6;
/// `PolicyEntry::flags`: QUIC Initial packets are dropped (`quic = "block"`).
pub const POLICY_QUIC_BLOCK: u32 = 1 << 7;
/// `PolicyEntry::flags`: the policy has `block_ports` entries in `BLOCK_PORTS`.
pub const POLICY_BLOCK_PORTS: u32 = 1 << 8;
/// `PolicyEntry::flags`: decision events only for blocked (and monitored) names
/// (`log = "blocked"`).
pub const POLICY_LOG_BLOCKED: u32 = 1 << 9;
/// `PolicyEntry::flags`: no decision events at all (`log = "none"`); counters still count.
pub const POLICY_LOG_NONE: u32 = 1 << 10;

/// `PolicyEntry::flags`: the policy has `safe_search` engines (`SAFE_NAMES` says which names).
pub const POLICY_SAFE_SEARCH: u32 = 1 << 11;
/// `PolicyEntry::flags`: blocked plain-HTTP requests are dropped, not reset
/// (`http_block_answer = "drop"`).
pub const POLICY_HTTP_DROP: u32 = 1 << 12;
/// `PolicyEntry::flags`: plain-HTTP requests without a readable host are blocked
/// (`on_unparsed_http = "block"`).
pub const POLICY_UNPARSED_HTTP_BLOCK: u32 = 1 << 13;

/// Whether a decision with `action` under a policy with `flags` emits a decision event.
#[inline(always)]
pub const fn logs(flags: u32, action: crate::enums::Action) -> bool {
    if flags & POLICY_LOG_NONE != 0 {
        return false;
    }
    !(flags & POLICY_LOG_BLOCKED != 0 && matches!(action, crate::enums::Action::Allow))
}

/// Key of `BLOCK_PORTS`: generation, policy, transport (`IPPROTO_TCP`/`IPPROTO_UDP`), port.
#[inline(always)]
pub const fn block_port_key(generation: u32, policy: u32, proto: u8, port: u16) -> u32 {
    (generation & 1) << 31 | (policy & 0x7f) << 24 | (proto as u32) << 16 | port as u32
}

/// Key of `FLOWS` and `FLOW_NAMES`: a TCP flow from a device to a server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: crate::packet::Addr,
    pub dst: crate::packet::Addr,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
}
const _: () = assert!(size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The flow of a TCP segment from its parsed headers (`pkt` is the frame they were parsed
    /// from).
    #[inline(always)]
    pub fn of<B: crate::bytes::Bytes + ?Sized>(
        pkt: &B,
        l3: &crate::packet::L3,
        l4: &crate::packet::L4,
    ) -> Self {
        Self {
            src: l3.src,
            dst: l3.dst(pkt).unwrap_or_default(),
            sport: l4.src_port(),
            dport: l4.dst_port(),
            _pad: 0,
        }
    }

    /// Slot of the flow in `FLOW_MARKS`.
    #[inline(always)]
    pub const fn mark_slot(&self) -> u32 {
        flow_slot(&self.src, (self.sport as u32) << 16 | self.dport as u32)
    }
}

/// Slot in `FLOW_MARKS` of the flow from `src` with these `ports` (source in the high half, as
/// `L4::ports`). Of the address it takes the last 8 bytes (the whole of an IPv4-mapped one);
/// the destination is left out: one device's flows differ in their source port, and a
/// collision only costs a `FLOWS` lookup — while every data segment to a TLS port computes
/// this slot.
#[inline(always)]
pub const fn flow_slot(src: &crate::packet::Addr, ports: u32) -> u32 {
    let h = (src.0[1] ^ ports as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 48) as u32 & (FLOW_MARK_SLOTS - 1)
}

/// Default capacity of `FLOWS` (`[gateway] max_tls_flows`).
pub const DEFAULT_TLS_FLOWS: u32 = 65_536;
/// Capacity of `FLOW_NAMES`: host names split over segments are rare (a name is at most 253
/// bytes of a ~2,000-byte ClientHello), and an entry lives for one round trip.
pub const FLOW_NAME_SLOTS: u32 = 4096;
/// Words of one generation's port bitmap in `TLS_PORTS` (bit `port % 64` of word `port / 64`).
pub const TLS_PORT_WORDS: u32 = 1024;

/// Words of one generation's port bitmap in `HTTP_PORTS` (as `TLS_PORT_WORDS`).
pub const HTTP_PORT_WORDS: u32 = TLS_PORT_WORDS;

/// Capacity of `BLOCK_PORTS` (both generations).
pub const MAX_BLOCK_PORTS: u32 = 4096;

/// Slots of `FLOW_MARKS`: per slot, how many flows hashing there have state in `FLOWS`. A TCP
/// segment to a TLS port that does not start a record is looked up in `FLOWS` only if its slot
/// is marked, so data segments of decided flows cost an array read.
pub const FLOW_MARK_SLOTS: u32 = 1 << 16;

/// `FlowState::state`: the ClientHello continues in the next segment.
pub const FLOW_PENDING: u32 = 0;
/// `FlowState::state`: the flow was blocked; its later packets are dropped.
pub const FLOW_BLOCKED: u32 = 1;

/// Value of `FLOWS`: where a flow's ClientHello walk stopped, or that the flow is blocked.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    pub walk: crate::tls::HelloWalk,
    /// Sequence number of the segment that started the walk (a retransmission restarts it).
    pub first_seq: u32,
    /// Sequence number the next in-order segment carries.
    pub next_seq: u32,
    /// `FLOW_*`.
    pub state: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<FlowState>() == 64);

/// Value of `FLOW_NAMES`: a host name that continues in the next segment, as far as it was read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowName {
    pub text: [u8; 256],
    pub labels: [u64; crate::domain::MAX_LEVELS],
}

/// Capacity of `DNS_STREAMS`: DNS over TCP is the exception (truncated answers, zone
/// transfers, some stub resolvers), and a flow lives for a few queries.
pub const DNS_STREAM_FLOWS: u32 = 4096;
/// Bytes of a DNS-over-TCP message the stream keeps until its question is judged: the 2-byte
/// length, the header, the longest name and the question's type and class. What follows (EDNS
/// options, padding) is passed over by count.
pub const DNS_STREAM_PREFIX: u32 = 2 + 12 + 255 + 4;
/// `DnsStream::buf`: 2 bytes of padding (the name then starts on a word), a prefix, and room for
/// a copy of up to a prefix at any offset below one (the verifier's bound on the copy).
pub const DNS_STREAM_BUF: usize = (2 + 2 * DNS_STREAM_PREFIX as usize).next_multiple_of(8);

/// `DnsStream::state`: every message so far allowed.
pub const DNS_STREAM_OPEN: u32 = 0;
/// `DnsStream::state`: a message was blocked: the flow's later segments are dropped.
pub const DNS_STREAM_BLOCKED: u32 = 1;

/// Value of `DNS_STREAMS`: where a DNS-over-TCP flow's stream is (`FlowKey` as for `FLOWS`).
/// Message byte `k` of the message being collected is `buf[2 + k]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsStream {
    /// The stream's next byte expected (sequence number).
    pub next_seq: u32,
    /// `DNS_STREAM_*`.
    pub state: u32,
    /// Bytes of the current message still to pass over (its question already judged).
    pub skip: u32,
    /// Bytes of the current message (length field included) held in `buf`.
    pub have: u32,
    /// Where the last segment judged began, and `skip` and `have` as they were then: a segment
    /// at that sequence number again (a retransmission, or the real one after a decoy that
    /// never reached the server) is judged again from there.
    pub seg_seq: u32,
    pub seg_skip: u32,
    pub seg_have: u32,
    /// 1 while `buf` still holds what it held when the last segment began.
    pub seg_valid: u32,
    pub buf: [u8; DNS_STREAM_BUF],
}
const _: () = assert!(size_of::<DnsStream>() == 32 + DNS_STREAM_BUF);

/// How a blocked DNS query is answered (`dns_block_answer`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsAnswer {
    NxDomain = 0,
    Refused = 1,
    Sinkhole = 2,
    Drop = 3,
}

/// Index of a rule set in `RULESETS`.
#[inline(always)]
pub const fn ruleset_index(generation: u32, id: u32) -> u32 {
    generation * MAX_RULESETS + id
}

/// Index of a policy in `POLICIES`.
#[inline(always)]
pub const fn policy_index(generation: u32, policy: u32) -> u32 {
    generation * MAX_POLICIES + policy
}

/// A packet and byte counter (per CPU in `STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// `DEVICE_TRAFFIC[slot]` (per CPU): what the device sent into the gateway, and how much of it
/// was dropped or answered by the gateway.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceTraffic {
    pub packets: u64,
    pub bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}
const _: () = assert!(size_of::<DeviceTraffic>() == 32);

/// Key of `DECISIONS` (per CPU hash of `u64` counts).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DecisionKey {
    pub slot: u32,
    /// `Proto`.
    pub proto: u8,
    /// `Action`.
    pub action: u8,
    /// `Reason`.
    pub reason: u8,
    /// Category id, or `NO_CATEGORY`.
    pub category: u8,
}
const _: () = assert!(size_of::<DecisionKey>() == 8);

impl DecisionKey {
    /// The key as one word (`DecisionSlot::key`).
    #[inline(always)]
    pub const fn to_word(&self) -> u64 {
        self.slot as u64
            | (self.proto as u64) << 32
            | (self.action as u64) << 40
            | (self.reason as u64) << 48
            | (self.category as u64) << 56
    }

    /// The key of a word made by `to_word`.
    pub const fn from_word(w: u64) -> Self {
        Self {
            slot: w as u32,
            proto: (w >> 32) as u8,
            action: (w >> 40) as u8,
            reason: (w >> 48) as u8,
            category: (w >> 56) as u8,
        }
    }

    /// The key's slot in `DECISION_CACHE`.
    #[inline(always)]
    pub const fn cache_slot(&self) -> u32 {
        crate::table::home(crate::table::mix(self.to_word(), 0), DECISION_CACHE_SLOTS)
    }
}

/// Value of `DECISION_CACHE` (per CPU): one decision key and its count on this CPU. A decision
/// is counted here when its key owns the slot its hash picks (the first key counted there owns
/// it), and in `DECISIONS` otherwise: the common keys of a gateway cost an array slot instead of
/// a hash-map lookup. A key's total is the sum of both maps over all CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecisionSlot {
    /// `DecisionKey::to_word` of the owner.
    pub key: u64,
    /// Decisions counted; 0: the slot is free.
    pub count: u64,
}
const _: () = assert!(size_of::<DecisionSlot>() == 16);

/// `DecisionKey::category` when no category was involved.
pub const NO_CATEGORY: u8 = 0xff;

/// `DEVICE_NAMES[slot]`: the device a slot belongs to (written by the daemon, never read by the
/// kernel). Keeps slot assignments, and so counters, stable across daemon restarts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceName {
    pub len: u32,
    pub name: [u8; 60],
}
const _: () = assert!(size_of::<DeviceName>() == 64);

impl Default for DeviceName {
    fn default() -> Self {
        Self {
            len: 0,
            name: [0; 60],
        }
    }
}

impl DeviceName {
    /// Longest device name that fits.
    pub const MAX_LEN: usize = 60;

    /// The name, or `None` if the slot is free or the bytes are not UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        let bytes = self.name.get(..self.len as usize)?;
        if bytes.is_empty() {
            return None;
        }
        core::str::from_utf8(bytes).ok()
    }

    /// A record for `name`, or `None` if it is longer than `MAX_LEN` bytes.
    pub fn new(name: &str) -> Option<Self> {
        let bytes = name.as_bytes();
        let mut out = Self::default();
        out.name.get_mut(..bytes.len())?.copy_from_slice(bytes);
        out.len = bytes.len() as u32;
        Some(out)
    }
}

/// `IFACES[i]`: an interface the daemon attached to (written by the daemon for `stats` and
/// metrics; never read by the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceInfo {
    pub ifindex: u32,
    /// `LinkType`.
    pub link: u32,
    /// `AttachMode`.
    pub mode: u32,
    pub _pad: u32,
    pub name: [u8; 16],
}
const _: () = assert!(size_of::<IfaceInfo>() == 32);

/// Size of the decision-event ring, bytes (a power of two and a multiple of the page size).
pub const EVENT_RING_BYTES: u32 = 1 << 20;

/// One decision on a name, as the kernel reports it to the daemon through `EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecisionEvent {
    /// `bpf_ktime_get_boot_ns` when decided.
    pub boot_ns: u64,
    pub slot: u32,
    pub policy: u32,
    pub qtype: u16,
    /// `Proto`.
    pub proto: u8,
    /// `Action`.
    pub action: u8,
    /// `Reason`.
    pub reason: u8,
    /// Category id, or `NO_CATEGORY`.
    pub category: u8,
    pub name_len: u16,
    /// The name, lower case (the first `name_len` bytes).
    pub name: [u8; 256],
}
const _: () = assert!(size_of::<DecisionEvent>() == 280);

impl DecisionEvent {
    /// The name as text.
    pub fn name(&self) -> &str {
        let n = (self.name_len as usize).min(self.name.len());
        core::str::from_utf8(&self.name[..n]).unwrap_or("")
    }
}

/// `TRACE_FLAGS` bit: record the last frame's outcome in `TRACE`.
pub const TRACE_MAP: u32 = 1;
/// `TRACE_FLAGS` bit: write a debug trace of every outcome (aya-log).
pub const TRACE_LOG: u32 = 2;

/// `TRACE[0]`: the last frame's outcome, written only when `TRACE_FLAGS` has `TRACE_MAP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// Incremented on every run, so a reader can tell a fresh record from a stale one.
    pub seq: u32,
    /// `Verdict`.
    pub verdict: u32,
    /// `Reason`.
    pub reason: u32,
    pub slot: u32,
    pub policy: u32,
    /// `Action` of a decision on a name, or `TRACE_NO_ACTION`.
    pub action: u32,
}
const _: () = assert!(size_of::<Trace>() == 24);

/// `Trace::action` of frames no rule judged.
pub const TRACE_NO_ACTION: u32 = u32::MAX;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and byte arrays, and have
    // explicit padding (checked by the size assertions above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::Meta {}
    unsafe impl aya::Pod for crate::table::MacBucket {}
    unsafe impl aya::Pod for crate::table::IpBucket {}
    unsafe impl aya::Pod for crate::table::DomainBucket {}
    unsafe impl aya::Pod for super::DeviceRef {}
    unsafe impl aya::Pod for super::GenSettings {}
    unsafe impl aya::Pod for super::Control {}
    unsafe impl aya::Pod for super::PolicyEntry {}
    unsafe impl aya::Pod for crate::domain::RuleSet {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::DeviceTraffic {}
    unsafe impl aya::Pod for super::DecisionKey {}
    unsafe impl aya::Pod for super::DecisionSlot {}
    unsafe impl aya::Pod for super::DeviceName {}
    unsafe impl aya::Pod for super::IfaceInfo {}
    unsafe impl aya::Pod for super::Trace {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::DecisionEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip_and_reject_long_names() {
        let n = DeviceName::new("bus-17").expect("fits");
        assert_eq!(n.as_str(), Some("bus-17"));
        assert_eq!(DeviceName::default().as_str(), None);
        let long = "x".repeat(61);
        assert!(DeviceName::new(&long).is_none());
        assert!(DeviceName::new(&long[..60]).is_some());
    }

    #[test]
    fn decision_keys_round_trip_through_words_and_spread_over_the_cache() {
        let mut used = [0u32; DECISION_CACHE_SLOTS as usize];
        for slot in 0..256u32 {
            for (reason, category) in [(1u8, NO_CATEGORY), (2, 0), (2, 5), (3, NO_CATEGORY)] {
                let k = DecisionKey {
                    slot: slot * 3 + 1,
                    proto: 1,
                    action: 2,
                    reason,
                    category,
                };
                assert_eq!(DecisionKey::from_word(k.to_word()), k);
                used[k.cache_slot() as usize] += 1;
            }
        }
        // 1,024 keys over 1,024 slots: most keys own a slot (a perfect spread is not needed).
        let owners = used.iter().filter(|n| **n > 0).count();
        assert!(owners > 600, "{owners} slots used");
    }

    #[test]
    fn cidr_data_puts_generation_first() {
        let mut a = [0u8; 16];
        a[15] = 7;
        let d = cidr_data(1, &a);
        assert_eq!(d[0], 1);
        assert_eq!(d[16], 7);
        assert_eq!(&d[17..], &[0, 0, 0]);
    }
}
