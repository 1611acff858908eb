//! Tier 3 for the device lifecycle and the control API: `gateway suspend` stops a device's
//! traffic (ping and DNS) before it returns and `resume` restores it likewise; a suspension survives `kill -9`
//! of the daemon and a restart; the API refuses requests without the token and with malformed
//! bodies, and says 404 and 409 where they apply; moves and checkouts from the command line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use gateway_testbed::{Bed, Daemon, Dnsmasq, Netns, Pins, check, dig};

/// `curl` against the daemon's API inside `ns`: (status, body).
fn curl(
    ns: &Netns,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let url = format!("http://127.0.0.1:9477/api/v1{path}");
    let mut args = vec![
        "-sS",
        "--max-time",
        "5",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ];
    let auth;
    if let Some(t) = token {
        auth = format!("Authorization: Bearer {t}");
        args.extend(["-H", &auth]);
    }
    if let Some(b) = body {
        args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    args.push(&url);
    let out = ns.run("curl", &args)?;
    let (text, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    Ok((
        code.parse().with_context(|| format!("curl: {out}"))?,
        text.to_string(),
    ))
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Reply times (ping -D) of a ping from `ns` to `to` every 10 ms for `seconds`, run in the
/// background while `during` runs; returns the reply times and what `during` returned.
fn ping_during<T>(
    ns: &Netns,
    to: &str,
    seconds: u32,
    during: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(Vec<f64>, T)> {
    let child = ns
        .command("ping")
        .args([
            "-n",
            "-D",
            "-i",
            "0.01",
            "-W",
            "1",
            "-w",
            &seconds.to_string(),
            to,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let result = during();
    let out = child.wait_with_output()?;
    let replies = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse::<f64>().ok())
        .collect();
    Ok((replies, result?))
}

fn devices(pins: &Pins, ns: &Netns) -> anyhow::Result<serde_json::Value> {
    let text = check(
        "gateway devices",
        pins.gateway_in(ns, "devices", &["--json"])?,
    )?;
    Ok(serde_json::from_str(&text)?)
}

fn device(v: &serde_json::Value, name: &str) -> serde_json::Value {
    v.as_array()
        .and_then(|a| a.iter().find(|d| d["name"] == name))
        .cloned()
        .unwrap_or_default()
}

#[test]
fn suspend_resume_restart_and_the_api() -> anyhow::Result<()> {
    let bed = Bed::new(2)?;
    let body = bed.two_device_config_with(false, "", "");
    let pins = Pins::with_config(Bed::TWO_DEVICE_GATEWAY, &body)?;
    let mut daemon = Daemon::start(&bed.gw, &pins, &["d1", "d2"])?;
    let _dns = Dnsmasq::start(
        &bed.up,
        &bed.upstream_ip,
        &[("allowed.example", "198.51.100.2")],
    )?;
    let (laptop, up) = (&bed.devices[0], bed.upstream_ip.as_str());
    assert_eq!(
        dig(&laptop.ns, "dig", up, "allowed.example", "A")?.status,
        "NOERROR"
    );

    // Suspend while the laptop pings every 10 ms: its pings got through until the command was
    // given, and from the moment the command returns (the new generation is active before it
    // answers) not one fresh ping does.
    let (replies, given) = ping_during(&laptop.ns, up, 2, || {
        let given = now_s();
        let out = check(
            "gateway suspend",
            pins.gateway_in(&bed.gw, "suspend", &["laptop", "--note", "lost on bus 17"])?,
        )?;
        anyhow::ensure!(out.contains("laptop") && out.contains("operator"), "{out}");
        anyhow::ensure!(
            bed.ping(0, 3)? == 0,
            "a ping got through after gateway suspend returned"
        );
        Ok(given)
    })?;
    anyhow::ensure!(
        replies.iter().any(|t| *t < given),
        "the ping never got through: {replies:?}"
    );
    assert!(
        dig(&laptop.ns, "dig", up, "allowed.example", "A").is_err(),
        "DNS of a suspended device"
    );
    assert_eq!(bed.ping(1, 2)?, 2, "the other device is not affected");
    let v = devices(&pins, &bed.gw)?;
    assert_eq!(
        device(&v, "laptop")["suspended_by"],
        serde_json::json!(["operator"]),
        "{v}"
    );

    // Suspending twice is a conflict: exit 2 with the reason.
    let out = pins.gateway_in(&bed.gw, "suspend", &["laptop"])?;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("suspended already"),
        "{out:?}"
    );

    // kill -9, restart: still suspended, from the first frame.
    daemon.kill9()?;
    assert_eq!(bed.ping(0, 2)?, 0, "suspended without the daemon");
    let daemon = Daemon::start(&bed.gw, &pins, &["d1", "d2"])?;
    assert_eq!(bed.ping(0, 2)?, 0, "suspended after the restart");
    let v = devices(&pins, &bed.gw)?;
    assert_eq!(device(&v, "laptop")["suspended"], true, "{v}");
    // And a reload of the configuration file (which does not suspend it) keeps it so.
    check("gateway reload", pins.gateway("reload", &[])?)?;
    assert_eq!(bed.ping(0, 2)?, 0, "suspended after a reload");

    // Resume: the first ping after the command returns gets through.
    check(
        "gateway resume",
        pins.gateway_in(&bed.gw, "resume", &["laptop"])?,
    )?;
    assert_eq!(bed.ping(0, 1)?, 1, "the first ping after gateway resume");
    assert_eq!(
        dig(&laptop.ns, "dig", up, "allowed.example", "A")?.status,
        "NOERROR"
    );

    // The API: the token is required; bodies are validated; unknown devices are 404.
    let token = std::fs::read_to_string(pins.state_dir.join("api.token"))?;
    let token = token.trim();
    assert_eq!(curl(&bed.gw, "GET", "/devices", None, None)?.0, 401);
    assert_eq!(
        curl(
            &bed.gw,
            "GET",
            "/devices",
            Some("not-the-token-at-all"),
            None
        )?
        .0,
        401
    );
    let (code, text) = curl(&bed.gw, "GET", "/devices/laptop", Some(token), None)?;
    assert_eq!(code, 200, "{text}");
    for body in [
        "{",
        r#"{"policy": 5}"#,
        r#"{"policy": "guest", "extra": true}"#,
    ] {
        let (code, text) = curl(
            &bed.gw,
            "POST",
            "/devices/laptop/move",
            Some(token),
            Some(body),
        )?;
        assert_eq!(code, 400, "{body}: {text}");
        assert!(text.contains("\"error\""), "{text}");
    }
    assert_eq!(
        curl(
            &bed.gw,
            "POST",
            "/devices/nobody/suspend",
            Some(token),
            Some("{}")
        )?
        .0,
        404
    );
    assert_eq!(
        curl(&bed.gw, "POST", "/devices/laptop/resume", Some(token), None)?.0,
        409
    );
    assert_eq!(
        curl(&bed.gw, "GET", "/history?device=laptop", Some(token), None)?.0,
        200
    );

    // Move and checkout from the command line.
    let out = check(
        "gateway move",
        pins.gateway_in(&bed.gw, "move", &["laptop", "--policy", "guest", "--json"])?,
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        (v["policy"].as_str(), v["policy_in_force"].as_str()),
        (Some("students"), Some("guest")),
        "{v}"
    );
    let out = check(
        "gateway checkout",
        pins.gateway_in(
            &bed.gw,
            "checkout",
            &[
                "sensor",
                "--borrower",
                "pupil-7",
                "--due",
                "2099-01-01",
                "--policy",
                "guest",
                "--json",
            ],
        )?,
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v["checkout"]["borrower"], "pupil-7", "{v}");
    assert_eq!(v["policy_in_force"], "guest", "{v}");
    check(
        "gateway checkin",
        pins.gateway_in(&bed.gw, "checkin", &["sensor"])?,
    )?;
    let out = check(
        "gateway checkouts",
        pins.gateway_in(&bed.gw, "checkouts", &["--json"])?,
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v[0]["borrower"], "pupil-7", "{v}");
    assert!(v[0]["checked_in"].is_string(), "{v}");
    let (code, text) = curl(&bed.gw, "GET", "/devices/sensor/events", Some(token), None)?;
    assert_eq!(code, 200);
    let events: Vec<String> = serde_json::from_str::<serde_json::Value>(&text)?
        .as_array()
        .ok_or_else(|| anyhow!("{text}"))?
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_string))
        .collect();
    assert_eq!(events, ["checkout", "checkin"]);
    drop(daemon);
    Ok(())
}
