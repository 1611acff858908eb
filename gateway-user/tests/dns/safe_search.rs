//! SafeSearch through the kernel: covered names answered with the engine's enforcement name
//! and its addresses (parsed back with hickory-proto, checksums verified, on both link types,
//! with and without EDNS, for every engine), HTTPS/SVCB answered empty, names not covered and
//! devices of other policies untouched, and queries passed while no address is known.

use gateway_user::{config::safe_search::builtin, kernel::safe_search::Resolved};

use super::*;

const CONFIG: &str = r#"
[[policy]]
name = "school"
safe_search = ["google", "youtube-strict", "bing", "duckduckgo", "ecosia", "pixabay", "yandex"]
block = ["blocked.example"]

[[policy]]
name = "moderate"
safe_search = ["youtube-moderate"]
mode = "monitor"

[[policy]]
name = "plain"

[[device]]
name = "pupil"
mac = "02:00:00:00:01:01"
ip = ["10.0.0.1", "fd00::1"]
policy = "school"

[[device]]
name = "teacher"
mac = "02:00:00:00:01:02"
policy = "plain"

[[device]]
name = "watched"
mac = "02:00:00:00:01:03"
policy = "moderate"
"#;

fn frame(device: u8, link: LinkType, v6: bool, q: &[u8]) -> Vec<u8> {
    let l3 = if v6 { super::v6() } else { V4 };
    let l2 = match link {
        LinkType::Ethernet => L2::Ethernet {
            src: mac(device),
            dst: GW_MAC,
        },
        LinkType::RawIp => L2::RawIp,
    };
    dns_frame(l2, l3, q)
}

/// The target's addresses the tests give the kernel (as the daemon's resolver would).
fn addrs(n: u8) -> Resolved {
    Resolved {
        v4: Some((1..=n).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect()),
        v6: Some(
            (1..=n)
                .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i)))
                .collect(),
        ),
        ttl: 300,
    }
}

#[test]
fn covered_names_are_answered_with_the_enforcement_name() {
    let config = Config::parse(CONFIG, std::path::Path::new("safe.toml")).expect("config");
    let engines = builtin().expect("engines");
    let engine = |n: &str| engines.iter().find(|e| e.name == n).expect(n).clone();
    for link in [LinkType::Ethernet, LinkType::RawIp] {
        let mut r = TestRunner::shared(&config, link).expect("load");
        // Device 1 on raw IP is found by address; on Ethernet by MAC.
        // No address known yet: passed to the resolver untouched, counted.
        for name in ["www.google.de.", "www.youtube.com."] {
            let f = frame(1, link, false, &query(7, name, RecordType::A, true));
            let out = r.run(&f).expect("run");
            assert_eq!(
                (out.verdict, out.reason, out.action),
                (
                    Verdict::Pass,
                    Reason::SafeSearchUnresolved,
                    Some(Action::Allow)
                ),
                "{name} before resolution"
            );
            assert_eq!(out.output, f, "passed untouched");
        }
        // Addresses known for IPv4 only: AAAA still passes.
        for (i, e) in engines.iter().enumerate() {
            let mut known = addrs(1 + (i % 4) as u8);
            known.v6 = None;
            r.maps.safe_targets.resolved(&e.target, known);
        }
        let f = frame(
            1,
            link,
            false,
            &query(8, "www.bing.com.", RecordType::AAAA, false),
        );
        assert_eq!(r.run(&f).expect("run").reason, Reason::SafeSearchUnresolved);
        for (i, e) in engines.iter().enumerate() {
            r.maps
                .safe_targets
                .resolved(&e.target, addrs(1 + (i % 4) as u8));
        }
        for name in [
            "www.google.de",
            "www.google.com",
            "www.google.co.uk",
            "www.youtube.com",
            "m.youtube.com",
            "youtubei.googleapis.com",
            "www.youtube-nocookie.com",
            "www.bing.com",
            "duckduckgo.com",
            "www.ecosia.org",
            "pixabay.com",
            "yandex.ru",
            "www.yandex.com.tr",
        ] {
            let e = engines
                .iter()
                .enumerate()
                .find(|(_, e)| e.names.contains(name) && e.name != "youtube-moderate")
                .map(|(i, e)| (i, e.clone()))
                .expect(name);
            let n = 1 + (e.0 % 4);
            for (qtype, edns, v6) in [
                (RecordType::A, true, false),
                (RecordType::A, false, true),
                (RecordType::AAAA, true, true),
                (RecordType::AAAA, false, false),
            ] {
                if link == LinkType::Ethernet && v6 {
                    // By MAC either way; the frame's family changes nothing else.
                }
                let q = query(0x5151, &format!("{}.", name.to_uppercase()), qtype, edns);
                let f = frame(1, link, v6, &q);
                let out = r.run(&f).expect("run");
                assert_eq!(
                    (out.reason, out.action),
                    (Reason::SafeSearch, Some(Action::Rewrite)),
                    "{name} {qtype}"
                );
                let m = check_answer(&f, &out, link);
                assert_eq!(m.metadata.response_code, ResponseCode::NoError);
                assert_eq!(
                    m.answers.len(),
                    1 + n,
                    "{name} {qtype}: CNAME then {n} addresses"
                );
                let target = Name::from_ascii(format!("{}.", e.1.target)).expect("target");
                assert_eq!(
                    m.answers[0].data,
                    RData::CNAME(hickory_proto::rr::rdata::CNAME(target.clone()))
                );
                assert_eq!(
                    m.answers[0].name,
                    Name::from_ascii(format!("{}.", name.to_uppercase())).expect("owner")
                );
                for (k, a) in m.answers[1..].iter().enumerate() {
                    assert_eq!(a.name, target, "addresses are the target's");
                    assert_eq!(a.ttl, 300);
                    let k = k as u8 + 1;
                    let want = if qtype == RecordType::A {
                        RData::A(Ipv4Addr::new(192, 0, 2, k).into())
                    } else {
                        RData::AAAA(
                            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(k)).into(),
                        )
                    };
                    assert_eq!(a.data, want);
                }
                assert_eq!(m.answers[0].ttl, 300);
                assert_eq!(m.edns.is_some(), edns, "OPT iff the query had one");
            }
            // HTTPS and SVCB for covered names: empty, whatever `https_records` says.
            for qtype in [RecordType::HTTPS, RecordType::SVCB] {
                let f = frame(1, link, false, &query(9, &format!("{name}."), qtype, true));
                let out = r.run(&f).expect("run");
                assert_eq!(
                    (out.reason, out.action),
                    (Reason::SafeSearch, Some(Action::Rewrite))
                );
                let m = check_answer(&f, &out, link);
                assert_eq!(
                    (m.metadata.response_code, m.answers.len()),
                    (ResponseCode::NoError, 0)
                );
            }
        }
        // Not covered: other names, other query types, and a blocked name stays blocked.
        for (name, qtype, reason) in [
            ("google.de.", RecordType::A, Reason::Default),
            ("mail.google.com.", RecordType::A, Reason::Default),
            ("www.google.de.", RecordType::TXT, Reason::Default),
            ("www.google.de.", RecordType::MX, Reason::Default),
            ("www.youtube.com.example.", RecordType::A, Reason::Default),
        ] {
            let f = frame(1, link, false, &query(10, name, qtype, false));
            let out = r.run(&f).expect("run");
            assert_eq!(
                (out.verdict, out.reason),
                (Verdict::Pass, reason),
                "{name} {qtype}"
            );
            assert_eq!(out.output, f);
        }
        let f = frame(
            1,
            link,
            false,
            &query(11, "blocked.example.", RecordType::A, false),
        );
        assert_eq!(r.run(&f).expect("run").reason, Reason::Explicit);
        if link == LinkType::Ethernet {
            // A device of a policy without safe_search gets the resolver's answer.
            let f = frame(
                2,
                link,
                false,
                &query(12, "www.google.de.", RecordType::A, false),
            );
            let out = r.run(&f).expect("run");
            assert_eq!((out.verdict, out.reason), (Verdict::Pass, Reason::Default));
            assert_eq!(out.output, f);
            // Under monitor: passed and counted as SafeSearch would have answered.
            let f = frame(
                3,
                link,
                false,
                &query(13, "www.youtube.com.", RecordType::A, false),
            );
            let out = r.run(&f).expect("run");
            assert_eq!(
                (out.verdict, out.reason, out.action),
                (Verdict::Pass, Reason::SafeSearch, Some(Action::Monitor))
            );
        }
        // The addresses change: the next answer carries the new ones.
        let yt = engine("youtube-strict");
        r.maps.safe_targets.resolved(
            &yt.target,
            Resolved {
                v4: Some(vec![Ipv4Addr::new(198, 51, 100, 7)]),
                v6: Some(Vec::new()),
                ttl: 5,
            },
        );
        let f = frame(
            1,
            link,
            false,
            &query(14, "www.youtube.com.", RecordType::A, false),
        );
        let m = check_answer(&f, &r.run(&f).expect("run"), link);
        assert_eq!(m.answers.len(), 2);
        assert_eq!(
            m.answers[1].data,
            RData::A(Ipv4Addr::new(198, 51, 100, 7).into())
        );
        assert_eq!(m.answers[1].ttl, 5);
        // A name with no AAAA: the CNAME alone (the client asks for A).
        let f = frame(
            1,
            link,
            false,
            &query(15, "www.youtube.com.", RecordType::AAAA, false),
        );
        let m = check_answer(&f, &r.run(&f).expect("run"), link);
        assert_eq!(m.answers.len(), 1);
    }
}
