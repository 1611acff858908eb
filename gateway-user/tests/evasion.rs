//! The evasion suite: each row a way around the filter a user may try, the frames it sends,
//! and the verdict and reason the kernel program (BPF_PROG_TEST_RUN) must give each frame under
//! the default policy and under a strict one. Both policies block `blocked.example`; the strict
//! one also blocks the built-in `dns-bypass` category (DoH names, DoT and DoQ ports), malformed
//! queries, unparsed ClientHellos and HTTP requests, and QUIC, allows plain DNS only to
//! 192.0.2.53, and has Google SafeSearch (no enforcement address known here). Needs root.
//! (The stream rows again with real sockets: tests/evasion.rs.)

use gateway_common::enums::{Action, LinkType, Reason, Verdict};
use gateway_user::{
    config::Config,
    offline::{
        frames::{self, L2, L3, L4, TcpFlags, client_hello, dns_query},
        testrun::{RunResult, SharedRunner, TestRunner},
    },
};

const CONFIG: &str = r#"
[gateway]
unknown_devices = "defaults"

[[policy]]
name = "defaults"
block = ["blocked.example"]

[[policy]]
name = "strict"
block = ["blocked.example"]
block_categories = ["dns-bypass"]
on_parse_error = "block"
on_unparsed_tls = "block"
on_unparsed_http = "block"
quic = "block"
dns_resolvers = ["192.0.2.53", "fd00::53"]
safe_search = ["google"]

[[device]]
name = "kid"
mac = "02:00:00:00:00:01"
policy = "defaults"

[[device]]
name = "pupil"
mac = "02:00:00:00:00:02"
policy = "strict"
"#;

const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
/// The resolver the strict policy allows, another one, and a TLS server.
const RESOLVER: [u8; 4] = [192, 0, 2, 53];
const OTHER_RESOLVER: [u8; 4] = [198, 51, 100, 53];
const SERVER: [u8; 4] = [192, 0, 2, 10];
const BLOCKED: &str = "alpha.blocked.example";

/// A device of the bed: its MAC's last byte (and address 10.0.0.x).
#[derive(Clone, Copy)]
struct Dev(u8);

impl Dev {
    fn l2(self) -> L2 {
        L2::Ethernet {
            src: [0x02, 0, 0, 0, 0, self.0],
            dst: GW_MAC,
        }
    }
    fn l3(self, dst: [u8; 4]) -> L3 {
        L3::V4 {
            src: [10, 0, 0, self.0],
            dst,
        }
    }
    fn udp(self, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
        frames::build(
            self.l2(),
            self.l3(dst),
            L4::Udp {
                sport: 33000,
                dport,
            },
            payload,
        )
    }
    fn tcp(self, dst: [u8; 4], sport: u16, dport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        frames::build(
            self.l2(),
            self.l3(dst),
            L4::Tcp {
                sport,
                dport,
                seq,
                flags: TcpFlags {
                    ack: Some(7),
                    psh: true,
                    ..Default::default()
                },
            },
            payload,
        )
    }
    /// A SYN with sequence number `isn`: the first payload byte is `isn + 1`.
    fn syn(self, dst: [u8; 4], sport: u16, dport: u16, isn: u32) -> Vec<u8> {
        frames::build(
            self.l2(),
            self.l3(dst),
            L4::Tcp {
                sport,
                dport,
                seq: isn,
                flags: TcpFlags {
                    syn: true,
                    ..Default::default()
                },
            },
            &[],
        )
    }
}

/// A DNS message with its 2-byte TCP length in front.
fn framed(q: &[u8]) -> Vec<u8> {
    let mut v = (q.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(q);
    v
}

/// IPv4 header checksum of the header at `frame[14..34]`, set in place.
fn fix_ipv4_checksum(frame: &mut [u8]) {
    frame[24] = 0;
    frame[25] = 0;
    let sum: u32 = frame[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let c = !(((folded & 0xffff) + (folded >> 16)) as u16);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

/// `frame` (Ethernet, IPv4 without options) as the first fragment of its datagram, keeping
/// `keep` bytes of the IP payload (a multiple of 8).
fn first_fragment(mut frame: Vec<u8>, keep: usize) -> Vec<u8> {
    frame.truncate(34 + keep);
    frame[16..18].copy_from_slice(&((20 + keep) as u16).to_be_bytes());
    frame[20] = 0x20; // MF, offset 0
    frame[21] = 0;
    fix_ipv4_checksum(&mut frame);
    frame
}

/// An IPv6 frame to `dst` port 53 with the query for `name` behind a hop-by-hop and a
/// destination-options header.
fn v6_with_extensions(dev: Dev, name: &str) -> Vec<u8> {
    let mut f = frames::build(
        dev.l2(),
        L3::V6 {
            src: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, dev.0],
            dst: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x53],
        },
        L4::Udp {
            sport: 33000,
            dport: 53,
        },
        &dns_query(name),
    );
    // Next header: hop-by-hop (0), then destination options (60), then UDP (17); each 8 bytes
    // of PadN. The UDP checksum does not cover them.
    f[20] = 0;
    let plen = u16::from_be_bytes([f[18], f[19]]) + 16;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    let ext = [60, 0, 1, 4, 0, 0, 0, 0, 17, 0, 1, 4, 0, 0, 0, 0];
    f.splice(54..54, ext);
    f
}

/// A ClientHello for `sni` whose handshake message is split over two TLS records at `at`
/// handshake bytes.
fn hello_in_two_records(sni: &str, at: usize) -> Vec<u8> {
    let h = client_hello(sni, 0);
    let body = &h[5..];
    let mut out = Vec::new();
    for part in [&body[..at], &body[at..]] {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// A plain-HTTP GET for `/` of `host`, as curl sends it.
fn http_get(host: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n")
        .into_bytes()
}

/// A QUIC version 1 Initial's first bytes (long header, type 0), padded to 1,200 bytes.
fn quic_initial() -> Vec<u8> {
    let mut p = vec![0xc3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0];
    p.resize(1200, 0);
    p
}

/// What one frame must get.
type Expect = (Verdict, Reason);

const PASS: Expect = (Verdict::Pass, Reason::Uninspected);
const PENDING: Expect = (Verdict::Pass, Reason::DnsTcpPending);
const NXDOMAIN: Expect = (Verdict::Tx, Reason::Explicit);
const RESET: Expect = (Verdict::Tx, Reason::Explicit);
const ALLOWED: Expect = (Verdict::Pass, Reason::Default);
const OUT_OF_ORDER: Expect = (Verdict::Drop, Reason::TcpOutOfOrder);
const TINY: Expect = (Verdict::Drop, Reason::FragmentTooSmall);

/// A row: the technique, the frames it sends (for a device and a source port of its own), and
/// what each frame must get under the default and the strict policy.
struct Row {
    technique: &'static str,
    frames: fn(Dev, u16) -> Vec<Vec<u8>>,
    default: &'static [Expect],
    strict: &'static [Expect],
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            technique: "plain UDP query (the baseline)",
            frames: |d, _| vec![d.udp(RESOLVER, 53, &dns_query(BLOCKED))],
            default: &[NXDOMAIN],
            strict: &[NXDOMAIN],
        },
        Row {
            technique: "TCP: two queries pipelined in one segment (allowed, then blocked)",
            frames: |d, p| {
                let mut seg = framed(&dns_query("fine.example"));
                seg.extend(framed(&dns_query(BLOCKED)));
                vec![
                    d.syn(RESOLVER, p, 53, 99),
                    d.tcp(RESOLVER, p, 53, 100, &seg),
                ]
            },
            default: &[PASS, RESET],
            strict: &[PASS, RESET],
        },
        Row {
            technique: "TCP: one query split over two segments (7 bytes, then the rest)",
            frames: |d, p| {
                let m = framed(&dns_query(BLOCKED));
                vec![
                    d.syn(RESOLVER, p, 53, 99),
                    d.tcp(RESOLVER, p, 53, 100, &m[..7]),
                    d.tcp(RESOLVER, p, 53, 107, &m[7..]),
                ]
            },
            default: &[PASS, PENDING, RESET],
            strict: &[PASS, PENDING, RESET],
        },
        Row {
            technique: "TCP: the 2-byte length split, no SYN seen",
            frames: |d, p| {
                let m = framed(&dns_query(BLOCKED));
                vec![
                    d.tcp(RESOLVER, p, 53, 100, &m[..1]),
                    d.tcp(RESOLVER, p, 53, 101, &m[1..]),
                ]
            },
            default: &[PENDING, RESET],
            strict: &[PENDING, RESET],
        },
        Row {
            technique: "TCP: the query's second part sent first (out of order)",
            frames: |d, p| {
                let m = framed(&dns_query(BLOCKED));
                vec![
                    d.syn(RESOLVER, p, 53, 99),
                    d.tcp(RESOLVER, p, 53, 110, &m[10..]),
                    d.tcp(RESOLVER, p, 53, 100, &m[..10]),
                    d.tcp(RESOLVER, p, 53, 110, &m[10..]),
                ]
            },
            default: &[PASS, OUT_OF_ORDER, PENDING, RESET],
            strict: &[PASS, OUT_OF_ORDER, PENDING, RESET],
        },
        Row {
            technique: "TCP: an allowed decoy, then the blocked query at the same sequence number",
            frames: |d, p| {
                vec![
                    d.syn(RESOLVER, p, 53, 99),
                    d.tcp(RESOLVER, p, 53, 100, &framed(&dns_query("fine.example"))),
                    d.tcp(RESOLVER, p, 53, 100, &framed(&dns_query(BLOCKED))),
                ]
            },
            default: &[PASS, ALLOWED, RESET],
            strict: &[PASS, ALLOWED, RESET],
        },
        Row {
            technique: "TCP: the flow's later segments after a block",
            frames: |d, p| {
                let m = framed(&dns_query(BLOCKED));
                let n = 100 + m.len() as u32;
                vec![
                    d.tcp(RESOLVER, p, 53, 100, &m),
                    d.tcp(RESOLVER, p, 53, n, &framed(&dns_query("fine.example"))),
                ]
            },
            default: &[RESET, (Verdict::Drop, Reason::FlowBlocked)],
            strict: &[RESET, (Verdict::Drop, Reason::FlowBlocked)],
        },
        Row {
            technique: "TCP: more queries in one segment than a frame may judge",
            frames: |d, p| {
                let seg: Vec<u8> = (0..20)
                    .flat_map(|_| framed(&dns_query("fine.example")))
                    .collect();
                vec![d.tcp(RESOLVER, p, 53, 100, &seg)]
            },
            default: &[(Verdict::Tx, Reason::DnsTcpTooMany)],
            strict: &[(Verdict::Tx, Reason::DnsTcpTooMany)],
        },
        Row {
            technique: "plain HTTP by address, the blocked name in Host",
            frames: |d, p| vec![d.tcp(SERVER, p, 80, 100, &http_get(BLOCKED))],
            default: &[RESET],
            strict: &[RESET],
        },
        Row {
            technique: "HTTP: empty lines before the request line (servers skip them)",
            frames: |d, p| {
                let mut r = b"\r\n\r\n".to_vec();
                r.extend(http_get(BLOCKED));
                vec![d.tcp(SERVER, p, 80, 100, &r)]
            },
            default: &[RESET],
            strict: &[RESET],
        },
        Row {
            technique: "HTTP: proxy style, the blocked host in the URI and an allowed Host",
            frames: |d, p| {
                let r = format!("GET http://{BLOCKED}/ HTTP/1.1\r\nHost: fine.example\r\n\r\n");
                vec![d.tcp(SERVER, p, 80, 100, r.as_bytes())]
            },
            default: &[RESET],
            strict: &[RESET],
        },
        Row {
            technique: "HTTP: an allowed request, then the blocked one in the same segment",
            frames: |d, p| {
                let mut r = http_get("fine.example");
                r.extend(http_get(BLOCKED));
                vec![d.tcp(SERVER, p, 80, 100, &r)]
            },
            default: &[RESET],
            strict: &[RESET],
        },
        Row {
            technique: "HTTP: the Host line split over two segments",
            frames: |d, p| {
                let r = http_get(BLOCKED);
                let cut = 20;
                vec![
                    d.tcp(SERVER, p, 80, 100, &r[..cut]),
                    d.tcp(SERVER, p, 80, 100 + cut as u32, &r[cut..]),
                ]
            },
            default: &[(Verdict::Pass, Reason::HttpUnparsed), PASS],
            strict: &[
                (Verdict::Tx, Reason::HttpUnparsed),
                (Verdict::Drop, Reason::FlowBlocked),
            ],
        },
        Row {
            technique: "HTTP: two Host lines, the blocked one second",
            frames: |d, p| {
                let r = format!("GET / HTTP/1.1\r\nHost: fine.example\r\nHost: {BLOCKED}\r\n\r\n");
                vec![d.tcp(SERVER, p, 80, 100, r.as_bytes())]
            },
            default: &[(Verdict::Pass, Reason::HttpUnparsed)],
            strict: &[(Verdict::Tx, Reason::HttpUnparsed)],
        },
        Row {
            technique: "HTTP: another request on a connection that was blocked",
            frames: |d, p| {
                let r = http_get(BLOCKED);
                let n = 100 + r.len() as u32;
                vec![
                    d.tcp(SERVER, p, 80, 100, &r),
                    d.tcp(SERVER, p, 80, n, &http_get("fine.example")),
                ]
            },
            default: &[RESET, (Verdict::Drop, Reason::FlowBlocked)],
            strict: &[RESET, (Verdict::Drop, Reason::FlowBlocked)],
        },
        Row {
            technique: "SafeSearch: the covered name over TCP (no answer can be built there)",
            frames: |d, p| vec![d.tcp(RESOLVER, p, 53, 100, &framed(&dns_query("www.google.de")))],
            default: &[ALLOWED],
            strict: &[(Verdict::Tx, Reason::SafeSearch)],
        },
        Row {
            technique: "SafeSearch: the covered name before its enforcement address is known",
            frames: |d, _| vec![d.udp(RESOLVER, 53, &dns_query("WWW.Google.DE"))],
            default: &[ALLOWED],
            strict: &[(Verdict::Pass, Reason::SafeSearchUnresolved)],
        },
        Row {
            technique: "TLS disorder: the ClientHello's second part first",
            frames: |d, p| {
                let h = client_hello(BLOCKED, 3);
                let cut = 60;
                let second = 1001 + cut as u32;
                vec![
                    d.syn(SERVER, p, 443, 1000),
                    d.tcp(SERVER, p, 443, second, &h[cut..]),
                    d.tcp(SERVER, p, 443, 1001, &h[..cut]),
                    d.tcp(SERVER, p, 443, second, &h[cut..]),
                ]
            },
            default: &[
                PASS,
                OUT_OF_ORDER,
                (Verdict::Pass, Reason::TlsPending),
                RESET,
            ],
            strict: &[
                PASS,
                OUT_OF_ORDER,
                (Verdict::Pass, Reason::TlsPending),
                RESET,
            ],
        },
        Row {
            technique: "TLS: a connection reset before its hello keeps no state (not an evasion)",
            frames: |d, p| {
                let rst = frames::build(
                    d.l2(),
                    d.l3(SERVER),
                    L4::Tcp {
                        sport: p,
                        dport: 443,
                        seq: 1001,
                        flags: TcpFlags {
                            rst: true,
                            ..Default::default()
                        },
                    },
                    &[],
                );
                // Then data out of the SYN's order: with no state left, not looked at.
                vec![
                    d.syn(SERVER, p, 443, 1000),
                    rst,
                    d.tcp(SERVER, p, 443, 5000, b"\x17\x03\x03\x00\x01x"),
                ]
            },
            default: &[PASS, PASS, PASS],
            strict: &[PASS, PASS, PASS],
        },
        Row {
            technique: "TLS: the server name in a second TLS record",
            frames: |d, p| {
                // 60 handshake bytes: the record ends inside the session id, before the name.
                let h = hello_in_two_records(BLOCKED, 60);
                vec![d.tcp(SERVER, p, 443, 1, &h)]
            },
            default: &[RESET],
            strict: &[RESET],
        },
        Row {
            technique: "TLS: a fake ClientHello with a bad TCP checksum first",
            frames: |d, p| {
                let mut fake = d.tcp(SERVER, p, 443, 1, &client_hello("fine.example", 0));
                fake[50] ^= 0xff;
                vec![fake, d.tcp(SERVER, p, 443, 1, &client_hello(BLOCKED, 0))]
            },
            default: &[ALLOWED, RESET],
            strict: &[ALLOWED, RESET],
        },
        Row {
            technique: "TLS: a fake ClientHello with TTL 1 first",
            frames: |d, p| {
                let mut fake = d.tcp(SERVER, p, 443, 1, &client_hello("fine.example", 0));
                fake[22] = 1;
                fix_ipv4_checksum(&mut fake);
                vec![fake, d.tcp(SERVER, p, 443, 1, &client_hello(BLOCKED, 0))]
            },
            default: &[ALLOWED, RESET],
            strict: &[ALLOWED, RESET],
        },
        Row {
            technique: "TLS: the server name with a trailing dot",
            frames: |d, p| {
                vec![d.tcp(
                    SERVER,
                    p,
                    443,
                    1,
                    &client_hello("alpha.blocked.example.", 0),
                )]
            },
            default: &[RESET],
            strict: &[RESET],
        },
        Row {
            technique: "tiny first fragment: UDP DNS, 8 bytes of the message",
            frames: |d, _| vec![first_fragment(d.udp(RESOLVER, 53, &dns_query(BLOCKED)), 16)],
            default: &[TINY],
            strict: &[TINY],
        },
        Row {
            technique: "tiny first fragment: UDP DNS, ending inside the name",
            frames: |d, _| vec![first_fragment(d.udp(RESOLVER, 53, &dns_query(BLOCKED)), 32)],
            default: &[TINY],
            strict: &[TINY],
        },
        Row {
            technique: "tiny first fragment: QUIC, ending before the long header",
            frames: |d, _| vec![first_fragment(d.udp(SERVER, 443, &quic_initial()), 8)],
            default: &[TINY],
            strict: &[TINY],
        },
        Row {
            technique: "tiny first fragment: 8 bytes of the TCP header (the ports)",
            frames: |d, p| {
                let f = d.tcp(RESOLVER, p, 53, 1, &framed(&dns_query(BLOCKED)));
                vec![first_fragment(f, 8)]
            },
            default: &[TINY],
            strict: &[TINY],
        },
        Row {
            technique: "fragmented TCP segment to a TLS port",
            frames: |d, p| {
                let f = d.tcp(SERVER, p, 443, 1, &client_hello(BLOCKED, 0));
                vec![first_fragment(f, 24)]
            },
            default: &[TINY],
            strict: &[TINY],
        },
        Row {
            technique: "first fragment holding the whole question",
            frames: |d, _| {
                let mut q = dns_query(BLOCKED);
                q.resize(400, 0);
                vec![first_fragment(d.udp(RESOLVER, 53, &q), 200)]
            },
            default: &[(Verdict::Drop, Reason::Explicit)],
            strict: &[(Verdict::Drop, Reason::Explicit)],
        },
        Row {
            technique: "DNS over UDP to port 5353 (unicast)",
            frames: |d, _| vec![d.udp(RESOLVER, 5353, &dns_query(BLOCKED))],
            default: &[NXDOMAIN],
            strict: &[NXDOMAIN],
        },
        Row {
            technique: "DNS over UDP to port 8053",
            frames: |d, _| vec![d.udp(RESOLVER, 8053, &dns_query(BLOCKED))],
            default: &[NXDOMAIN],
            strict: &[NXDOMAIN],
        },
        Row {
            technique: "DNS to a resolver outside dns_resolvers (UDP)",
            frames: |d, _| vec![d.udp(OTHER_RESOLVER, 53, &dns_query("fine.example"))],
            default: &[ALLOWED],
            strict: &[(Verdict::Tx, Reason::DnsResolver)],
        },
        Row {
            technique: "DNS to a resolver outside dns_resolvers (TCP)",
            frames: |d, p| {
                vec![d.tcp(
                    OTHER_RESOLVER,
                    p,
                    53,
                    1,
                    &framed(&dns_query("fine.example")),
                )]
            },
            default: &[ALLOWED],
            strict: &[(Verdict::Tx, Reason::DnsResolver)],
        },
        Row {
            technique: "0x20 case",
            frames: |d, _| vec![d.udp(RESOLVER, 53, &dns_query("AlPhA.bLoCkEd.ExAmPlE"))],
            default: &[NXDOMAIN],
            strict: &[NXDOMAIN],
        },
        Row {
            technique: "0x20 case in the server name",
            frames: |d, p| {
                vec![d.tcp(SERVER, p, 443, 1, &client_hello("ALPHA.Blocked.Example", 0))]
            },
            default: &[RESET],
            strict: &[RESET],
        },
        Row {
            technique: "IPv6 hop-by-hop and destination options before the UDP header",
            frames: |d, _| vec![v6_with_extensions(d, BLOCKED)],
            default: &[NXDOMAIN],
            strict: &[NXDOMAIN],
        },
        Row {
            technique: "DNS over TLS (853/tcp)",
            frames: |d, p| vec![d.syn(RESOLVER, p, 853, 1)],
            default: &[PASS],
            strict: &[(Verdict::Drop, Reason::BlockedPort)],
        },
        Row {
            technique: "DNS over QUIC (853/udp)",
            frames: |d, _| vec![d.udp(RESOLVER, 853, &quic_initial())],
            default: &[PASS],
            strict: &[(Verdict::Drop, Reason::BlockedPort)],
        },
        Row {
            technique: "QUIC Initial to 443 (browsers fall back to TCP)",
            frames: |d, _| vec![d.udp(SERVER, 443, &quic_initial())],
            default: &[(Verdict::Pass, Reason::Quic)],
            strict: &[(Verdict::Drop, Reason::Quic)],
        },
    ]
}

fn runner() -> SharedRunner {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root (cargo xtask test)"
    );
    let config = Config::parse(CONFIG, std::path::Path::new("evasion.toml")).expect("config");
    TestRunner::shared(&config, LinkType::Ethernet).expect("load")
}

/// One filter instance for the three parts (loading it is most of the suite's time under the
/// kernel matrix's emulated CPUs).
#[test]
fn the_evasion_suite() {
    let mut r = runner();
    every_technique_gets_its_verdict_under_both_policies(&mut r);
    a_tcp_query_split_at_every_byte_is_blocked(&mut r);
    a_server_name_split_at_every_byte_is_blocked(&mut r);
}

fn every_technique_gets_its_verdict_under_both_policies(r: &mut TestRunner) {
    let mut failures = Vec::new();
    for (i, row) in rows().iter().enumerate() {
        for (dev, policy, expected) in [
            (Dev(1), "default", row.default),
            (Dev(2), "strict", row.strict),
        ] {
            let frames = (row.frames)(dev, 40000 + i as u16);
            assert_eq!(frames.len(), expected.len(), "{}: frames", row.technique);
            let got: Vec<Expect> = frames
                .iter()
                .map(|f| {
                    let res = r.run(f).expect("run");
                    (res.verdict, res.reason)
                })
                .collect();
            if got != expected {
                failures.push(format!(
                    "{} ({policy}): got {got:?}, expected {expected:?}",
                    row.technique
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Runs `frames` and returns the results.
fn run_all(r: &mut TestRunner, frames: &[Vec<u8>]) -> Vec<RunResult> {
    frames.iter().map(|f| r.run(f).expect("run")).collect()
}

fn a_tcp_query_split_at_every_byte_is_blocked(r: &mut TestRunner) {
    let m = framed(&dns_query(BLOCKED));
    for cut in 1..m.len() {
        let (d, p) = (Dev(1), 20000 + cut as u16);
        let res = run_all(
            r,
            &[
                d.syn(RESOLVER, p, 53, 99),
                d.tcp(RESOLVER, p, 53, 100, &m[..cut]),
                d.tcp(RESOLVER, p, 53, 100 + cut as u32, &m[cut..]),
            ],
        );
        assert_eq!((res[1].verdict, res[1].reason), PENDING, "cut at {cut}");
        assert_eq!(
            (res[2].verdict, res[2].reason, res[2].action),
            (Verdict::Tx, Reason::Explicit, Some(Action::Block)),
            "cut at {cut}"
        );
    }
    // Three queries cut into 5-byte segments: each judged once whole, the blocked one reset.
    let mut stream = framed(&dns_query("one.example"));
    stream.extend(framed(&dns_query("two.example")));
    stream.extend(framed(&dns_query(BLOCKED)));
    let (d, p) = (Dev(1), 21000);
    r.run(&d.syn(RESOLVER, p, 53, 99)).expect("run");
    for (i, chunk) in stream.chunks(5).enumerate() {
        let res = r
            .run(&d.tcp(RESOLVER, p, 53, 100 + 5 * i as u32, chunk))
            .expect("run");
        // The blocked message is whole with the last chunk.
        if 5 * i + chunk.len() < stream.len() {
            assert_eq!(res.verdict, Verdict::Pass, "chunk {i}");
        } else {
            assert_eq!((res.verdict, res.reason), RESET, "chunk {i}");
        }
    }
}

fn a_server_name_split_at_every_byte_is_blocked(r: &mut TestRunner) {
    let h = client_hello(BLOCKED, 2);
    let name_at = h
        .windows(BLOCKED.len())
        .position(|w| w == BLOCKED.as_bytes())
        .expect("the name is in the hello");
    for cut in name_at - 5..name_at + BLOCKED.len() {
        let (d, p) = (Dev(1), 30000 + cut as u16);
        let res = run_all(
            r,
            &[
                d.syn(SERVER, p, 443, 1000),
                d.tcp(SERVER, p, 443, 1001, &h[..cut]),
                d.tcp(SERVER, p, 443, 1001 + cut as u32, &h[cut..]),
            ],
        );
        assert_eq!(
            (res[1].verdict, res[1].reason),
            (Verdict::Pass, Reason::TlsPending),
            "cut at {cut}"
        );
        assert_eq!((res[2].verdict, res[2].reason), RESET, "cut at {cut}");
    }
}
