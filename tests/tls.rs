//! Tier 3 for TLS: real clients (`curl`, `openssl s_client`, `gnutls-cli`, headless `chromium`)
//! in two device namespaces with different policies, offloads off on every veth so segments are
//! as on a wire, an HTTPS upstream (socat). An allowed server name completes its handshake; a
//! blocked one fails with a connection reset from the gateway on one device and succeeds on the
//! other. QUIC Initials are dropped for one policy; port 853 is blocked.

use std::process::Stdio;

use anyhow::{Context as _, bail};
use gateway_testbed::{
    Bed, Daemon, Handshake, HttpsUpstream, Netns, Pins, curl_https, eventually, output_text, unique,
};

/// The upstream's address on the bed.
const UPSTREAM: &str = "10.201.99.2";

fn curl(ns: &Netns, name: &str) -> anyhow::Result<Handshake> {
    curl_https(ns, UPSTREAM, name)
}

fn s_client(ns: &Netns, name: &str) -> anyhow::Result<Handshake> {
    let o = ns
        .command("timeout")
        .args(["20", "openssl", "s_client", "-connect"])
        .arg(format!("{UPSTREAM}:443"))
        .args(["-servername", name])
        .stdin(Stdio::null())
        .output()?;
    let t = output_text(&o);
    if o.status.success() && t.contains("BEGIN CERTIFICATE") {
        Ok(Handshake::Completed)
    } else if t.contains("errno=104") || t.contains("reset") {
        Ok(Handshake::Reset)
    } else {
        bail!("openssl s_client {name}: {t}")
    }
}

fn gnutls(ns: &Netns, name: &str) -> anyhow::Result<Handshake> {
    let o = ns
        .command("timeout")
        .args([
            "20",
            "gnutls-cli",
            "--insecure",
            "--port",
            "443",
            "--sni-hostname",
        ])
        .arg(name)
        .arg(UPSTREAM)
        .stdin(Stdio::null())
        .output()?;
    let t = output_text(&o);
    if t.contains("Handshake was completed") {
        Ok(Handshake::Completed)
    } else if t.contains("Error in the push function")
        || t.contains("Error in the pull function")
        || t.contains("reset")
    {
        Ok(Handshake::Reset)
    } else {
        bail!("gnutls-cli {name}: {t}")
    }
}

fn chromium(ns: &Netns, name: &str) -> anyhow::Result<Handshake> {
    let profile = std::env::temp_dir().join(unique("gwchromium"));
    let o = ns
        .command("timeout")
        .args([
            "60",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
        ])
        .args([
            "--ignore-certificate-errors",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--host-resolver-rules=MAP * {UPSTREAM}"))
        .args(["--timeout=15000", "--dump-dom", &format!("https://{name}/")])
        .stdin(Stdio::null())
        .output()?;
    let _ = std::fs::remove_dir_all(&profile);
    // Without a session bus chromium logs D-Bus errors by the dozen: not ours.
    let t: String = output_text(&o)
        .lines()
        .filter(|l| !l.contains("dbus"))
        .collect::<Vec<_>>()
        .join("\n");
    if t.contains("upstream answered") {
        Ok(Handshake::Completed)
    } else if t.contains("ERR_CONNECTION_RESET") {
        Ok(Handshake::Reset)
    } else {
        bail!("chromium {name}: {t}")
    }
}

/// A decision count from `gateway stats`.
fn decisions(pins: &Pins, device: &str, proto: &str, action: &str, reason: &str) -> u64 {
    let Ok(s) = pins.stats() else { return 0 };
    s["decisions"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| {
                    r["device"] == device
                        && r["proto"] == proto
                        && r["action"] == action
                        && r["reason"] == reason
                })
                .filter_map(|r| r["count"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn real_clients_two_policies() -> anyhow::Result<()> {
    let bed = Bed::new(2)?;
    bed.offloads_off()?;
    let (laptop, sensor) = (&bed.devices[0], &bed.devices[1]);
    let body = format!(
        r#"
[[interface]]
name = "{}"

[[interface]]
name = "{}"

[[policy]]
name = "students"
block = ["blocked.test"]
quic = "block"
block_ports = ["853/tcp"]

[[policy]]
name = "staff"

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
    let _upstream = HttpsUpstream::start(&bed.up, &[443, 853])?;
    // The server is up once the allowed name completes from the staff device.
    eventually("the upstream listening", || {
        curl(&sensor.ns, "blocked.test").is_ok_and(|r| r == Handshake::Completed)
    })?;

    type Client = fn(&Netns, &str) -> anyhow::Result<Handshake>;
    let clients: [(&str, Client); 4] = [
        ("curl", curl),
        ("openssl s_client", s_client),
        ("gnutls-cli", gnutls),
        ("chromium", chromium),
    ];
    for (tool, client) in clients {
        let before = decisions(&pins, "laptop", "tls", "block", "explicit");
        assert_eq!(
            client(&laptop.ns, "allowed.test")?,
            Handshake::Completed,
            "{tool}: allowed name"
        );
        let r = client(&laptop.ns, "blocked.test")
            .with_context(|| format!("stats: {}", pins.stats().unwrap_or_default()))?;
        assert_eq!(r, Handshake::Reset, "{tool}: blocked name");
        assert_eq!(
            client(&laptop.ns, "WWW.Blocked.TEST")?,
            Handshake::Reset,
            "{tool}: a subdomain, in capitals"
        );
        assert_eq!(
            client(&sensor.ns, "blocked.test")?,
            Handshake::Completed,
            "{tool}: the same name on the staff device"
        );
        eventually(&format!("{tool}: blocks counted"), || {
            decisions(&pins, "laptop", "tls", "block", "explicit") >= before + 2
        })?;
    }
    // Chromium's ClientHello (X25519MLKEM768) spans two segments: flows were continued.
    let s = pins.stats()?;
    let continued = s["reasons"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["reason"] == "tls_pending")
                .filter_map(|r| r["packets"].as_u64())
                .sum::<u64>()
        })
        .unwrap_or(0);
    assert!(
        continued > 0,
        "no ClientHello was continued across segments: {s}"
    );

    // QUIC: an Initial (v1 long header, padded) to UDP 443 from each device.
    let quic =
        format!("printf '\\xc3\\x00\\x00\\x00\\x01\\x08%01194d' 0 > /dev/udp/{UPSTREAM}/443");
    laptop.ns.run("bash", &["-c", &quic])?;
    sensor.ns.run("bash", &["-c", &quic])?;
    eventually("QUIC Initial blocked for the laptop", || {
        decisions(&pins, "laptop", "quic", "block", "quic") == 1
    })?;
    eventually("QUIC Initial allowed for the sensor", || {
        decisions(&pins, "sensor", "quic", "allow", "quic") == 1
    })?;

    // Port 853/tcp (DNS over TLS): no connection for the laptop, one for the sensor.
    let connect = format!("timeout 3 bash -c 'echo > /dev/tcp/{UPSTREAM}/853'");
    assert!(
        !laptop
            .ns
            .output("bash", &["-c", &connect])?
            .status
            .success(),
        "853/tcp blocked for the laptop"
    );
    assert!(
        sensor
            .ns
            .output("bash", &["-c", &connect])?
            .status
            .success(),
        "853/tcp open for the sensor"
    );
    assert!(decisions(&pins, "laptop", "port", "block", "blocked_port") >= 1);

    // Without the daemon (kill -9), the pinned filter judges ClientHellos as before: the
    // programs it tail-calls stay in their pinned array.
    drop(daemon);
    for (tool, client) in [("curl", curl as Client), ("chromium", chromium)] {
        assert_eq!(
            client(&laptop.ns, "blocked.test")?,
            Handshake::Reset,
            "{tool}: blocked name without the daemon"
        );
        assert_eq!(
            client(&laptop.ns, "allowed.test")?,
            Handshake::Completed,
            "{tool}: allowed name without the daemon"
        );
    }
    Ok(())
}
