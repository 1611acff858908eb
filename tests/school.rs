//! Tier 3 for school safety (SPEC §15): a real dnsmasq upstream answering the enforcement names
//! with addresses of the bed; `dig` from a device whose policy has SafeSearch gets the CNAME and
//! that address, answered by the gateway in XDP, while a device of another policy gets the
//! upstream's own answer; the upstream changes the address and the kernel's answers follow.
//! Plain HTTP: `curl` to a server by address with a blocked Host is reset, an allowed one loads.

use gateway_testbed::{Bed, Daemon, Dnsmasq, Nginx, Pins, dig, eventually_within};

#[test]
fn safe_search_answers_and_plain_http_hosts() -> anyhow::Result<()> {
    let bed = Bed::new(2)?;
    let (pupil, teacher) = (&bed.devices[0], &bed.devices[1]);
    let up = bed.upstream_ip.clone();
    let body = format!(
        r#"
[[interface]]
name = "{}"

[[interface]]
name = "{}"

[safe_search]
resolver = "{up}"

[[policy]]
name = "school"
safe_search = ["google", "youtube-strict"]
block = ["blocked.example"]

[[policy]]
name = "staff"

[[device]]
name = "pupil"
mac = "{}"
policy = "school"

[[device]]
name = "teacher"
ip = "{}"
policy = "staff"
"#,
        pupil.gw_if, teacher.gw_if, pupil.mac, teacher.ip
    );
    let pins = Pins::with_config("http_ports = [80, 8080]", &body)?;
    let records = |forced: &'static str| {
        [
            ("forcesafesearch.google.com", forced),
            ("restrict.youtube.com", "198.51.100.11"),
            ("www.google.de", "198.51.100.20"),
            ("www.youtube.com", "198.51.100.21"),
        ]
    };
    let mut upstream = Some(Dnsmasq::start(&bed.up, &up, &records("198.51.100.10"))?);
    let daemon = Daemon::start(&bed.gw, &pins, &["d1", "d2"])?;
    let lookup = |who: &gateway_testbed::Device, name: &str| -> Vec<String> {
        dig(&who.ns, "dig", &up, name, "A")
            .map(|l| l.answers)
            .unwrap_or_default()
    };
    // The daemon resolves the enforcement names; from then on the kernel answers.
    let want = |target: &str, ip: &str| vec![format!("{target}."), ip.to_string()];
    eventually_within("the SafeSearch answer for www.google.de", 20, || {
        lookup(pupil, "www.google.de") == want("forcesafesearch.google.com", "198.51.100.10")
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}: the pupil got {:?}; the daemon's log:\n{}",
            lookup(pupil, "www.google.de"),
            daemon.log_text()
        )
    })?;
    eventually_within("the SafeSearch answer for www.youtube.com", 20, || {
        lookup(pupil, "WWW.YouTube.com") == want("restrict.youtube.com", "198.51.100.11")
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}: {:?}",
            dig(&pupil.ns, "dig", &up, "WWW.YouTube.com", "A")
        )
    })?;
    // Answered by the gateway: the upstream never saw the pupil's queries for covered names.
    let asked = upstream.as_ref().map(|u| u.queries()).unwrap_or_default();
    assert!(
        !asked
            .iter()
            .any(|q| q == "www.google.de" || q == "www.youtube.com"),
        "the upstream was asked {asked:?}"
    );
    // Another policy's device: the upstream's own answer.
    assert_eq!(
        lookup(teacher, "www.google.de"),
        vec!["198.51.100.20".to_string()]
    );
    assert_eq!(
        lookup(teacher, "www.youtube.com"),
        vec!["198.51.100.21".to_string()]
    );
    // HTTPS records of a covered name: empty, from the gateway.
    let https = dig(&pupil.ns, "dig", &up, "www.google.de", "HTTPS")?;
    assert_eq!((https.status.as_str(), https.answers.len()), ("NOERROR", 0));

    // The upstream's address changes (dnsmasq answers with TTL 0: the daemon asks again each
    // second); the kernel's answers follow.
    drop(upstream.take());
    upstream = Some(Dnsmasq::start(&bed.up, &up, &records("198.51.100.12"))?);
    eventually_within("the new address in the kernel's answers", 20, || {
        lookup(pupil, "www.google.de") == want("forcesafesearch.google.com", "198.51.100.12")
    })?;
    drop(upstream);

    // Plain HTTP by address: the Host header decides.
    let nginx = Nginx::start(&bed.up, &up)?;
    nginx.serve("index.html", b"hello")?;
    let curl = |who: &gateway_testbed::Device, host: &str| {
        who.ns.output(
            "curl",
            &[
                "-sS",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                &format!("Host: {host}"),
                &format!("http://{up}:8080/index.html"),
            ],
        )
    };
    let ok = curl(pupil, "allowed.example")?;
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "200", "{ok:?}");
    let blocked = curl(pupil, "www.blocked.example")?;
    let err = String::from_utf8_lossy(&blocked.stderr).to_lowercase();
    assert!(
        !blocked.status.success() && err.contains("reset"),
        "a blocked Host is reset: {blocked:?}"
    );
    // The teacher's policy does not block it.
    let t = curl(teacher, "www.blocked.example")?;
    assert_eq!(String::from_utf8_lossy(&t.stdout), "200", "{t:?}");
    // Counted with their reasons and protocols.
    let stats = pins.stats()?;
    let text = stats.to_string();
    let reasons = stats["reasons"].to_string();
    assert!(reasons.contains("\"safe_search\""), "{reasons}");
    assert!(text.contains("\"http\""), "{text}");
    // What the kernel answers with, as `gateway stats` reads it from the pinned map.
    let targets = stats["safe_search"].as_array().cloned().unwrap_or_default();
    let google = targets
        .iter()
        .find(|t| t["target"] == "forcesafesearch.google.com")
        .ok_or_else(|| anyhow::anyhow!("no SafeSearch target in {text}"))?;
    assert_eq!(
        google["ipv4"],
        serde_json::json!(["198.51.100.12"]),
        "{google}"
    );
    drop(daemon);
    Ok(())
}
