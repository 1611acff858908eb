//! Tier 3 for configuration: reloads with real queries. A configuration that fails validation
//! is rejected by `gateway reload` (exit 2) and the running one keeps enforcing; an edited file
//! is picked up by the daemon on its own, once it has stopped changing; a file cut short is
//! rejected; under a continuous stream of DNS queries and TLS handshakes, 50 reloads between two
//! configurations lose none, and every answer is the old policy's or the new one's.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use gateway_testbed::{
    Bed, Daemon, Dnsmasq, Handshake, HttpsUpstream, Pins, curl_https, dig, eventually,
};

fn config(bed: &Bed, flip_blocked: bool) -> String {
    if flip_blocked {
        bed.one_device_config(&["always.example", "flip.example"])
    } else {
        bed.one_device_config(&["always.example"])
    }
}

#[test]
fn reloads_keep_enforcing_and_lose_nothing() -> anyhow::Result<()> {
    let bed = Bed::new(1)?;
    let pins = Pins::with_config("", &config(&bed, true))?;
    let daemon = Daemon::start(&bed.gw, &pins, &["d1"])?;
    let _upstream = Dnsmasq::start(
        &bed.up,
        &bed.upstream_ip,
        &[
            ("always.example", "198.51.100.1"),
            ("flip.example", "198.51.100.2"),
            ("allowed.example", "198.51.100.3"),
        ],
    )?;
    let _https = HttpsUpstream::start(&bed.up, &[443])?;
    let (ns, up) = (&bed.devices[0].ns, bed.upstream_ip.clone());
    let status = |name: &str| dig(ns, "dig", &up, name, "A").map(|l| l.status);
    // A TLS handshake to the upstream with this server name, as its DNS status: a reset by
    // the gateway reads as NXDOMAIN (blocked), a completed handshake as NOERROR.
    let handshake = |name: &str| {
        curl_https(ns, &up, name).map(|h| match h {
            Handshake::Reset => "NXDOMAIN".to_string(),
            Handshake::Completed => "NOERROR".to_string(),
        })
    };
    eventually("the HTTPS upstream listening", || {
        handshake("allowed.example").is_ok_and(|s| s == "NOERROR")
    })?;
    assert_eq!(status("flip.example")?, "NXDOMAIN");

    // A bad configuration: rejected as a whole, exit 2, the running one still enforces.
    pins.rewrite(
        "",
        &format!(
            "{}\n[[device]]\nname = \"x\"\nip = \"10.9.9.9\"\npolicy = \"nope\"\n",
            config(&bed, false)
        ),
    )?;
    let out = pins.gateway("reload", &[])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("reload rejected") && err.contains("no policy named \"nope\""),
        "{err}"
    );
    assert_eq!(
        status("flip.example")?,
        "NXDOMAIN",
        "the old policy still enforces"
    );
    assert_eq!(status("allowed.example")?, "NOERROR");

    // A file cut short after its [gateway] section (an editor's truncation, a failed copy)
    // parses, but names no interface: rejected too, the running configuration still enforces.
    pins.rewrite("", "")?;
    let out = pins.gateway("reload", &[])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no [[interface]]"), "{err}");
    assert_eq!(status("flip.example")?, "NXDOMAIN", "still enforcing");

    // An edited file is reloaded by the daemon itself.
    pins.rewrite("", &config(&bed, false))?;
    eventually("the edited configuration in force", || {
        status("flip.example").is_ok_and(|s| s == "NOERROR")
    })?;

    // Reloads under load: one thread queries without pause while this one reloads.
    let stop = AtomicBool::new(false);
    let seen = std::thread::scope(
        |scope| -> anyhow::Result<Vec<(String, &'static str, anyhow::Result<String>)>> {
            let load = scope.spawn(|| {
                let mut seen: Vec<(String, &'static str, anyhow::Result<String>)> = Vec::new();
                let names = ["flip.example", "always.example", "allowed.example"];
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = names[i % names.len()];
                    // Every fourth round is TLS.
                    let (kind, r) = if (i / names.len()) % 4 == 3 {
                        ("TLS handshake", handshake(name))
                    } else {
                        ("DNS query", status(name))
                    };
                    seen.push((name.to_string(), kind, r));
                    i += 1;
                }
                seen
            });
            for k in 0..50 {
                pins.rewrite("", &config(&bed, k % 2 == 0))?;
                let out = pins.gateway("reload", &[])?;
                assert!(
                    out.status.success(),
                    "reload {k}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
            load.join()
                .map_err(|_| anyhow::anyhow!("load thread panicked"))
        },
    )?;
    assert!(
        seen.len() > 50,
        "only {} queries during the reloads",
        seen.len()
    );
    let mut flips = (0, 0);
    for (i, (name, kind, r)) in seen.iter().enumerate() {
        let s = match r {
            Ok(s) => s.as_str(),
            Err(e) => panic!("{kind} {i} for {name}: lost or timed out during reloads: {e:#}"),
        };
        match name.as_str() {
            "always.example" => assert_eq!(s, "NXDOMAIN", "{kind} {i}: always blocked"),
            "allowed.example" => assert_eq!(s, "NOERROR", "{kind} {i}: never blocked"),
            _ => match s {
                "NXDOMAIN" => flips.0 += 1,
                "NOERROR" => flips.1 += 1,
                other => panic!("{kind} {i} for flip.example: {other}"),
            },
        }
    }
    // The last configuration (k = 49: flip allowed) is in force.
    assert_eq!(status("flip.example")?, "NOERROR");
    assert!(daemon.log_text().contains("reloaded"));
    assert_eq!(handshake("flip.example")?, "NOERROR");
    assert_eq!(handshake("always.example")?, "NXDOMAIN");
    eprintln!(
        "{} queries and handshakes during 50 reloads; flip.example blocked {} times, allowed {} times",
        seen.len(),
        flips.0,
        flips.1
    );
    Ok(())
}
