//! Enums shared by the kernel and the daemon. Their discriminants index the kernel's counter
//! maps; their labels name the metrics. Discriminants are part of the pinned-map ABI: append,
//! never renumber.

labelled_enum! {
    /// The XDP verdict a frame received, as counted.
    pub enum Verdict {
        Pass = 0 => "pass",
        Drop = 1 => "drop",
        Tx = 2 => "tx",
    }
}

labelled_enum! {
    /// Why a frame got its verdict. Exactly one reason is counted for every frame.
    pub enum Reason {
        /// Nothing in the policy inspects this traffic (the fast path).
        Uninspected = 0 => "uninspected",
        /// Not IPv4/IPv6 (ARP, LLDP, ...).
        NonIp = 1 => "non_ip",
        /// A non-first IP fragment: there is no transport header to inspect.
        Fragment = 2 => "fragment",
        /// The device is suspended: dropped.
        Suspended = 3 => "suspended",
        /// The device is suspended, but this is DHCP, DHCPv6, ARP or NDP: passed.
        SuspendedExempt = 4 => "suspended_exempt",
        /// Frame shorter than its link-layer header.
        TruncatedL2 = 5 => "truncated_l2",
        /// More VLAN tags than the parser follows (two).
        VlanLimit = 6 => "vlan_limit",
        /// Frame ends inside the IP header.
        TruncatedL3 = 7 => "truncated_l3",
        /// IP header that is not valid (version, header length, total length).
        BadL3 = 8 => "bad_l3",
        /// More IPv6 extension headers than the parser follows.
        Ipv6ExtLimit = 9 => "ipv6_ext_limit",
        /// Frame ends inside the TCP/UDP/ICMP header.
        TruncatedL4 = 10 => "truncated_l4",
        /// A name decided by the policy's explicit allow or block list.
        Explicit = 11 => "explicit",
        /// A name decided by a category the policy blocks (or an exception in it).
        Category = 12 => "category",
        /// A name no rule matched: the policy's `default`.
        Default = 13 => "default",
        /// An HTTPS/SVCB query answered empty (`https_records = "empty"`).
        HttpsRecords = 14 => "https_records",
        /// DNS to port 53 that is not a query (a response, another opcode).
        DnsNotQuery = 15 => "dns_not_query",
        /// A DNS query with other than one question.
        DnsQdcount = 16 => "dns_qdcount",
        /// A DNS query cut short (header, name or question).
        DnsTruncated = 17 => "dns_truncated",
        /// A compression pointer (or an obsolete label type) in the question.
        DnsCompression = 18 => "dns_compression",
        /// A label longer than 63 octets.
        DnsLabelTooLong = 19 => "dns_label_too_long",
        /// A name longer than 255 octets on the wire or 253 characters of text.
        DnsNameTooLong = 20 => "dns_name_too_long",
        /// The root name (no labels).
        DnsEmptyName = 21 => "dns_empty_name",
        /// A byte no host name contains.
        DnsBadChar = 22 => "dns_bad_char",
        /// A complete ClientHello without a server name (`on_unparsed_tls` decides).
        TlsNoSni = 23 => "tls_no_sni",
        /// A ClientHello the walk could not finish: malformed, over a cap, a segment out of order
        /// or missing (`on_unparsed_tls` decides).
        TlsUnparsed = 24 => "tls_unparsed",
        /// A segment of a ClientHello that continues in the next segment: passed, walk kept.
        TlsPending = 25 => "tls_pending",
        /// A later packet of a flow whose ClientHello was blocked.
        FlowBlocked = 26 => "flow_blocked",
        /// A QUIC Initial packet, judged by the policy's `quic`.
        Quic = 27 => "quic",
        /// A port the policy blocks (`block_ports`).
        BlockedPort = 28 => "blocked_port",
        /// A segment of a DNS-over-TCP message that continues in the next segment: passed, the
        /// message's start kept until it is whole.
        DnsTcpPending = 29 => "dns_tcp_pending",
        /// A TCP segment out of order in a flow still being judged (DNS over TCP, a ClientHello
        /// not yet decided): dropped, so the client sends it again in order.
        TcpOutOfOrder = 30 => "tcp_out_of_order",
        /// A first IP fragment that ends before what the decision needs (RFC 1858's tiny
        /// fragment), or any fragment of a TCP segment to a judged port: dropped.
        FragmentTooSmall = 31 => "fragment_too_small",
        /// DNS to a resolver the policy does not allow (`dns_resolvers`).
        DnsResolver = 32 => "dns_resolver",
        /// More DNS messages in one TCP segment than one frame may judge: the flow is reset.
        DnsTcpTooMany = 33 => "dns_tcp_too_many",
        /// A query for a name the policy's `safe_search` covers, answered in the kernel with the
        /// engine's enforcement name and its addresses (HTTPS/SVCB: answered empty; over TCP,
        /// where no answer can be built: reset).
        SafeSearch = 34 => "safe_search",
        /// A query `safe_search` covers whose enforcement name has no address yet (the daemon
        /// has not resolved it): passed to the resolver untouched.
        SafeSearchUnresolved = 35 => "safe_search_unresolved",
        /// A complete plain-HTTP request head without a host name to judge (no `Host`, an empty
        /// one, an address literal): `on_unparsed_http` decides.
        HttpNoHost = 36 => "http_no_host",
        /// A plain-HTTP request whose host could not be read: malformed, ambiguous (duplicate or
        /// folded `Host`), or cut by the end of the segment first (`on_unparsed_http` decides).
        HttpUnparsed = 37 => "http_unparsed",
    }
}

impl Reason {
    /// A malformed DNS query (judged by the policy's `on_parse_error`).
    pub const fn is_dns_parse_error(self) -> bool {
        self as u32 >= Reason::DnsNotQuery as u32 && self as u32 <= Reason::DnsBadChar as u32
    }
}

/// Number of reason slots reserved in the counter maps (room to append reasons).
pub const REASON_SLOTS: u32 = 64;
/// Number of verdict slots per reason in the counter maps.
pub const VERDICT_SLOTS: u32 = 4;

/// Index of the (reason, verdict) counter in the `STATS` map.
#[inline(always)]
pub const fn stats_index(reason: Reason, verdict: Verdict) -> u32 {
    reason as u32 * VERDICT_SLOTS + verdict as u32
}

labelled_enum! {
    /// Gateway-wide conditions counted apart from frames (`GLOBAL_COUNTERS`).
    pub enum Global {
        /// A per-device decision could not be counted: `DECISIONS` is full.
        DecisionMapFull = 0 => "decision_map_full",
        /// A decision event was lost: the event ring was full.
        RingLost = 1 => "ring_lost",
        /// TLS flow state created (at a SYN to a TLS port, for a ClientHello continued in a later
        /// segment, or for a blocked flow).
        FlowsCreated = 2 => "flows_created",
        /// TLS flow state removed by the program (the walk ended); created - removed - present
        /// is what the LRU map evicted.
        FlowsRemoved = 3 => "flows_removed",
        /// A ClientHello whose host name continued in a later segment, but whose saved partial
        /// name was evicted (`on_unparsed_tls` decided).
        FlowNameLost = 4 => "flow_name_lost",
        /// DNS-over-TCP stream state created (at the SYN, or at the first data segment).
        DnsStreamsCreated = 5 => "dns_streams_created",
    }
}

/// Slots reserved in `GLOBAL_COUNTERS`.
pub const GLOBAL_SLOTS: u32 = 32;

labelled_enum! {
    /// The protocol a per-device decision was made on.
    pub enum Proto {
        Dns = 0 => "dns",
        Tls = 1 => "tls",
        Quic = 2 => "quic",
        Port = 3 => "port",
        Suspended = 4 => "suspended",
        /// Plain HTTP: the request's `Host` (or absolute URI).
        Http = 5 => "http",
    }
}

labelled_enum! {
    /// The action of a per-device decision.
    pub enum Action {
        Allow = 0 => "allow",
        Block = 1 => "block",
        /// `mode = monitor`: would have been blocked, was passed.
        Monitor = 2 => "monitor",
        /// Answered with something else than asked for, by policy (`safe_search`: the engine's
        /// enforcement name).
        Rewrite = 3 => "rewrite",
    }
}

labelled_enum! {
    /// The link layer in front of the IP header, fixed per attachment at load time.
    pub enum LinkType {
        /// Ethernet with up to two 802.1Q / 802.1ad tags.
        Ethernet = 0 => "ethernet",
        /// No link-layer header: the frame starts with the IPv4 or IPv6 header (raw-IP modems,
        /// tun devices).
        RawIp = 1 => "raw-ip",
    }
}

labelled_enum! {
    /// The XDP attach mode actually in use on an interface.
    pub enum AttachMode {
        Unknown = 0 => "unknown",
        Native = 1 => "native",
        Generic = 2 => "generic",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_fit_their_maps() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_u32(*r as u32), Some(*r));
            assert_eq!(Reason::from_label(r.label()), Some(*r));
            assert!((*r as u32) < REASON_SLOTS);
        }
        for v in Verdict::ALL {
            assert!((*v as u32) < VERDICT_SLOTS);
        }
        assert_eq!(Reason::from_u32(REASON_SLOTS), None);
        assert_eq!(stats_index(Reason::Suspended, Verdict::Drop), 13);
    }
}
