//! Tier 2 for DNS: queries built with hickory-proto go through the real kernel program
//! (BPF_PROG_TEST_RUN); every answer the kernel builds is parsed back with hickory-proto and
//! checked field by field, with its IPv4, UDP and IPv6 checksums verified by etherparse.
//! Needs root.

#[path = "../common/mod.rs"]
mod common;
mod lists;
mod reloads;
mod safe_search;

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{NetSlice, SlicedPacket, TransportSlice, UdpHeader};
use gateway_common::{
    enums::{Action, LinkType, Reason, Verdict},
    maps::{DECISION_CACHE_SLOTS, DecisionKey, DecisionSlot},
};
use gateway_user::{
    config::Config,
    observe::history::{Names, Naming},
    offline::{
        frames::{self, L2, L3, L4},
        testrun::{RunResult, SharedRunner, TestRunner},
    },
};
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};

const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 1, n]
}

const CONFIG: &str = r#"
[[category]]
name = "ads"
domains = ["ads.example", "tracker.example"]

[[category]]
name = "social"
domains = ["social.example"]

[[policy]]
name = "students"
block_categories = ["ads", "social", "dns-bypass"]
allow = ["ok.ads.example"]
block = ["games.example", "deep.allowed.example"]
https_records = "empty"

[[policy]]
name = "sinkhole"
block_categories = ["ads"]
dns_block_answer = "sinkhole"
sinkhole_ipv4 = "10.9.9.9"
sinkhole_ipv6 = "fd00::99"
block_ttl = 60

[[policy]]
name = "refuse"
block_categories = ["ads"]
dns_block_answer = "refused"

[[policy]]
name = "dropper"
block_categories = ["ads"]
dns_block_answer = "drop"
on_parse_error = "block"

[[policy]]
name = "kiosk"
default = "block"
allow = ["school.example"]

[[policy]]
name = "watch"
block_categories = ["ads"]
mode = "monitor"

[[device]]
name = "student"
mac = "02:00:00:00:01:01"
ip = "10.0.0.1"
policy = "students"

[[device]]
name = "sink"
mac = "02:00:00:00:01:02"
policy = "sinkhole"

[[device]]
name = "refuser"
mac = "02:00:00:00:01:03"
policy = "refuse"

[[device]]
name = "dropper"
mac = "02:00:00:00:01:04"
policy = "dropper"

[[device]]
name = "kiosk"
mac = "02:00:00:00:01:05"
policy = "kiosk"

[[device]]
name = "watched"
mac = "02:00:00:00:01:06"
policy = "watch"
"#;

fn runners() -> (SharedRunner, SharedRunner) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root (cargo xtask test)"
    );
    let config = Config::parse(CONFIG, std::path::Path::new("dns.toml")).expect("config");
    (
        TestRunner::shared(&config, LinkType::Ethernet).expect("ethernet"),
        TestRunner::shared(&config, LinkType::RawIp).expect("raw ip"),
    )
}

fn query(id: u16, name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
    }
    m.to_vec().expect("encode")
}

const V4: L3 = L3::V4 {
    src: [10, 0, 0, 1],
    dst: [10, 0, 0, 53],
};

fn v6() -> L3 {
    let mut src = [0u8; 16];
    src[0] = 0xfd;
    src[15] = 1;
    let mut dst = [0u8; 16];
    dst[0] = 0xfd;
    dst[15] = 0x53;
    L3::V6 { src, dst }
}

fn dns_frame(l2: L2, l3: L3, payload: &[u8]) -> Vec<u8> {
    frames::build(
        l2,
        l3,
        L4::Udp {
            sport: 40123,
            dport: 53,
        },
        payload,
    )
}

/// Checks an answer frame against its query frame; returns the parsed DNS response.
fn check_answer(query_frame: &[u8], r: &RunResult, link: LinkType) -> Message {
    assert_eq!(r.verdict, Verdict::Tx, "answered in the kernel");
    fn parse(f: &[u8], link: LinkType) -> SlicedPacket<'_> {
        match link {
            LinkType::Ethernet => SlicedPacket::from_ethernet(f).expect("parses"),
            LinkType::RawIp => SlicedPacket::from_ip(f).expect("parses"),
        }
    }
    let q = parse(query_frame, link);
    let a = parse(&r.output, link);
    if link == LinkType::Ethernet {
        let (qe, ae) = match (&q.link, &a.link) {
            (
                Some(etherparse::LinkSlice::Ethernet2(q)),
                Some(etherparse::LinkSlice::Ethernet2(a)),
            ) => (q, a),
            _ => panic!("no Ethernet header"),
        };
        assert_eq!(
            (ae.source(), ae.destination()),
            (qe.destination(), qe.source()),
            "MACs swapped"
        );
    }
    let (qu, au) = match (&q.transport, &a.transport) {
        (Some(TransportSlice::Udp(q)), Some(TransportSlice::Udp(a))) => (q.clone(), a.clone()),
        _ => panic!("no UDP"),
    };
    assert_eq!(
        (au.source_port(), au.destination_port()),
        (qu.destination_port(), qu.source_port()),
        "ports swapped"
    );
    assert_eq!(au.length() as usize, 8 + au.payload().len(), "UDP length");
    match (&q.net, &a.net) {
        (Some(NetSlice::Ipv4(q)), Some(NetSlice::Ipv4(a))) => {
            let (qh, ah) = (q.header(), a.header());
            assert_eq!(
                (ah.source(), ah.destination()),
                (qh.destination(), qh.source()),
                "addresses swapped"
            );
            let h = ah.to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "IPv4 header checksum"
            );
            assert_eq!(
                h.total_len as usize,
                h.header_len() + au.length() as usize,
                "IPv4 total length"
            );
            let udp = UdpHeader::from_slice(au.slice()).expect("udp").0;
            assert_eq!(
                udp.checksum,
                udp.calc_checksum_ipv4(&h, au.payload()).expect("sum"),
                "UDP checksum (IPv4)"
            );
        }
        (Some(NetSlice::Ipv6(q)), Some(NetSlice::Ipv6(a))) => {
            let (qh, ah) = (q.header(), a.header());
            assert_eq!(
                (ah.source(), ah.destination()),
                (qh.destination(), qh.source()),
                "addresses swapped"
            );
            let h = ah.to_header();
            assert_eq!(
                h.payload_length as usize,
                8 + au.payload().len(),
                "IPv6 payload length"
            );
            let udp = UdpHeader::from_slice(au.slice()).expect("udp").0;
            assert_eq!(
                udp.checksum,
                udp.calc_checksum_ipv6(&h, au.payload()).expect("sum"),
                "UDP checksum (IPv6)"
            );
        }
        _ => panic!("IP version changed"),
    }
    let qm = Message::from_vec(qu.payload()).expect("query parses");
    let am = Message::from_vec(au.payload()).expect("answer parses");
    assert_eq!(am.metadata.id, qm.metadata.id, "id kept");
    assert_eq!(am.metadata.message_type, MessageType::Response);
    assert_eq!(am.metadata.op_code, OpCode::Query);
    assert!(am.metadata.recursion_available, "RA set");
    assert_eq!(
        am.metadata.recursion_desired, qm.metadata.recursion_desired,
        "RD copied"
    );
    assert_eq!(am.queries, qm.queries, "question kept");
    assert_eq!(
        am.edns.is_some(),
        qm.edns.is_some(),
        "OPT iff the query had one"
    );
    am
}

#[test]
fn answers_for_every_block_kind_on_every_link() {
    let (mut eth, mut raw) = runners();
    for (l2, l3, link) in [
        (
            L2::Ethernet {
                src: mac(1),
                dst: GW_MAC,
            },
            V4,
            LinkType::Ethernet,
        ),
        (
            L2::Ethernet {
                src: mac(1),
                dst: GW_MAC,
            },
            v6(),
            LinkType::Ethernet,
        ),
        (
            L2::Vlan {
                src: mac(1),
                dst: GW_MAC,
                vid: 7,
            },
            V4,
            LinkType::Ethernet,
        ),
        (
            L2::DoubleVlan {
                src: mac(1),
                dst: GW_MAC,
                outer: 100,
                inner: 7,
            },
            v6(),
            LinkType::Ethernet,
        ),
        (L2::RawIp, V4, LinkType::RawIp),
    ] {
        let runner = if link == LinkType::RawIp {
            &mut raw
        } else {
            &mut eth
        };
        // Questions of odd and even length: the answer's checksum is summed from the question
        // and the records written after it, which start mid-word after an odd one.
        for (edns, name) in [
            (false, "x.ads.example."),
            (true, "x.ads.example."),
            (false, "xy.ads.example."),
            (true, "xy.ads.example."),
        ] {
            // NXDOMAIN (the student, by category).
            let f = dns_frame(l2, l3, &query(0x1234, name, RecordType::A, edns));
            let r = runner.run(&f).expect("run");
            assert_eq!(
                (r.reason, r.action),
                (Reason::Category, Some(Action::Block)),
                "{l2:?} {l3:?}"
            );
            let m = check_answer(&f, &r, link);
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
            assert!(m.answers.is_empty());
        }
    }

    // The other answers need other devices: Ethernet, by MAC.
    let e = |n: u8| L2::Ethernet {
        src: mac(n),
        dst: GW_MAC,
    };
    for l3 in [V4, v6()] {
        // Sinkhole A and AAAA with the configured addresses and TTL (questions of odd and even
        // length, with and without OPT); other types get NOERROR.
        for (name, edns) in [("ads.example.", true), ("ww.ads.example.", false)] {
            let f = dns_frame(e(2), l3, &query(7, name, RecordType::A, edns));
            let m = check_answer(&f, &eth.run(&f).expect("run"), LinkType::Ethernet);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert_eq!(m.answers.len(), 1);
            assert_eq!(m.answers[0].ttl, 60);
            assert_eq!(m.answers[0].name, Name::from_ascii(name).expect("name"));
            assert_eq!(
                m.answers[0].data,
                RData::A(Ipv4Addr::new(10, 9, 9, 9).into())
            );
        }
        for (name, edns) in [("Tracker.Example.", false), ("ww.Tracker.Example.", true)] {
            let f = dns_frame(e(2), l3, &query(8, name, RecordType::AAAA, edns));
            let m = check_answer(&f, &eth.run(&f).expect("run"), LinkType::Ethernet);
            assert_eq!(
                m.answers[0].data,
                RData::AAAA("fd00::99".parse::<Ipv6Addr>().expect("v6").into())
            );
        }
        let f = dns_frame(e(2), l3, &query(9, "ads.example.", RecordType::MX, false));
        let m = check_answer(&f, &eth.run(&f).expect("run"), LinkType::Ethernet);
        assert_eq!(
            (m.metadata.response_code, m.answers.len()),
            (ResponseCode::NoError, 0)
        );

        // REFUSED.
        let f = dns_frame(e(3), l3, &query(10, "ads.example.", RecordType::A, false));
        let m = check_answer(&f, &eth.run(&f).expect("run"), LinkType::Ethernet);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);

        // Drop: no answer, the query goes nowhere.
        let f = dns_frame(e(4), l3, &query(11, "ads.example.", RecordType::A, false));
        let r = eth.run(&f).expect("run");
        assert_eq!(
            (r.verdict, r.reason, r.action),
            (Verdict::Drop, Reason::Category, Some(Action::Block))
        );

        // HTTPS/SVCB of an allowed name: empty NOERROR (the student's policy).
        for (qtype, name) in [
            (RecordType::HTTPS, "www.allowed.example."),
            (RecordType::SVCB, "www.allowed.example."),
            (RecordType::HTTPS, "ww.allowed.example."),
        ] {
            let f = dns_frame(e(1), l3, &query(12, name, qtype, true));
            let r = eth.run(&f).expect("run");
            assert_eq!(r.reason, Reason::HttpsRecords);
            let m = check_answer(&f, &r, LinkType::Ethernet);
            assert_eq!(
                (m.metadata.response_code, m.answers.len()),
                (ResponseCode::NoError, 0)
            );
        }
    }
}

/// The question is copied to scratch in whole words, the last one overlapping the one before,
/// and the answer's checksum is summed from that copy: every question length, with and without
/// OPT, on a sinkhole answer (device 2) and NXDOMAIN (device 1), parsed back with its checksums.
#[test]
fn answers_for_every_question_length() {
    let (mut eth, _) = runners();
    for len in 1..=48 {
        let name = format!("{}.ads.example.", "q".repeat(len));
        for edns in [false, true] {
            for (device, sinkhole) in [(1, false), (2, true)] {
                let f = dns_frame(
                    L2::Ethernet {
                        src: mac(device),
                        dst: GW_MAC,
                    },
                    V4,
                    &query(0x4242, &name, RecordType::A, edns),
                );
                let r = eth.run(&f).expect("run");
                assert_eq!(
                    (r.reason, r.action),
                    (Reason::Category, Some(Action::Block)),
                    "{name} edns {edns}"
                );
                let m = check_answer(&f, &r, LinkType::Ethernet);
                assert_eq!(m.answers.len(), usize::from(sinkhole), "{name} edns {edns}");
            }
        }
    }
}

/// §5 through the kernel: most specific rule wins; explicit allow > explicit block > category;
/// otherwise the policy's default. Each row: name, device, expected (verdict, reason, action).
#[test]
fn matching_semantics_in_the_kernel() {
    let (mut eth, _) = runners();
    eth.maps.drain_events();
    use Action::*;
    use Reason::*;
    use Verdict::*;
    let rows: &[(&str, u8, Verdict, Reason, Action)] = &[
        ("ads.example.", 1, Tx, Category, Block),
        ("deep.sub.ads.example.", 1, Tx, Category, Block),
        ("ADS.EXAMPLE.", 1, Tx, Category, Block),
        ("aDs.ExAmPlE.", 1, Tx, Category, Block),
        ("notads.example.", 1, Pass, Default, Allow),
        ("ads.example.org.", 1, Pass, Default, Allow),
        ("example.", 1, Pass, Default, Allow),
        ("ok.ads.example.", 1, Pass, Explicit, Allow),
        ("www.ok.ads.example.", 1, Pass, Explicit, Allow),
        ("games.example.", 1, Tx, Explicit, Block),
        ("www.games.example.", 1, Tx, Explicit, Block),
        ("deep.allowed.example.", 1, Tx, Explicit, Block),
        ("allowed.example.", 1, Pass, Default, Allow),
        ("social.example.", 1, Tx, Category, Block),
        ("dns.google.", 1, Tx, Category, Block),
        ("mozilla.cloudflare-dns.com.", 1, Tx, Category, Block),
        ("social.example.", 2, Pass, Default, Allow),
        ("school.example.", 5, Pass, Explicit, Allow),
        ("www.school.example.", 5, Pass, Explicit, Allow),
        ("anything.else.", 5, Tx, Default, Block),
        ("ads.example.", 6, Pass, Category, Monitor),
    ];
    for (name, dev, verdict, reason, action) in rows {
        let f = dns_frame(
            L2::Ethernet {
                src: mac(*dev),
                dst: GW_MAC,
            },
            V4,
            &query(1, name, RecordType::A, false),
        );
        let r = eth.run(&f).expect("run");
        assert_eq!(
            (r.verdict, r.reason, r.action),
            (*verdict, *reason, Some(*action)),
            "{name} from device {dev}"
        );
        assert_eq!(
            eth.device_name(r.slot),
            [
                "", "student", "sink", "refuser", "dropper", "kiosk", "watched"
            ][*dev as usize]
        );
    }
    // Longest names and labels (63 / 253 characters) are judged, not rejected.
    let l63 = "a".repeat(63);
    let long = format!("{l63}.{l63}.{l63}.{}.ads.example.", "b".repeat(49));
    assert_eq!(long.len() - 1, 253);
    let f = dns_frame(
        L2::Ethernet {
            src: mac(1),
            dst: GW_MAC,
        },
        V4,
        &query(1, &long, RecordType::A, false),
    );
    let r = eth.run(&f).expect("run");
    assert_eq!((r.reason, r.verdict), (Reason::Category, Verdict::Tx));
}

fn raw_query(flags: [u8; 2], qdcount: u16, name: &[u8]) -> Vec<u8> {
    let mut m = vec![0xab, 0xcd, flags[0], flags[1]];
    m.extend_from_slice(&qdcount.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(name);
    m.extend_from_slice(&[0, 1, 0, 1]);
    m
}

/// Malformed queries are passed unjudged (or dropped with `on_parse_error = "block"`), counted
/// by reason; never aborted, never answered.
#[test]
fn malformed_queries() {
    let (mut eth, _) = runners();
    let long_label = [&[64u8][..], &[b'a'; 64], &[0]].concat();
    let mut too_long = Vec::new();
    for _ in 0..5 {
        too_long.push(60u8);
        too_long.extend_from_slice(&[b'a'; 60]);
    }
    too_long.push(0);
    let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
        (
            "compression pointer",
            raw_query([1, 0], 1, &[0xc0, 0x0c]),
            Reason::DnsCompression,
        ),
        (
            "label of 64",
            raw_query([1, 0], 1, &long_label),
            Reason::DnsLabelTooLong,
        ),
        (
            "name over 255",
            raw_query([1, 0], 1, &too_long),
            Reason::DnsNameTooLong,
        ),
        (
            "two questions",
            raw_query([1, 0], 2, b"\x03ads\x07example\x00"),
            Reason::DnsQdcount,
        ),
        ("no question", raw_query([1, 0], 0, b""), Reason::DnsQdcount),
        (
            "a response",
            raw_query([0x81, 0x80], 1, b"\x03ads\x07example\x00"),
            Reason::DnsNotQuery,
        ),
        (
            "opcode STATUS",
            raw_query([0x10, 0], 1, b"\x03ads\x07example\x00"),
            Reason::DnsNotQuery,
        ),
        (
            "root name",
            raw_query([1, 0], 1, b"\x00"),
            Reason::DnsEmptyName,
        ),
        (
            "space in a label",
            raw_query([1, 0], 1, b"\x03a b\x07example\x00"),
            Reason::DnsBadChar,
        ),
        (
            "truncated header",
            vec![0xab, 0xcd, 1, 0, 0],
            Reason::DnsTruncated,
        ),
        (
            "truncated name",
            raw_query([1, 0], 1, b"\x03ads\x07exa")[..20].to_vec(),
            Reason::DnsTruncated,
        ),
        (
            "no qtype",
            raw_query([1, 0], 1, b"\x03ads\x07example\x00")[..25].to_vec(),
            Reason::DnsTruncated,
        ),
    ];
    for (what, payload, reason) in &cases {
        for (dev, verdict, action) in [
            (1, Verdict::Pass, Action::Allow),
            (4, Verdict::Drop, Action::Block),
        ] {
            let f = dns_frame(
                L2::Ethernet {
                    src: mac(dev),
                    dst: GW_MAC,
                },
                V4,
                payload,
            );
            let r = eth.run(&f).expect("never aborted");
            assert!(reason.is_dns_parse_error());
            assert_eq!(
                (r.verdict, r.reason, r.action),
                (verdict, *reason, Some(action)),
                "{what} from device {dev}"
            );
        }
    }
}

fn tcp_dns_frame(
    l2: L2,
    l3: L3,
    seq: u32,
    ack: u32,
    message: &[u8],
    declared: Option<u16>,
) -> Vec<u8> {
    let mut payload = declared
        .unwrap_or(message.len() as u16)
        .to_be_bytes()
        .to_vec();
    payload.extend_from_slice(message);
    frames::build(
        l2,
        l3,
        L4::Tcp {
            sport: 40999,
            dport: 53,
            seq,
            flags: frames::TcpFlags {
                ack: Some(ack),
                psh: true,
                ..Default::default()
            },
        },
        &payload,
    )
}

/// DNS over TCP: a blocked query in one segment is answered with a reset built in the kernel
/// (RST|ACK, the sequence number the client expects, its data acknowledged, valid checksums);
/// an allowed one passes; one split over segments is left to `on_parse_error`.
#[test]
fn dns_over_tcp() {
    let (mut eth, mut raw) = runners();
    let msg = query(0x4242, "www.ads.example.", RecordType::A, false);
    for (l2, l3, link) in [
        (
            L2::Ethernet {
                src: mac(1),
                dst: GW_MAC,
            },
            V4,
            LinkType::Ethernet,
        ),
        (
            L2::Vlan {
                src: mac(1),
                dst: GW_MAC,
                vid: 3,
            },
            v6(),
            LinkType::Ethernet,
        ),
        (L2::RawIp, V4, LinkType::RawIp),
    ] {
        let runner = if link == LinkType::RawIp {
            &mut raw
        } else {
            &mut eth
        };
        let (seq, ack) = (1_000_000u32, 777_777u32);
        let f = tcp_dns_frame(l2, l3, seq, ack, &msg, None);
        let r = runner.run(&f).expect("run");
        assert_eq!(
            (r.verdict, r.reason, r.action),
            (Verdict::Tx, Reason::Category, Some(Action::Block)),
            "{l2:?}"
        );
        common::assert_reset(&f, &r.output, link, seq, ack);
    }
    let e = L2::Ethernet {
        src: mac(1),
        dst: GW_MAC,
    };
    // The flow is blocked now: its later segments are dropped, whatever they carry.
    let allowed = query(1, "allowed.example.", RecordType::A, false);
    let f = tcp_dns_frame(e, V4, 1_000_000 + 2 + msg.len() as u32, 1, &allowed, None);
    let r = eth.run(&f).expect("run");
    assert_eq!((r.verdict, r.reason), (Verdict::Drop, Reason::FlowBlocked));
    // A SYN on the same ports starts a new connection, and a new stream: passed uninspected.
    let syn = |seq: u32| {
        frames::build(
            e,
            V4,
            L4::Tcp {
                sport: 40999,
                dport: 53,
                seq,
                flags: frames::TcpFlags {
                    syn: true,
                    ..Default::default()
                },
            },
            &[],
        )
    };
    assert_eq!(eth.run(&syn(0)).expect("run").reason, Reason::Uninspected);
    // Allowed over TCP: passed.
    let r = eth
        .run(&tcp_dns_frame(e, V4, 1, 1, &allowed, None))
        .expect("run");
    assert_eq!(
        (r.verdict, r.reason, r.action),
        (Verdict::Pass, Reason::Default, Some(Action::Allow))
    );
    // A message longer than this segment: its start is kept, and it is judged once whole (the
    // evasion suite cuts streams every way: gateway-user/tests/evasion.rs).
    eth.run(&syn(100)).expect("run");
    let f = tcp_dns_frame(e, V4, 101, 1, &msg, Some(msg.len() as u16 + 40));
    let r = eth.run(&f).expect("run");
    assert_eq!(
        (r.verdict, r.reason),
        (Verdict::Pass, Reason::DnsTcpPending)
    );
}
