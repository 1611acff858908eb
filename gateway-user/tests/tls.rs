//! The shared ClientHello walk on the real captures of ../shared/corpus/pcaps/tls: every
//! ClientHello yields the server name tshark reports, including those split over segments.

use std::{path::PathBuf, process::Command};

use gateway_user::offline::{
    capture,
    sni::{Follower, Outcome},
};

fn tls_corpus() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/pcaps/tls");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the TLS corpus is missing");
    files
}

/// The server names tshark finds in the TCP ClientHellos of `file` ("" for none), sorted.
fn tshark_names(file: &PathBuf) -> Vec<String> {
    let out = Command::new("tshark")
        .args(["-r"])
        .arg(file)
        .args([
            "-Y",
            "tls.handshake.type == 1 && tcp",
            "-T",
            "fields",
            "-e",
            "tls.handshake.extensions_server_name",
        ])
        .output()
        .expect("tshark runs (cargo xtask setup installs it)");
    assert!(out.status.success(), "tshark failed on {}", file.display());
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_ascii_lowercase())
        .collect();
    names.sort();
    names
}

#[test]
fn every_client_hello_yields_the_name_tshark_reports() {
    let mut multi_segment = 0;
    for file in tls_corpus() {
        let (frames, _) = capture::read(&file).expect("capture reads");
        let mut follower = Follower::default();
        let mut names = Vec::new();
        let mut started = std::collections::HashMap::new();
        for f in &frames {
            if let Some((key, _, payload)) =
                gateway_user::offline::sni::tcp_segment(&f.data, f.link)
                && !payload.is_empty()
            {
                started.entry(key).or_insert(f.number);
            }
            if let Some((key, outcome)) = follower.feed(&f.data, f.link) {
                if started.get(&key).is_some_and(|&n| n != f.number) {
                    multi_segment += 1;
                }
                match outcome {
                    Outcome::Sni(n) => names.push(n),
                    Outcome::NoSni => names.push(String::new()),
                    Outcome::Unparsed => panic!("{}: frame {}: unparsed", file.display(), f.number),
                }
            }
        }
        names.sort();
        assert_eq!(names, tshark_names(&file), "{}", file.display());
    }
    assert!(
        multi_segment >= 2,
        "the corpus has ClientHellos over several segments"
    );
}

mod common;

mod kernel {
    //! The kernel's walk, through BPF_PROG_TEST_RUN: a real ClientHello (Chromium's, 1,756
    //! bytes, X25519Kyber768) split at every offset into two segments, and into three, gives
    //! the decision the unsplit one gets; resets are checked field by field.

    use gateway_common::{
        enums::{Action, LinkType, Reason, Verdict},
        tls::{Hello, HelloWalk, NameBuf, walk_segment},
    };
    use gateway_user::{
        config::Config,
        offline::{
            capture,
            frames::{self, L2, L3, L4, TcpFlags},
            sni::tcp_segment,
            testrun::{RunResult, SharedRunner, TestRunner},
        },
    };

    const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
    const KID: [u8; 6] = [0x02, 0, 0, 0, 1, 1];
    const STAFF: [u8; 6] = [0x02, 0, 0, 0, 1, 2];
    const STRICT: [u8; 6] = [0x02, 0, 0, 0, 1, 3];
    const ACK: u32 = 0x5000_0000;

    const CONFIG: &str = r#"
[[policy]]
name = "kids"
block = ["google.com"]
quic = "block"
block_ports = ["853/tcp"]

[[policy]]
name = "staff"

[[policy]]
name = "strict"
block = ["google.com"]
tls_block_answer = "drop"
on_unparsed_tls = "block"

[[device]]
name = "kid"
mac = "02:00:00:00:01:01"
policy = "kids"

[[device]]
name = "staff"
mac = "02:00:00:00:01:02"
policy = "staff"

[[device]]
name = "strict"
mac = "02:00:00:00:01:03"
policy = "strict"
"#;

    fn runner() -> SharedRunner {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "needs root (cargo xtask test)"
        );
        let config = Config::parse(CONFIG, std::path::Path::new("tls.toml")).expect("config");
        TestRunner::shared(&config, LinkType::Ethernet).expect("load")
    }

    /// Chromium's ClientHello from the corpus (SNI lh3.google.com, in its first 1,756 bytes).
    fn chrome_hello() -> Vec<u8> {
        let file = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/corpus/pcaps/tls/chrome-1250-tls-x25519-kyber.pcap");
        let (frames, _) = capture::read(&file).expect("capture");
        frames
            .iter()
            .find_map(|f| {
                let (_, _, p) = tcp_segment(&f.data, f.link)?;
                (p.first() == Some(&22)).then(|| p.to_vec())
            })
            .expect("a ClientHello")
    }

    fn segment(src: [u8; 6], sport: u16, dport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        frames::build(
            L2::Ethernet { src, dst: GW_MAC },
            L3::V4 {
                src: [10, 0, 0, src[5]],
                dst: [192, 0, 2, 10],
            },
            L4::Tcp {
                sport,
                dport,
                seq,
                flags: TcpFlags {
                    ack: Some(ACK),
                    psh: true,
                    ..Default::default()
                },
            },
            payload,
        )
    }

    /// Runs the segments of one flow; returns the result of each.
    fn flow(r: &mut TestRunner, src: [u8; 6], sport: u16, parts: &[&[u8]]) -> Vec<RunResult> {
        let mut seq = 1000u32;
        parts
            .iter()
            .map(|p| {
                let f = segment(src, sport, 443, seq, p);
                seq = seq.wrapping_add(p.len() as u32);
                r.run(&f).expect("run")
            })
            .collect()
    }

    fn decision(results: &[RunResult]) -> (Verdict, Reason, Option<Action>) {
        let last = results.last().expect("results");
        for r in &results[..results.len() - 1] {
            assert_eq!(
                (r.verdict, r.reason),
                (Verdict::Pass, Reason::TlsPending),
                "segments before the decision pass"
            );
        }
        (last.verdict, last.reason, last.action)
    }

    #[test]
    fn every_split_decides_like_the_whole() {
        let mut r = runner();
        let hello = chrome_hello();
        assert!(hello.len() > 1500, "Chromium's hello is over one segment");
        let whole = flow(&mut r, KID, 1, &[&hello]);
        assert_eq!(
            decision(&whole),
            (Verdict::Tx, Reason::Explicit, Some(Action::Block))
        );
        let f = segment(KID, 1, 443, 1000, &hello);
        super::common::assert_reset(&f, &whole[0].output, LinkType::Ethernet, 1000, ACK);
        let staff = flow(&mut r, STAFF, 1, &[&hello]);
        assert_eq!(
            decision(&staff),
            (Verdict::Pass, Reason::Default, Some(Action::Allow))
        );
        let mut sni_in_first = 0;
        for i in 1..hello.len() {
            let sport = 2000 + i as u16;
            let res = flow(&mut r, KID, sport, &[&hello[..i], &hello[i..]]);
            if res[0].action.is_some() {
                // The name was complete in the first segment: decided there.
                sni_in_first += 1;
                assert_eq!(
                    (res[0].verdict, res[0].reason, res[0].action),
                    decision(&whole),
                    "split at {i}"
                );
                assert_eq!(
                    (res[1].verdict, res[1].reason),
                    (Verdict::Drop, Reason::FlowBlocked),
                    "split at {i}: later packets of a blocked flow"
                );
                continue;
            }
            assert_eq!(decision(&res), decision(&whole), "split at {i}");
            let f = segment(KID, sport, 443, 1000 + i as u32, &hello[i..]);
            super::common::assert_reset(
                &f,
                &res[1].output,
                LinkType::Ethernet,
                1000 + i as u32,
                ACK,
            );
        }
        // Allowed flows: decided at the segment that completes the name, then forgotten (the rest
        // is not inspected).
        let allowed = |res: &[RunResult], at: &str| {
            let k = res.iter().position(|x| x.action.is_some()).expect(at);
            assert_eq!(decision(&res[..=k]), decision(&staff), "{at}");
            assert!(
                res[k + 1..].iter().all(|x| x.reason == Reason::Uninspected),
                "{at}"
            );
        };
        for i in 1..hello.len() {
            let res = flow(
                &mut r,
                STAFF,
                30_000 + i as u16,
                &[&hello[..i], &hello[i..]],
            );
            allowed(&res, &format!("staff, split at {i}"));
        }
        // Decided in the first segment exactly when the host walk finds the name in it.
        let name_end = (1..=hello.len())
            .find(|&i| {
                let mut w = HelloWalk::new();
                walk_segment(&mut w, 0, &hello[..i], &mut NameBuf::default()) == Hello::Sni
            })
            .expect("the name");
        assert_eq!(sni_in_first, hello.len() - name_end);
        // (This hello carries server_name near its end: most splits put it in the second
        // segment; those after byte `name_end` in the first.)
        assert!(sni_in_first > 0 && name_end > 1500);
        for i in (1..hello.len()).step_by(41) {
            for j in (i + 1..hello.len()).step_by(97) {
                let sport = 10_000 + (i * 7 + j) as u16;
                let res = flow(
                    &mut r,
                    STAFF,
                    sport,
                    &[&hello[..i], &hello[i..j], &hello[j..]],
                );
                allowed(&res, &format!("split at {i}, {j}"));
            }
        }
    }

    #[test]
    fn retransmission_out_of_order_and_blocked_flows() {
        let mut r = runner();
        let hello = chrome_hello();
        let (a, b) = hello.split_at(100);
        // The first segment twice (a retransmission), then the second: decided as usual.
        let res = flow(&mut r, KID, 7, &[a]);
        assert_eq!(res[0].reason, Reason::TlsPending);
        let f = segment(KID, 7, 443, 1000, a);
        assert_eq!(r.run(&f).expect("run").reason, Reason::TlsPending);
        let f = segment(KID, 7, 443, 1100, b);
        let res = r.run(&f).expect("run");
        assert_eq!((res.verdict, res.reason), (Verdict::Tx, Reason::Explicit));
        // Later packets of the blocked flow, whatever they carry, are dropped.
        let f = segment(KID, 7, 443, 9999, b"\x17\x03\x03\x00\x01x");
        let res = r.run(&f).expect("run");
        assert_eq!(
            (res.verdict, res.reason),
            (Verdict::Drop, Reason::FlowBlocked)
        );
        // Its ClientHello retransmitted: dropped too. A new connection on the same ports (its
        // ClientHello at another sequence number) is judged anew.
        let f = segment(KID, 7, 443, 1000, a);
        assert_eq!(r.run(&f).expect("run").reason, Reason::FlowBlocked);
        let res = r.run(&segment(KID, 7, 443, 777_000, &hello)).expect("run");
        assert_eq!((res.verdict, res.reason), (Verdict::Tx, Reason::Explicit));

        // Out of order before the decision: a segment beyond the next byte expected is dropped
        // (the client sends it again), and the walk goes on when the bytes come in order (staff
        // allows the name, strict drops it). Flow 8: a second segment that skips bytes. Flow 12:
        // "disorder" with its SYN unseen: the second segment, sent first, passes (a flow without
        // state, not a record start); the first then waits for it, so the client's next segment
        // (its Finished) is dropped until the second comes again. (With the SYN seen, the
        // second segment sent first is dropped too: tests/evasion.rs.)
        let next = 1000 + hello.len() as u32;
        for (dev, want) in [
            (STAFF, (Verdict::Pass, Reason::Default, Some(Action::Allow))),
            (
                STRICT,
                (Verdict::Drop, Reason::Explicit, Some(Action::Block)),
            ),
        ] {
            let out_of_order = (Verdict::Drop, Reason::TcpOutOfOrder, None);
            let f = segment(dev, 8, 443, 1000, a);
            assert_eq!(r.run(&f).expect("run").reason, Reason::TlsPending);
            let res = r.run(&segment(dev, 8, 443, 1100 + 50, b)).expect("run");
            assert_eq!((res.verdict, res.reason, res.action), out_of_order);
            let res = r.run(&segment(dev, 8, 443, 1100, b)).expect("run");
            assert_eq!((res.verdict, res.reason, res.action), want);

            let res = r.run(&segment(dev, 12, 443, 1100, b)).expect("run");
            assert_eq!((res.verdict, res.action), (Verdict::Pass, None));
            let res = r.run(&segment(dev, 12, 443, 1000, a)).expect("run");
            assert_eq!(res.reason, Reason::TlsPending);
            let f = segment(dev, 12, 443, next, b"\x14\x03\x03\x00\x01\x01");
            let res = r.run(&f).expect("run");
            assert_eq!((res.verdict, res.reason, res.action), out_of_order);
            let res = r.run(&segment(dev, 12, 443, 1100, b)).expect("run");
            assert_eq!((res.verdict, res.reason, res.action), want);
        }
        // `drop` instead of a reset.
        let res = flow(&mut r, STRICT, 9, &[&hello]);
        assert_eq!(
            decision(&res),
            (Verdict::Drop, Reason::Explicit, Some(Action::Block))
        );
        // Application data of a flow without state: not inspected.
        let f = segment(STAFF, 10, 443, 5, b"\x17\x03\x03\x00\x05hello");
        assert_eq!(r.run(&f).expect("run").reason, Reason::Uninspected);
    }

    /// A policy's `log` decides which ClientHello decisions become events, in the kernel: every
    /// one, the blocks only, none. The decisions themselves do not change; a blocked flow's later
    /// packets are counted, never logged again.
    #[test]
    fn log_levels_are_honoured_for_client_hellos() {
        let mut text = String::new();
        let mut devices = Vec::new();
        for (i, log) in ["all", "blocked", "none"].iter().enumerate() {
            for (j, block) in [true, false].into_iter().enumerate() {
                let n = (2 * i + j + 1) as u8;
                let rules = if block {
                    r#"block = ["google.com"]"#
                } else {
                    ""
                };
                text.push_str(&format!(
                    "[[policy]]\nname = \"p{n}\"\nlog = \"{log}\"\n{rules}\n\n\
                     [[device]]\nname = \"d{n}\"\nmac = \"02:00:00:00:02:{n:02x}\"\n\
                     policy = \"p{n}\"\n\n"
                ));
                let want_event = *log == "all" || (*log == "blocked" && block);
                devices.push(([0x02, 0, 0, 0, 2, n], block, want_event));
            }
        }
        let config = Config::parse(&text, std::path::Path::new("log.toml")).expect("config");
        let mut r = TestRunner::shared(&config, LinkType::Ethernet).expect("load");
        r.maps.drain_events();
        let hello = chrome_hello();
        for (mac, block, want_event) in devices {
            let res = flow(&mut r, mac, 40, &[&hello]);
            let want = if block {
                (Verdict::Tx, Reason::Explicit, Some(Action::Block))
            } else {
                (Verdict::Pass, Reason::Default, Some(Action::Allow))
            };
            assert_eq!(decision(&res), want, "device {mac:?}");
            if block {
                let f = segment(mac, 40, 443, 5000, b"\x17\x03\x03\x00\x01x");
                assert_eq!(r.run(&f).expect("run").reason, Reason::FlowBlocked);
            }
            let events = r.maps.drain_events();
            let names: Vec<&str> = events.iter().map(|e| e.name()).collect();
            let want: Vec<&str> = if want_event {
                vec!["lh3.google.com"]
            } else {
                Vec::new()
            };
            assert_eq!(names, want, "device {mac:?} (block: {block})");
        }
    }

    #[test]
    fn configured_tls_ports() {
        let hello = chrome_hello();
        let config = Config::parse(
            &format!("[gateway]\ntls_ports = [443, 8443]\n{CONFIG}"),
            std::path::Path::new("tls.toml"),
        )
        .expect("config");
        let mut r = TestRunner::shared(&config, LinkType::Ethernet).expect("load");
        for port in [443, 8443] {
            let res = r.run(&segment(KID, 20, port, 1, &hello)).expect("run");
            assert_eq!(
                (res.verdict, res.reason),
                (Verdict::Tx, Reason::Explicit),
                "{port}"
            );
        }
        let res = r.run(&segment(KID, 21, 9443, 1, &hello)).expect("run");
        assert_eq!(res.reason, Reason::Uninspected);
        // By default, 443 only.
        let mut r = runner();
        let res = r.run(&segment(KID, 22, 8443, 1, &hello)).expect("run");
        assert_eq!(res.reason, Reason::Uninspected);
    }

    #[test]
    fn quic_initials_and_blocked_ports() {
        let mut r = runner();
        // A QUIC v1 long-header Initial, padded as clients pad them.
        let mut initial = vec![0xc3, 0, 0, 0, 1, 8];
        initial.resize(1200, 0);
        let udp = |src: [u8; 6], dport: u16, payload: &[u8]| {
            frames::build(
                L2::Ethernet { src, dst: GW_MAC },
                L3::V4 {
                    src: [10, 0, 0, src[5]],
                    dst: [192, 0, 2, 10],
                },
                L4::Udp { sport: 5555, dport },
                payload,
            )
        };
        let res = r.run(&udp(KID, 443, &initial)).expect("run");
        assert_eq!(
            (res.verdict, res.reason, res.action),
            (Verdict::Drop, Reason::Quic, Some(Action::Block))
        );
        let res = r.run(&udp(STAFF, 443, &initial)).expect("run");
        assert_eq!(
            (res.verdict, res.reason, res.action),
            (Verdict::Pass, Reason::Quic, Some(Action::Allow))
        );
        // A short-header (1-RTT) packet is not an Initial.
        let res = r.run(&udp(KID, 443, &[0x43; 64])).expect("run");
        assert_eq!(
            (res.verdict, res.reason),
            (Verdict::Pass, Reason::Uninspected)
        );
        // QUIC v2 numbers Initial as type 1.
        let mut v2 = vec![0xd3, 0x6b, 0x33, 0x43, 0xcf, 8];
        v2.resize(1200, 0);
        assert_eq!(
            r.run(&udp(KID, 443, &v2)).expect("run").reason,
            Reason::Quic
        );
        // DNS over TLS, port 853/tcp: blocked for the kids, not for staff.
        let res = r.run(&segment(KID, 11, 853, 1, b"x")).expect("run");
        assert_eq!(
            (res.verdict, res.reason, res.action),
            (Verdict::Drop, Reason::BlockedPort, Some(Action::Block))
        );
        let res = r.run(&segment(STAFF, 11, 853, 1, b"x")).expect("run");
        assert_eq!(
            (res.verdict, res.reason),
            (Verdict::Pass, Reason::Uninspected)
        );
    }
}

mod properties {
    //! The walk on arbitrary damage: truncated, corrupted and arbitrarily split ClientHellos
    //! never panic and always end; an intact one split anywhere gives the same name.

    use gateway_common::tls::{Hello, HelloWalk, NameBuf, walk_segment};
    use gateway_user::offline::frames::client_hello;
    use proptest::prelude::*;

    /// Walks `data` cut at `cuts` (sorted, deduplicated), as consecutive segments.
    fn walk(data: &[u8], cuts: &[usize]) -> (Hello, String) {
        let mut w = HelloWalk::new();
        let mut name = NameBuf::default();
        let mut last = Hello::NeedMore;
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&data.len())) {
            let end = end.clamp(start, data.len());
            last = walk_segment(&mut w, 0, &data[start..end], &mut name);
            start = end;
            if last != Hello::NeedMore {
                break;
            }
        }
        let text = String::from_utf8_lossy(&name.text[..usize::from(w.name_len)]).into_owned();
        (last, text)
    }

    fn cuts(len: usize, raw: Vec<usize>) -> Vec<usize> {
        let mut c: Vec<usize> = raw.into_iter().map(|x| x % (len + 1)).collect();
        c.sort_unstable();
        c.dedup();
        c
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn intact_hellos_give_their_name_however_split(
            sni_after in 0usize..16,
            raw in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let h = client_hello("www.example.org", sni_after);
            let c = cuts(h.len(), raw);
            prop_assert_eq!(walk(&h, &c), (Hello::Sni, "www.example.org".to_string()));
        }

        #[test]
        fn damaged_hellos_end_cleanly(
            sni_after in 0usize..16,
            truncate in any::<usize>(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            raw in proptest::collection::vec(any::<usize>(), 0..4),
        ) {
            let mut h = client_hello("a.example", sni_after);
            for (at, v) in flips {
                let i = at % h.len();
                h[i] = v;
            }
            h.truncate(truncate % (h.len() + 1));
            let c = cuts(h.len(), raw);
            let (r, text) = walk(&h, &c);
            // A name, when one is reported, is a host name.
            if r == Hello::Sni {
                prop_assert!(!text.is_empty());
                prop_assert!(text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)));
            }
        }

        #[test]
        fn random_bytes_end_cleanly(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = walk(&data, &[]);
            let mut d = data.clone();
            if let Some(b) = d.first_mut() {
                *b = 22;
            }
            let _ = walk(&d, &[d.len() / 2]);
        }
    }
}
