//! Tier 2: table fixtures through the real kernel program (BPF_PROG_TEST_RUN).
//!
//! Each row is a frame, the link type of the program instance it goes through, the verdict and
//! reason expected, the device it must be attributed to, and the counters that must change:
//! exactly one (reason, verdict) frame counter by one frame and its bytes, the device's traffic
//! counter likewise, and for suspended devices one decision. Needs root (CI runs as root).

use std::collections::BTreeMap;

use etherparse::{IpNumber, Ipv4Header, Ipv4Options, PacketBuilder};
use gateway_common::{
    enums::{Action, LinkType, Proto, Reason, VERDICT_SLOTS, Verdict, stats_index},
    maps::{DecisionKey, NO_CATEGORY, UNKNOWN_SLOT},
    packet::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6},
};
use gateway_user::{
    config::Config,
    frames::{self, L2, L3, L4, TcpFlags},
    stats::sum,
    testrun::TestRunner,
};

const MAC_DEV: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SUSP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

const CONFIG: &str = r#"
[gateway]
unknown_devices = "guest"

[[policy]]
name = "guest"

[[policy]]
name = "students"

[[device]]
name = "mac-dev"
mac = "02:00:00:00:00:01"
policy = "students"

[[device]]
name = "ip-dev"
ip = ["10.0.0.2", "fd00::2"]
policy = "students"

[[device]]
name = "cidr-dev"
cidr = ["10.9.0.0/16", "fd09::/32"]
policy = "students"

[[device]]
name = "suspended-dev"
mac = "02:00:00:00:00:05"
ip = ["10.0.0.5", "fd00::5"]
policy = "students"
suspended = true
"#;

/// `text` as a configuration (the tests' own, so it must be valid).
fn config(text: &str) -> Config {
    Config::parse(text, std::path::Path::new("fixtures.toml")).expect("config")
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the fixture tests load BPF programs: run them as root (cargo xtask test)"
    );
}

fn v4(last: u8) -> L3 {
    L3::V4 {
        src: [10, 0, 0, last],
        dst: [93, 184, 216, 34],
    }
}

fn v6(prefix: [u8; 4], last: u8) -> L3 {
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&prefix);
    src[15] = last;
    let mut dst = [0u8; 16];
    dst[0] = 0x20;
    dst[1] = 0x01;
    dst[15] = 1;
    L3::V6 { src, dst }
}

fn eth(src: [u8; 6]) -> L2 {
    L2::Ethernet { src, dst: GW_MAC }
}

const UDP: L4 = L4::Udp {
    sport: 40000,
    dport: 5000,
};
const TCP: L4 = L4::Tcp {
    sport: 40000,
    dport: 443,
    seq: 7,
    flags: TcpFlags {
        syn: true,
        ack: None,
        psh: false,
        rst: false,
        fin: false,
    },
};

/// Ethernet header + `payload` with `ethertype`.
fn ether(src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An ARP request from `src` (28 bytes of ARP, padded to the Ethernet minimum).
fn arp(src: [u8; 6]) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&src);
    a.extend_from_slice(&[10, 0, 0, 5]);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&[10, 0, 0, 1]);
    a.resize(46, 0);
    ether(src, ETH_P_ARP, &a)
}

/// IPv4 with `ihl` words of header (options are NOPs), then `transport` bytes.
fn ipv4_with_options(ihl: u8, frag: u16, proto: u8, transport: &[u8]) -> Vec<u8> {
    let options = vec![1u8; (ihl as usize - 5) * 4];
    let mut h = Ipv4Header::new(
        transport.len() as u16,
        64,
        IpNumber(proto),
        [10, 0, 0, 2],
        [93, 184, 216, 34],
    )
    .expect("header");
    h.options = Ipv4Options::try_from(&options[..]).expect("options");
    h.set_payload_len(transport.len()).expect("length");
    h.fragment_offset = etherparse::IpFragOffset::try_new(frag & 0x1fff).expect("offset");
    h.more_fragments = frag & 0x2000 != 0;
    h.header_checksum = h.calc_header_checksum();
    let mut out = Vec::new();
    h.write(&mut out).expect("write");
    out.extend_from_slice(transport);
    out
}

/// A raw IPv6 packet from `src` with the given extension-header bytes (already chained: `next`
/// is the first header's number) and transport bytes.
fn ipv6_raw(src: [u8; 16], next: u8, ext_and_transport: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(ext_and_transport.len() as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    h[24] = 0x20;
    h[25] = 0x01;
    h[39] = 1;
    h.extend_from_slice(ext_and_transport);
    h
}

fn udp_bytes(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn tcp_bytes_with_options(dport: u16, doff: u8) -> Vec<u8> {
    let mut t = vec![0u8; doff as usize * 4];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = doff << 4;
    t[13] = 0x02;
    for b in t.iter_mut().skip(20) {
        *b = 1; // NOP options
    }
    t
}

fn v6_addr(prefix: [u8; 4], last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&prefix);
    a[15] = last;
    a
}

/// Counters the rows check, read from the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counts {
    stats: BTreeMap<u32, (u64, u64)>,
    device: (u64, u64, u64, u64),
    decisions: BTreeMap<DecisionKey, u64>,
}

fn counts(r: &TestRunner, slot: u32) -> Counts {
    // As reported: uninspected passes are derived from the device counters (the kernel does
    // not count them by reason).
    let stats = gateway_user::stats::reason_counters(&r.maps)
        .expect("stats")
        .into_iter()
        .filter(|(_, c)| c.packets != 0)
        .map(|(i, c)| (i, (c.packets, c.bytes)))
        .collect();
    let t = sum(&r.maps.device_traffic.get(&slot, 0).expect("device traffic"));
    let decisions: BTreeMap<DecisionKey, u64> = gateway_user::stats::decision_counts(&r.maps)
        .expect("decisions")
        .into_iter()
        .collect();
    Counts {
        stats,
        device: (t.packets, t.bytes, t.dropped_packets, t.dropped_bytes),
        decisions,
    }
}

struct Row {
    name: String,
    link: LinkType,
    frame: Vec<u8>,
    verdict: Verdict,
    reason: Reason,
    /// Device name, or None for the unknown-devices slot.
    device: Option<&'static str>,
}

fn row(
    name: &str,
    l2: L2,
    l3: L3,
    l4: L4,
    verdict: Verdict,
    reason: Reason,
    device: Option<&'static str>,
) -> Row {
    Row {
        name: name.to_string(),
        link: l2.link_type(),
        frame: frames::sized(l2, l3, l4, 64),
        verdict,
        reason,
        device,
    }
}

fn raw(
    name: &str,
    link: LinkType,
    frame: Vec<u8>,
    verdict: Verdict,
    reason: Reason,
    device: Option<&'static str>,
) -> Row {
    Row {
        name: name.to_string(),
        link,
        frame,
        verdict,
        reason,
        device,
    }
}

struct Runners {
    eth: TestRunner,
    raw: TestRunner,
}

impl Runners {
    fn new() -> Self {
        require_root();
        let c = config(CONFIG);
        Self {
            eth: TestRunner::new(&c, LinkType::Ethernet).expect("ethernet instance"),
            raw: TestRunner::new(&c, LinkType::RawIp).expect("raw-ip instance"),
        }
    }

    fn check(&mut self, row: &Row) {
        let runner = if row.link == LinkType::RawIp {
            &mut self.raw
        } else {
            &mut self.eth
        };
        let slot = match row.device {
            Some(name) => *runner
                .applied
                .slots
                .get(name)
                .unwrap_or_else(|| panic!("{}: no slot for {name}", row.name)),
            None => UNKNOWN_SLOT,
        };
        let before = counts(runner, slot);
        let r = runner
            .run(&row.frame)
            .unwrap_or_else(|e| panic!("{}: {e:#}", row.name));
        let after = counts(runner, slot);
        let ctx = format!("row {} ({} bytes)", row.name, row.frame.len());
        assert_eq!(
            (r.verdict, r.reason),
            (row.verdict, row.reason),
            "{ctx}: verdict and reason"
        );
        assert_eq!(
            r.slot,
            slot,
            "{ctx}: device slot (got {})",
            runner.device_name(r.slot)
        );

        // Exactly one (reason, verdict) counter moved, by this frame.
        let idx = row.reason as u32 * VERDICT_SLOTS + row.verdict as u32;
        let len = row.frame.len() as u64;
        for (i, (p, b)) in &after.stats {
            let (p0, b0) = before.stats.get(i).copied().unwrap_or((0, 0));
            if *i == idx {
                assert_eq!((p - p0, b - b0), (1, len), "{ctx}: counter {i}");
            } else {
                assert_eq!(
                    (p - p0, b - b0),
                    (0, 0),
                    "{ctx}: unrelated counter {i} moved"
                );
            }
        }
        assert!(
            after.stats.contains_key(&idx),
            "{ctx}: counter {idx} not counted"
        );

        let dropped = u64::from(row.verdict != Verdict::Pass);
        let d = (
            after.device.0 - before.device.0,
            after.device.1 - before.device.1,
            after.device.2 - before.device.2,
            after.device.3 - before.device.3,
        );
        assert_eq!(d, (1, len, dropped, dropped * len), "{ctx}: device traffic");

        let key = DecisionKey {
            slot,
            proto: Proto::Suspended as u8,
            action: Action::Block as u8,
            reason: Reason::Suspended as u8,
            category: NO_CATEGORY,
        };
        let moved = after.decisions.get(&key).copied().unwrap_or(0)
            - before.decisions.get(&key).copied().unwrap_or(0);
        assert_eq!(
            moved,
            u64::from(row.reason == Reason::Suspended),
            "{ctx}: suspension decision"
        );
        let others_moved = after
            .decisions
            .iter()
            .any(|(k, v)| *k != key && before.decisions.get(k) != Some(v));
        assert!(!others_moved, "{ctx}: another decision counter moved");
    }
}

#[test]
fn identity_link_types_and_headers() {
    let mut r = Runners::new();
    use Reason::*;
    use Verdict::*;
    let rows = vec![
        row(
            "eth ipv4 udp, known MAC",
            eth(MAC_DEV),
            v4(77),
            UDP,
            Pass,
            Uninspected,
            Some("mac-dev"),
        ),
        row(
            "eth ipv4 tcp, known MAC",
            eth(MAC_DEV),
            v4(77),
            TCP,
            Pass,
            Uninspected,
            Some("mac-dev"),
        ),
        row(
            "eth ipv4, exact address",
            eth(OTHER_MAC),
            v4(2),
            UDP,
            Pass,
            Uninspected,
            Some("ip-dev"),
        ),
        row(
            "eth ipv6, exact address",
            eth(OTHER_MAC),
            v6([0xfd, 0, 0, 0], 2),
            UDP,
            Pass,
            Uninspected,
            Some("ip-dev"),
        ),
        row(
            "eth ipv4, CIDR",
            eth(OTHER_MAC),
            L3::V4 {
                src: [10, 9, 3, 4],
                dst: [1, 1, 1, 1],
            },
            UDP,
            Pass,
            Uninspected,
            Some("cidr-dev"),
        ),
        row(
            "eth ipv6, CIDR",
            eth(OTHER_MAC),
            v6([0xfd, 0x09, 0, 0], 0x34),
            UDP,
            Pass,
            Uninspected,
            Some("cidr-dev"),
        ),
        row(
            "eth ipv4, unknown",
            eth(OTHER_MAC),
            v4(200),
            UDP,
            Pass,
            Uninspected,
            None,
        ),
        row(
            "eth ipv6, unknown",
            eth(OTHER_MAC),
            v6([0xfd, 0, 0, 1], 2),
            UDP,
            Pass,
            Uninspected,
            None,
        ),
        row(
            "MAC wins over address",
            eth(MAC_DEV),
            v4(2),
            UDP,
            Pass,
            Uninspected,
            Some("mac-dev"),
        ),
        row(
            "one 802.1Q tag",
            L2::Vlan {
                src: MAC_DEV,
                dst: GW_MAC,
                vid: 10,
            },
            v4(77),
            UDP,
            Pass,
            Uninspected,
            Some("mac-dev"),
        ),
        row(
            "802.1ad + 802.1Q",
            L2::DoubleVlan {
                src: MAC_DEV,
                dst: GW_MAC,
                outer: 100,
                inner: 10,
            },
            v4(77),
            UDP,
            Pass,
            Uninspected,
            Some("mac-dev"),
        ),
        row(
            "two tags, ipv6 address",
            L2::DoubleVlan {
                src: OTHER_MAC,
                dst: GW_MAC,
                outer: 100,
                inner: 10,
            },
            v6([0xfd, 0, 0, 0], 2),
            UDP,
            Pass,
            Uninspected,
            Some("ip-dev"),
        ),
        row(
            "raw ipv4",
            L2::RawIp,
            v4(2),
            UDP,
            Pass,
            Uninspected,
            Some("ip-dev"),
        ),
        row(
            "raw ipv6",
            L2::RawIp,
            v6([0xfd, 0, 0, 0], 2),
            TCP,
            Pass,
            Uninspected,
            Some("ip-dev"),
        ),
        row(
            "raw ipv4 CIDR",
            L2::RawIp,
            L3::V4 {
                src: [10, 9, 200, 1],
                dst: [1, 1, 1, 1],
            },
            UDP,
            Pass,
            Uninspected,
            Some("cidr-dev"),
        ),
        row(
            "raw ipv4 unknown",
            L2::RawIp,
            v4(201),
            UDP,
            Pass,
            Uninspected,
            None,
        ),
        row(
            "raw icmp echo",
            L2::RawIp,
            v4(2),
            L4::Echo { id: 1, seq: 1 },
            Pass,
            Uninspected,
            Some("ip-dev"),
        ),
        raw(
            "ARP from a known MAC",
            LinkType::Ethernet,
            arp(MAC_DEV),
            Pass,
            NonIp,
            Some("mac-dev"),
        ),
        raw(
            "LLDP from an unknown MAC",
            LinkType::Ethernet,
            ether(OTHER_MAC, 0x88cc, &[0; 46]),
            Pass,
            NonIp,
            None,
        ),
        raw(
            "three VLAN tags",
            LinkType::Ethernet,
            ether(
                MAC_DEV,
                ETH_P_8021AD,
                &[
                    0, 1, 0x81, 0, 0, 2, 0x81, 0, 0, 3, 0x08, 0, 0x45, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
            Pass,
            VlanLimit,
            Some("mac-dev"),
        ),
    ];
    for row in &rows {
        r.check(row);
    }
}

#[test]
fn options_extension_headers_and_fragments() {
    let mut r = Runners::new();
    use Reason::*;
    use Verdict::*;
    let udp = udp_bytes(40000, 5000, b"payload");
    let hbh_then = |next: u8| vec![next, 0, 1, 4, 0, 0, 0, 0];
    let frag_hdr = |next: u8, offset_flags: u16| {
        let mut f = vec![next, 0];
        f.extend_from_slice(&offset_flags.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 9]);
        f
    };
    let v6src = v6_addr([0xfd, 0, 0, 0], 2);
    let rows = vec![
        raw(
            "ipv4 ihl=6",
            LinkType::RawIp,
            ipv4_with_options(6, 0, 17, &udp),
            Pass,
            Uninspected,
            Some("ip-dev"),
        ),
        raw(
            "ipv4 ihl=15",
            LinkType::RawIp,
            ipv4_with_options(15, 0, 17, &udp),
            Pass,
            Uninspected,
            Some("ip-dev"),
        ),
        raw(
            "ipv4 options + tcp options",
            LinkType::Ethernet,
            ether(
                OTHER_MAC,
                ETH_P_IP,
                &ipv4_with_options(9, 0, 6, &tcp_bytes_with_options(443, 15)),
            ),
            Pass,
            Uninspected,
            Some("ip-dev"),
        ),
        raw(
            "ipv4 first fragment",
            LinkType::RawIp,
            ipv4_with_options(5, 0x2000, 17, &udp),
            Pass,
            Uninspected,
            Some("ip-dev"),
        ),
        raw(
            "ipv4 later fragment",
            LinkType::RawIp,
            ipv4_with_options(5, 0x0020, 17, b"rest of the datagram"),
            Pass,
            Fragment,
            Some("ip-dev"),
        ),
        raw(
            "ipv4 last fragment",
            LinkType::Ethernet,
            ether(
                MAC_DEV,
                ETH_P_IP,
                &ipv4_with_options(5, 0x0003, 17, b"tail"),
            ),
            Pass,
            Fragment,
            Some("mac-dev"),
        ),
        raw(
            "ipv6 hop-by-hop",
            LinkType::RawIp,
            ipv6_raw(v6src, 0, &[hbh_then(17), udp.clone()].concat()),
            Pass,
            Uninspected,
            Some("ip-dev"),
        ),
        raw(
            "ipv6 hop-by-hop + fragment (first)",
            LinkType::RawIp,
            ipv6_raw(
                v6src,
                0,
                &[hbh_then(44), frag_hdr(17, 0x0001), udp.clone()].concat(),
            ),
            Pass,
            Uninspected,
            Some("ip-dev"),
        ),
        raw(
            "ipv6 later fragment",
            LinkType::Ethernet,
            ether(
                OTHER_MAC,
                ETH_P_IPV6,
                &ipv6_raw(
                    v6src,
                    44,
                    &[frag_hdr(17, 0x0100), b"more data".to_vec()].concat(),
                ),
            ),
            Pass,
            Fragment,
            Some("ip-dev"),
        ),
        raw(
            "ipv6 routing + destination options",
            LinkType::RawIp,
            ipv6_raw(
                v6src,
                43,
                &[
                    vec![60, 0, 0, 0, 0, 0, 0, 0],
                    vec![17, 0, 1, 4, 0, 0, 0, 0],
                    udp.clone(),
                ]
                .concat(),
            ),
            Pass,
            Uninspected,
            Some("ip-dev"),
        ),
        raw(
            "ipv6 seven extension headers",
            LinkType::RawIp,
            ipv6_raw(
                v6src,
                60,
                &[
                    (0..7)
                        .flat_map(|i| vec![if i == 6 { 17 } else { 60 }, 0, 1, 4, 0, 0, 0, 0])
                        .collect::<Vec<u8>>(),
                    udp.clone(),
                ]
                .concat(),
            ),
            Pass,
            Ipv6ExtLimit,
            Some("ip-dev"),
        ),
        // Malformed after the fixed header: still attributed to the sender.
        raw(
            "ipv4 ihl=4",
            LinkType::RawIp,
            {
                let mut f = ipv4_with_options(5, 0, 17, &udp);
                f[0] = 0x44;
                f
            },
            Pass,
            BadL3,
            Some("ip-dev"),
        ),
        raw(
            "ipv4 total length below header",
            LinkType::RawIp,
            {
                let mut f = ipv4_with_options(5, 0, 17, &udp);
                f[2..4].copy_from_slice(&12u16.to_be_bytes());
                f
            },
            Pass,
            BadL3,
            Some("ip-dev"),
        ),
        raw(
            "ipv4 options cut short",
            LinkType::RawIp,
            ipv4_with_options(15, 0, 17, &[])[..40].to_vec(),
            Pass,
            TruncatedL3,
            Some("ip-dev"),
        ),
        raw(
            "version 5 on a raw link",
            LinkType::RawIp,
            {
                let mut f = ipv4_with_options(5, 0, 17, &udp);
                f[0] = 0x55;
                f
            },
            Pass,
            BadL3,
            None,
        ),
        raw(
            "ethertype ipv4 carrying ipv6",
            LinkType::Ethernet,
            ether(OTHER_MAC, ETH_P_IP, &ipv6_raw(v6src, 17, &udp)),
            Pass,
            BadL3,
            None,
        ),
    ];
    for row in &rows {
        r.check(row);
    }
}

#[test]
fn suspended_devices_keep_only_dhcp_arp_and_ndp() {
    let mut r = Runners::new();
    use Reason::*;
    use Verdict::*;
    let s = Some("suspended-dev");
    let dhcp = frames::build(
        eth(SUSP_MAC),
        L3::V4 {
            src: [0, 0, 0, 0],
            dst: [255, 255, 255, 255],
        },
        L4::Udp {
            sport: 68,
            dport: 67,
        },
        &[0; 240],
    );
    let dhcpv6 = frames::build(
        eth(SUSP_MAC),
        v6([0xfe, 0x80, 0, 0], 5),
        L4::Udp {
            sport: 546,
            dport: 547,
        },
        &[1, 0, 0, 1],
    );
    let mut ns = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&v6_addr([0xfd, 0, 0, 0], 1));
    let ndp = ether(
        SUSP_MAC,
        ETH_P_IPV6,
        &ipv6_raw(v6_addr([0xfd, 0, 0, 0], 5), 58, &ns),
    );
    let ping6 = ether(
        SUSP_MAC,
        ETH_P_IPV6,
        &ipv6_raw(v6_addr([0xfd, 0, 0, 0], 5), 58, &[128, 0, 0, 0, 0, 1, 0, 1]),
    );
    let rows = vec![
        row("udp", eth(SUSP_MAC), v4(5), UDP, Drop, Suspended, s),
        row("tcp syn", eth(SUSP_MAC), v4(5), TCP, Drop, Suspended, s),
        row(
            "icmp echo",
            eth(SUSP_MAC),
            v4(5),
            L4::Echo { id: 3, seq: 1 },
            Drop,
            Suspended,
            s,
        ),
        raw(
            "dhcp discover",
            LinkType::Ethernet,
            dhcp,
            Pass,
            SuspendedExempt,
            s,
        ),
        raw(
            "dhcpv6 solicit",
            LinkType::Ethernet,
            dhcpv6,
            Pass,
            SuspendedExempt,
            s,
        ),
        raw(
            "ndp neighbour solicitation",
            LinkType::Ethernet,
            ndp,
            Pass,
            SuspendedExempt,
            s,
        ),
        raw("icmpv6 echo", LinkType::Ethernet, ping6, Drop, Suspended, s),
        raw(
            "arp",
            LinkType::Ethernet,
            arp(SUSP_MAC),
            Pass,
            SuspendedExempt,
            s,
        ),
        raw(
            "lldp",
            LinkType::Ethernet,
            ether(SUSP_MAC, 0x88cc, &[0; 46]),
            Drop,
            Suspended,
            s,
        ),
        raw(
            "later fragment",
            LinkType::Ethernet,
            ether(
                SUSP_MAC,
                ETH_P_IP,
                &ipv4_with_options(5, 0x0040, 17, b"tail"),
            ),
            Drop,
            Suspended,
            s,
        ),
        raw(
            "truncated ip header",
            LinkType::Ethernet,
            ether(SUSP_MAC, ETH_P_IP, &[0x45, 0, 0, 40, 0, 0]),
            Drop,
            Suspended,
            s,
        ),
        raw(
            "three VLAN tags",
            LinkType::Ethernet,
            ether(
                SUSP_MAC,
                ETH_P_8021AD,
                &[
                    0, 1, 0x81, 0, 0, 2, 0x81, 0, 0, 3, 0x08, 0, 0x45, 0, 0, 20, 0, 0, 0, 0, 64,
                    17, 0, 0, 10, 0, 0, 5, 1, 1, 1, 1,
                ],
            ),
            Drop,
            Suspended,
            s,
        ),
        raw(
            "VLAN tag cut short",
            LinkType::Ethernet,
            ether(SUSP_MAC, ETH_P_8021Q, &[0]),
            Drop,
            Suspended,
            s,
        ),
        row(
            "by address on a raw link",
            L2::RawIp,
            v4(5),
            UDP,
            Drop,
            Suspended,
            s,
        ),
        row(
            "by ipv6 address, other MAC",
            eth(OTHER_MAC),
            v6([0xfd, 0, 0, 0], 5),
            TCP,
            Drop,
            Suspended,
            s,
        ),
        raw(
            "seven ipv6 extension headers, by address",
            LinkType::RawIp,
            ipv6_raw(
                v6_addr([0xfd, 0, 0, 0], 5),
                60,
                &(0..7)
                    .flat_map(|i| vec![if i == 6 { 17 } else { 60 }, 0, 1, 4, 0, 0, 0, 0])
                    .chain(udp_bytes(1, 2, b""))
                    .collect::<Vec<u8>>(),
            ),
            Drop,
            Suspended,
            s,
        ),
        raw(
            "ipv4 options cut short, by address",
            LinkType::RawIp,
            {
                let mut f = ipv4_with_options(15, 0, 17, &[]);
                f[15] = 5;
                f.truncate(40);
                f
            },
            Drop,
            Suspended,
            s,
        ),
        raw(
            "dhcp on a raw link",
            LinkType::RawIp,
            {
                let f = PacketBuilder::ipv4([10, 0, 0, 5], [10, 0, 0, 1], 64).udp(68, 67);
                let mut out = Vec::new();
                f.write(&mut out, &[0; 20]).expect("frame");
                out
            },
            Pass,
            SuspendedExempt,
            s,
        ),
    ];
    for row in &rows {
        r.check(row);
    }
}

/// Every truncation point of a TCP/IPv4 frame (IP and TCP options) and of a UDP/IPv6 frame
/// (hop-by-hop header), down to the 14 bytes BPF_PROG_TEST_RUN accepts, from a known device.
#[test]
fn every_truncation_point() {
    let mut r = Runners::new();
    let tcp = tcp_bytes_with_options(443, 8);
    let v4 = ether(MAC_DEV, ETH_P_IP, &ipv4_with_options(7, 0, 6, &tcp));
    let v4_l3 = 14;
    let v4_l4 = v4_l3 + 28;
    let udp = udp_bytes(40000, 5000, b"query");
    let v6 = ether(
        MAC_DEV,
        ETH_P_IPV6,
        &ipv6_raw(
            v6_addr([0xfd, 0, 0, 0], 2),
            0,
            &[vec![17, 0, 1, 4, 0, 0, 0, 0], udp].concat(),
        ),
    );
    let v6_l4 = 14 + 40 + 8;
    let vlan = {
        let mut f = ether(MAC_DEV, ETH_P_8021Q, &[0, 10]);
        f.extend_from_slice(&ETH_P_IP.to_be_bytes());
        f.extend_from_slice(&ipv4_with_options(5, 0, 17, &udp_bytes(1, 2, b"")));
        f
    };
    let mut checked = 0;
    for (frame, l3, l4, l4_len) in [
        (&v4, v4_l3, v4_l4, 32),
        (&v6, 14, v6_l4, 8),
        (&vlan, 18, 38, 8),
    ] {
        for cut in 14..=frame.len() {
            let reason = if cut < l3 {
                Reason::TruncatedL2
            } else if cut < l4 {
                Reason::TruncatedL3
            } else if cut < l4 + l4_len {
                Reason::TruncatedL4
            } else {
                Reason::Uninspected
            };
            r.check(&Row {
                name: format!("cut at {cut} of {}", frame.len()),
                link: LinkType::Ethernet,
                frame: frame[..cut].to_vec(),
                verdict: Verdict::Pass,
                reason,
                device: Some("mac-dev"),
            });
            checked += 1;
        }
    }
    assert!(checked > 150, "checked {checked} truncations");
}

/// Raw-IP instances see frames from byte 0: cuts inside the IP header are TruncatedL3.
#[test]
fn raw_ip_truncations() {
    let mut r = Runners::new();
    let f = frames::build(L2::RawIp, v4(2), L4::Udp { sport: 1, dport: 2 }, b"x");
    for cut in 14..f.len() {
        let reason = if cut < 20 {
            Reason::TruncatedL3
        } else if cut < 28 {
            Reason::TruncatedL4
        } else {
            Reason::Uninspected
        };
        // Below 20 bytes the source address is not readable: the device is unknown.
        let device = if cut < 20 { None } else { Some("ip-dev") };
        r.check(&raw(
            &format!("raw cut at {cut}"),
            LinkType::RawIp,
            f[..cut].to_vec(),
            Verdict::Pass,
            reason,
            device,
        ));
    }
}

/// A configuration change takes effect for the next frame, in both directions.
/// `CONFIG` with the MAC-identified device suspended.
fn mac_dev_suspended() -> String {
    let text = CONFIG.replace(
        "name = \"mac-dev\"\nmac = \"02:00:00:00:00:01\"\npolicy = \"students\"",
        "name = \"mac-dev\"\nmac = \"02:00:00:00:00:01\"\npolicy = \"students\"\nsuspended = true",
    );
    assert_ne!(text, CONFIG);
    text
}

#[test]
fn reconfiguration_switches_generations() {
    let mut r = Runners::new();
    let frame = frames::sized(eth(MAC_DEV), v4(77), UDP, 64);
    let before = r.eth.run(&frame).expect("run");
    assert_eq!(
        (before.verdict, before.reason),
        (Verdict::Pass, Reason::Uninspected)
    );
    let generation = r.eth.applied.generation;
    let suspended = mac_dev_suspended();
    r.eth.reconfigure(&config(&suspended)).expect("reconfigure");
    assert_ne!(
        r.eth.applied.generation, generation,
        "a new generation is active"
    );
    let after = r.eth.run(&frame).expect("run");
    assert_eq!(
        (after.verdict, after.reason),
        (Verdict::Drop, Reason::Suspended)
    );
    assert_eq!(
        after.slot, before.slot,
        "the device keeps its slot and counters"
    );
    r.eth.reconfigure(&config(CONFIG)).expect("reconfigure");
    let back = r.eth.run(&frame).expect("run");
    assert_eq!(
        (back.verdict, back.reason),
        (Verdict::Pass, Reason::Uninspected)
    );
}

/// Uninspected passes are not counted by reason in the kernel but derived from the per-device
/// counters; a device slot zeroed for another device must not take its frames out of them.
#[test]
fn uninspected_passes_survive_slot_reuse() {
    require_root();
    let mut r = Runners::new();
    let uninspected = stats_index(Reason::Uninspected, Verdict::Pass);
    let reported = |r: &TestRunner| {
        let all = gateway_user::stats::reason_counters(&r.maps).expect("counters");
        let c = all.get(&uninspected).copied().unwrap_or_default();
        (c.packets, c.bytes)
    };
    let frame = frames::sized(eth(MAC_DEV), v4(77), UDP, 64);
    let slot = r.eth.run(&frame).expect("run").slot;
    for _ in 0..4 {
        r.eth.run(&frame).expect("run");
    }
    // One frame of another reason: counted by reason, not derived as uninspected.
    let arp_out = r.eth.run(&arp(MAC_DEV)).expect("run");
    assert_ne!(arp_out.reason, Reason::Uninspected);
    assert_eq!(reported(&r.eth), (5, 5 * 64));
    assert_eq!(
        sum(&r.eth.maps.stats.get(&uninspected, 0).expect("stats")).packets,
        0,
        "the kernel leaves the uninspected entry alone"
    );

    // The device leaves; a newcomer gets its slot, zeroed.
    let without = CONFIG.replace(
        "[[device]]\nname = \"mac-dev\"\nmac = \"02:00:00:00:00:01\"\npolicy = \"students\"\n",
        "",
    );
    assert_ne!(without, CONFIG);
    r.eth
        .reconfigure(&config(&without))
        .expect("without the device");
    let with_new = format!(
        "{without}\n[[device]]\nname = \"newcomer\"\nmac = \"02:00:00:00:00:42\"\npolicy = \"students\"\n"
    );
    r.eth
        .reconfigure(&config(&with_new))
        .expect("with the newcomer");
    let newcomer = frames::sized(eth([0x02, 0, 0, 0, 0, 0x42]), v4(78), UDP, 80);
    let out = r.eth.run(&newcomer).expect("run");
    assert_eq!(out.slot, slot, "the newcomer took the freed slot");
    let t = sum(&r.eth.maps.device_traffic.get(&slot, 0).expect("traffic"));
    assert_eq!((t.packets, t.bytes), (1, 80), "the slot started from zero");
    assert_eq!(
        reported(&r.eth),
        (6, 5 * 64 + 80),
        "the old device's frames are still counted"
    );
}

#[test]
fn tagged_frames_are_built_as_intended() {
    // Guards the builders the rows rely on: outer 802.1ad, inner 802.1Q.
    let f = frames::sized(
        L2::DoubleVlan {
            src: MAC_DEV,
            dst: GW_MAC,
            outer: 100,
            inner: 10,
        },
        v4(77),
        UDP,
        64,
    );
    assert_eq!(u16::from_be_bytes([f[12], f[13]]), ETH_P_8021AD);
    assert_eq!(u16::from_be_bytes([f[16], f[17]]), ETH_P_8021Q);
    assert_eq!(u16::from_be_bytes([f[20], f[21]]), ETH_P_IP);
}

/// A bpffs directory of this test's own, removed with what was pinned in it.
struct PinDir(std::path::PathBuf);

impl PinDir {
    fn new(what: &str) -> Self {
        let dir = std::path::PathBuf::from("/sys/fs/bpf")
            .join(format!("gateway-fixture-{what}-{}", std::process::id()));
        gateway_user::sys::ensure_bpffs(&dir).expect("bpffs");
        Self(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A second load of the filter on the pinned maps (a daemon restarting) leaves the control
/// record — the active generation and its settings, which the running filter reads on every
/// frame — as it was: loading writes the control global's section into its pinned map.
#[test]
fn loading_again_keeps_the_pinned_control_record() {
    require_root();
    let pins = PinDir::new("control");
    let suspended = config(&mac_dev_suspended());
    // Applied once: generation 1 is active, so a zeroed record would differ.
    let mut first =
        TestRunner::pinned(&suspended, LinkType::Ethernet, &pins.0).expect("first load");
    let frame = frames::sized(eth(MAC_DEV), v4(77), UDP, 64);
    let judged = |r: &mut TestRunner| {
        let out = r.run(&frame).expect("run");
        (out.verdict, out.reason)
    };
    assert_eq!(judged(&mut first), (Verdict::Drop, Reason::Suspended));
    let control = first.maps.control().expect("control");
    assert_ne!(control.active, 0, "the test needs generation 1 active");

    // The daemon's restart: load on the same pins, before it applies anything.
    let second = gateway_user::testrun::load_filter(
        &suspended,
        LinkType::Ethernet,
        true,
        Some(pins.0.clone()),
    )
    .expect("second load");
    assert_eq!(
        first.maps.control().expect("control"),
        control,
        "the control record is as it was"
    );
    assert_eq!(
        judged(&mut first),
        (Verdict::Drop, Reason::Suspended),
        "the running filter still judges with its generation"
    );
    drop(second);
}
