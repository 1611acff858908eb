//! Tier 2 for plain HTTP (SPEC §15): requests to port 80 through the real kernel program
//! (BPF_PROG_TEST_RUN): the Host (or the absolute URI's host) judged like a server name, a
//! blocked request reset (its reset checked) or dropped and its flow's later segments dropped,
//! pipelined requests each judged, cut or ambiguous heads decided by `on_unparsed_http`.
//! Needs root.

use etherparse::{SlicedPacket, TransportSlice};
use gateway_common::enums::{Action, LinkType, Reason, Verdict};
use gateway_user::{
    config::Config,
    offline::{
        frames::{self, L2, L3, L4, TcpFlags},
        testrun::{RunResult, TestRunner},
    },
};

const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

const CONFIG: &str = r#"
[[policy]]
name = "students"
block = ["blocked.example"]

[[policy]]
name = "strict"
block = ["blocked.example"]
on_unparsed_http = "block"
http_block_answer = "drop"

[[device]]
name = "pupil"
mac = "02:00:00:00:01:01"
policy = "students"

[[device]]
name = "kiosk"
mac = "02:00:00:00:01:02"
policy = "strict"
"#;

/// A data segment from device `dev` to port 80 of the server.
fn segment(dev: u8, sport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let flags = TcpFlags {
        ack: Some(7777),
        psh: true,
        ..TcpFlags::default()
    };
    tcp(dev, sport, seq, flags, payload)
}

fn tcp(dev: u8, sport: u16, seq: u32, flags: TcpFlags, payload: &[u8]) -> Vec<u8> {
    frames::build(
        L2::Ethernet {
            src: [0x02, 0, 0, 0, 1, dev],
            dst: GW_MAC,
        },
        L3::V4 {
            src: [10, 0, 0, dev],
            dst: [192, 0, 2, 80],
        },
        L4::Tcp {
            sport,
            dport: 80,
            seq,
            flags,
        },
        payload,
    )
}

fn runner() -> TestRunner {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root (cargo xtask test)"
    );
    let config = Config::parse(CONFIG, std::path::Path::new("http.toml")).expect("config");
    TestRunner::new(&config, LinkType::Ethernet).expect("load")
}

/// What a frame got: verdict, reason, action.
type Outcome = (Verdict, Reason, Option<Action>);

fn outcome(r: &RunResult) -> Outcome {
    (r.verdict, r.reason, r.action)
}

/// The reset the kernel built for a segment: RST|ACK back to the device, acknowledging the
/// segment's data.
fn check_reset(sent: &[u8], r: &RunResult, payload_len: u32) {
    let p = SlicedPacket::from_ethernet(&r.output).expect("reset parses");
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        panic!("no TCP");
    };
    assert!(t.rst() && t.ack(), "RST|ACK");
    assert_eq!((t.source_port(), t.destination_port()), (80, 40000));
    assert_eq!(t.sequence_number(), 7777);
    assert_eq!(t.acknowledgment_number(), 1000 + payload_len);
    assert!(t.payload().is_empty());
    assert_ne!(r.output, sent);
}

#[test]
fn hosts_are_judged_like_server_names() {
    let mut r = runner();
    use Action::{Allow, Block};
    use Reason::{Default, Explicit, HttpNoHost, HttpUnparsed, Uninspected};
    use Verdict::{Pass, Tx};
    let rows: &[(&str, Outcome)] = &[
        (
            "GET / HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
            (Pass, Default, Some(Allow)),
        ),
        (
            "GET / HTTP/1.1\r\nHost: Blocked.Example:80\r\n\r\n",
            (Tx, Explicit, Some(Block)),
        ),
        (
            "GET / HTTP/1.1\r\nHost: www.blocked.example\r\n\r\n",
            (Tx, Explicit, Some(Block)),
        ),
        // Proxy style: the URI's host decides, whatever Host says.
        (
            "GET http://blocked.example/ HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
            (Tx, Explicit, Some(Block)),
        ),
        (
            "CONNECT blocked.example:443 HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
            (Tx, Explicit, Some(Block)),
        ),
        // Pipelined: the second request of the segment is judged too.
        (
            "GET / HTTP/1.1\r\nHost: allowed.example\r\n\r\nGET / HTTP/1.1\r\nHost: blocked.example\r\n\r\n",
            (Tx, Explicit, Some(Block)),
        ),
        (
            "POST / HTTP/1.1\r\nHost: allowed.example\r\nContent-Length: 4\r\n\r\nbodyGET / HTTP/1.1\r\nHost: blocked.example\r\n\r\n",
            (Tx, Explicit, Some(Block)),
        ),
        // The head cut before the host, ambiguous heads, no host: `on_unparsed_http` (allow).
        (
            "GET / HTTP/1.1\r\nUser-Agent: x\r\nHo",
            (Pass, HttpUnparsed, Some(Allow)),
        ),
        (
            "GET / HTTP/1.1\r\nHost: allowed.example\r\nHost: blocked.example\r\n\r\n",
            (Pass, HttpUnparsed, Some(Allow)),
        ),
        ("GET / HTTP/1.0\r\n\r\n", (Pass, HttpNoHost, Some(Allow))),
        // Not a request: a body's continuation, TLS on port 80.
        ("some body bytes", (Pass, Uninspected, None)),
        ("\x16\x03\x01\x00\x10", (Pass, Uninspected, None)),
    ];
    for (i, (text, want)) in rows.iter().enumerate() {
        let f = segment(1, 41000 + i as u16, 1000, text.as_bytes());
        let out = r.run(&f).expect("run");
        assert_eq!(outcome(&out), *want, "{text:?}");
    }
}

#[test]
fn a_blocked_request_resets_and_its_flow_stays_blocked() {
    let mut r = runner();
    let req = b"GET /page HTTP/1.1\r\nHost: blocked.example\r\nAccept: */*\r\n\r\n";
    let f = segment(1, 40000, 1000, req);
    let out = r.run(&f).expect("run");
    assert_eq!(
        outcome(&out),
        (Verdict::Tx, Reason::Explicit, Some(Action::Block))
    );
    check_reset(&f, &out, req.len() as u32);
    // The flow's later segments (a retransmission, the next request) are dropped.
    for (seq, p) in [
        (1000, &req[..]),
        (
            1000 + req.len() as u32,
            b"GET / HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
        ),
    ] {
        let out = r.run(&segment(1, 40000, seq, p)).expect("run");
        assert_eq!(
            outcome(&out),
            (Verdict::Drop, Reason::FlowBlocked, Some(Action::Block))
        );
    }
    // A new connection on the same ports starts clean.
    let syn = tcp(
        1,
        40000,
        5000,
        TcpFlags {
            syn: true,
            ..TcpFlags::default()
        },
        b"",
    );
    r.run(&syn).expect("syn");
    let out = r
        .run(&segment(
            1,
            40000,
            5001,
            b"GET / HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
        ))
        .expect("run");
    assert_eq!(
        outcome(&out),
        (Verdict::Pass, Reason::Default, Some(Action::Allow))
    );
}

#[test]
fn strict_policies_drop_and_block_what_they_cannot_read() {
    let mut r = runner();
    let out = r
        .run(&segment(
            2,
            40100,
            1000,
            b"GET / HTTP/1.1\r\nHost: blocked.example\r\n\r\n",
        ))
        .expect("run");
    assert_eq!(
        outcome(&out),
        (Verdict::Drop, Reason::Explicit, Some(Action::Block))
    );
    let out = r
        .run(&segment(2, 40101, 1000, b"GET / HTTP/1.1\r\nX: y\r\nHo"))
        .expect("run");
    assert_eq!(
        outcome(&out),
        (Verdict::Drop, Reason::HttpUnparsed, Some(Action::Block))
    );
    let out = r
        .run(&segment(2, 40102, 1000, b"GET / HTTP/1.0\r\n\r\n"))
        .expect("run");
    assert_eq!(
        outcome(&out),
        (Verdict::Drop, Reason::HttpNoHost, Some(Action::Block))
    );
    let out = r
        .run(&segment(
            2,
            40103,
            1000,
            b"GET / HTTP/1.1\r\nHost: ok.example\r\n\r\n",
        ))
        .expect("run");
    assert_eq!(
        outcome(&out),
        (Verdict::Pass, Reason::Default, Some(Action::Allow))
    );
}
