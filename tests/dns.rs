//! Tier 3 for DNS: real `dig` and `kdig` in two device namespaces with different policies, a
//! real dnsmasq upstream. Blocked names are answered by the gateway (in XDP) and never reach the
//! upstream; allowed names are answered by the upstream; the same name gets different answers on
//! the two devices; case does not evade.

use gateway_testbed::{Bed, Daemon, Dnsmasq, Pins, dig};

#[test]
fn real_clients_real_upstream_two_policies() -> anyhow::Result<()> {
    let bed = Bed::new(2)?;
    let (laptop, sensor) = (&bed.devices[0], &bed.devices[1]);
    let body = format!(
        r#"
[[interface]]
name = "{}"

[[interface]]
name = "{}"

[[category]]
name = "ads"
domains = ["ads.example"]

[[policy]]
name = "students"
block_categories = ["ads", "dns-bypass"]
block = ["games.example"]

[[policy]]
name = "staff"
dns_block_answer = "refused"
block = ["games.example"]

[[device]]
name = "laptop"
mac = "{}"
policy = "students"

[[device]]
name = "sensor"
ip = "{}"
policy = "staff"
"#,
        laptop.gw_if, sensor.gw_if, laptop.mac, sensor.ip
    );
    let pins = Pins::with_config("", &body)?;
    let daemon = Daemon::start(&bed.gw, &pins, &["d1", "d2"])?;
    let upstream = Dnsmasq::start(
        &bed.up,
        &bed.upstream_ip,
        &[
            ("ads.example", "198.51.100.1"),
            ("allowed.example", "198.51.100.2"),
            ("games.example", "198.51.100.3"),
            ("dns.google", "198.51.100.4"),
        ],
    )?;
    let up = bed.upstream_ip.as_str();

    for tool in ["dig", "kdig"] {
        // Blocked for the laptop by category, in any case: NXDOMAIN from the gateway.
        for name in [
            "ads.example",
            "www.ads.example",
            "WwW.AdS.ExAmPlE",
            "dns.google",
        ] {
            let r = dig(&laptop.ns, tool, up, name, "A")?;
            assert_eq!(r.status, "NXDOMAIN", "{tool} {name} from the laptop: {r:?}");
        }
        // Allowed: answered by the upstream.
        let r = dig(&laptop.ns, tool, up, "allowed.example", "A")?;
        assert_eq!(
            (r.status.as_str(), r.answers.as_slice()),
            ("NOERROR", &["198.51.100.2".to_string()][..]),
            "{tool}"
        );
        // The same name, two devices, two answers: ads.example is fine for staff...
        let r = dig(&sensor.ns, tool, up, "ads.example", "A")?;
        assert_eq!(
            (r.status.as_str(), r.answers.as_slice()),
            ("NOERROR", &["198.51.100.1".to_string()][..]),
            "{tool}"
        );
        // ...and games.example is blocked for both, each with its policy's answer.
        assert_eq!(
            dig(&laptop.ns, tool, up, "games.example", "A")?.status,
            "NXDOMAIN"
        );
        assert_eq!(
            dig(&sensor.ns, tool, up, "games.example", "A")?.status,
            "REFUSED"
        );
    }

    // Over TCP: a blocked query is reset by the gateway at once; an allowed one is answered.
    let start = std::time::Instant::now();
    let out = laptop.ns.output(
        "dig",
        &[
            "+tcp",
            "+tries=1",
            "+time=3",
            &format!("@{up}"),
            "tcp.ads.example",
            "A",
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("reset"), "dig +tcp of a blocked name: {text}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(1),
        "the reset is immediate: {:?}",
        start.elapsed()
    );
    let out = laptop.ns.output(
        "dig",
        &[
            "+tcp",
            "+tries=1",
            "+time=3",
            &format!("@{up}"),
            "allowed.example",
            "A",
            "+short",
        ],
    )?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "198.51.100.2",
        "allowed over TCP"
    );

    // The upstream never saw a blocked query, and saw the allowed ones.
    let seen = upstream.queries();
    assert!(seen.iter().any(|q| q == "allowed.example"), "{seen:?}");
    assert_eq!(
        seen.iter().filter(|q| *q == "ads.example").count(),
        2,
        "only the sensor's (dig, kdig): {seen:?}"
    );
    for blocked in [
        "www.ads.example",
        "games.example",
        "dns.google",
        "tcp.ads.example",
    ] {
        assert!(
            !seen.iter().any(|q| q == blocked),
            "{blocked} reached the upstream: {seen:?}"
        );
    }

    // The daemon drained the decision events from the kernel and logged them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !daemon.log_text().contains("name=\"www.ads.example\"") {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no decision event logged:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("name=\"www.ads.example\""))
        .unwrap_or_default();
    assert!(
        line.contains("device=\"laptop\"")
            && line.contains("action=\"block\"")
            && line.contains("reason=\"category\""),
        "{line}"
    );

    // Counted by device, reason and category.
    let stats = pins.stats()?;
    let decisions = stats["decisions"].as_array().cloned().unwrap_or_default();
    let count = |dev: &str, action: &str, reason: &str| -> u64 {
        decisions
            .iter()
            .filter(|d| {
                d["device"] == dev
                    && d["proto"] == "dns"
                    && d["action"] == action
                    && d["reason"] == reason
            })
            .filter_map(|d| d["count"].as_u64())
            .sum()
    };
    assert_eq!(count("laptop", "block", "explicit"), 2);
    assert_eq!(
        count("laptop", "block", "category"),
        9,
        "8 over UDP (dig and kdig), 1 over TCP: {decisions:?}"
    );
    assert_eq!(
        count("laptop", "allow", "default"),
        3,
        "dig, kdig, dig +tcp"
    );
    assert_eq!(count("sensor", "block", "explicit"), 2);
    assert_eq!(count("sensor", "allow", "default"), 2);
    // The categories are named as the daemon's configuration numbers them: per tool three
    // names under ads.example and dns.google, and tcp.ads.example over TCP.
    assert_eq!(laptop_by_category(&stats), [7, 2, 0], "{decisions:?}");

    // A reload that lists a new category first: "ads" keeps its number in the counters, so
    // the counts made before keep their name and the new ones add to them.
    let reordered = body.replacen(
        "[[category]]\nname = \"ads\"",
        "[[category]]\nname = \"games\"\ndomains = [\"play.example\"]\n\n[[category]]\nname = \"ads\"",
        1,
    );
    let reordered = reordered.replacen(
        "block_categories = [\"ads\", \"dns-bypass\"]",
        "block_categories = [\"games\", \"ads\", \"dns-bypass\"]",
        1,
    );
    assert_ne!(reordered, body);
    pins.rewrite("", &reordered)?;
    gateway_testbed::check("gateway reload", pins.gateway("reload", &[])?)?;
    for name in ["more.ads.example", "play.example"] {
        let r = dig(&laptop.ns, "dig", up, name, "A")?;
        assert_eq!(r.status, "NXDOMAIN", "{name} after the reload: {r:?}");
    }
    assert_eq!(
        laptop_by_category(&pins.stats()?),
        [8, 2, 1],
        "after the reload"
    );

    // Without the daemon (kill -9), the pinned filter answers and counts as before: the
    // programs it tail-calls stay in their pinned array.
    drop(daemon);
    for (tool, name) in [("dig", "ads.example"), ("kdig", "dns.google")] {
        let r = dig(&laptop.ns, tool, up, name, "A")?;
        assert_eq!(r.status, "NXDOMAIN", "{name} without the daemon: {r:?}");
    }
    let r = dig(&laptop.ns, "dig", up, "allowed.example", "A")?;
    assert_eq!(
        r.status, "NOERROR",
        "allowed.example without the daemon: {r:?}"
    );
    assert_eq!(
        laptop_by_category(&pins.stats()?),
        [9, 3, 1],
        "counted without the daemon"
    );

    // And a restart on the pinned counters. A start that failed after pinning its program
    // array left one behind (made here with bpftool): the next start removes it once attached.
    let programs = pins.dir.join("programs");
    let left = programs.join("ethernet-progs-1");
    gateway_testbed::check(
        "bpftool map pin",
        std::process::Command::new("bpftool")
            .arg("map")
            .arg("pin")
            .arg("pinned")
            .arg(programs.join("ethernet-progs"))
            .arg(&left)
            .output()?,
    )?;
    let _daemon = Daemon::start(&bed.gw, &pins, &["d1", "d2"])?;
    let mut pinned: Vec<String> = std::fs::read_dir(&programs)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    pinned.sort();
    assert_eq!(pinned, ["ethernet", "ethernet-progs"], "programs pinned");
    assert_eq!(
        laptop_by_category(&pins.stats()?),
        [9, 3, 1],
        "after a restart"
    );
    let r = dig(&laptop.ns, "dig", up, "ads.example", "A")?;
    assert_eq!(r.status, "NXDOMAIN", "ads.example after the restart: {r:?}");
    assert_eq!(
        laptop_by_category(&pins.stats()?),
        [10, 3, 1],
        "counted after the restart"
    );
    Ok(())
}

/// The laptop's decisions in `gateway stats --json`, counted by category name: ads,
/// dns-bypass, games.
fn laptop_by_category(stats: &serde_json::Value) -> [u64; 3] {
    ["ads", "dns-bypass", "games"].map(|category| {
        stats["decisions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["device"] == "laptop" && d["category_name"] == category)
            .filter_map(|d| d["count"].as_u64())
            .sum()
    })
}

/// `gateway run --trace-kernel`: the filter's debug traces reach the daemon's log, named —
/// why a blocked query was answered and an allowed one passed.
#[test]
fn kernel_traces_reach_the_daemon_log() -> anyhow::Result<()> {
    let bed = Bed::new(1)?;
    let laptop = &bed.devices[0];
    let body = format!(
        "[[interface]]\nname = \"{}\"\n\n[[policy]]\nname = \"students\"\nblock = [\"games.example\"]\n\n[[device]]\nname = \"laptop\"\nmac = \"{}\"\npolicy = \"students\"\n",
        laptop.gw_if, laptop.mac
    );
    let pins = Pins::with_config("", &body)?;
    let daemon = Daemon::start_with(&bed.gw, &pins, &["d1"], "info", &["--trace-kernel"])?;
    let _upstream = Dnsmasq::start(
        &bed.up,
        &bed.upstream_ip,
        &[("allowed.example", "198.51.100.2")],
    )?;
    let up = bed.upstream_ip.as_str();
    assert_eq!(
        dig(&laptop.ns, "dig", up, "games.example", "A")?.status,
        "NXDOMAIN"
    );
    assert_eq!(
        dig(&laptop.ns, "dig", up, "allowed.example", "A")?.status,
        "NOERROR"
    );
    let traced = |want: &str| {
        daemon
            .log_text()
            .lines()
            .any(|l| l.contains("gateway::kernel") && l.contains(want))
    };
    gateway_testbed::eventually("the blocked query's trace", || {
        traced("verdict=tx reason=explicit device=laptop policy=students action=block")
    })?;
    gateway_testbed::eventually("the allowed query's trace", || {
        traced("verdict=pass reason=default device=laptop policy=students action=allow")
    })?;
    Ok(())
}
