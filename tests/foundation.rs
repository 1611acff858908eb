//! Tier 3: the foundation in network namespaces with real traffic.
//!
//! Two devices (one known by MAC, one by address and suspended) behind the gateway, an
//! upstream. Per-device counters equal what each device's interface sent; the suspended
//! device's pings are dropped while the other's pass; after `kill -9` the filter stays attached
//! and still drops; a restarted daemon continues the counters; `gateway detach` leaves no XDP
//! program and no pins.

use std::time::Duration;

use gateway_testbed::{Bed, Daemon, Pins};

/// A two-device bed with the filter running: (bed, pins, daemon).
fn started(sensor_suspended: bool) -> anyhow::Result<(Bed, Pins, Daemon)> {
    let bed = Bed::new(2)?;
    let pins = Pins::with_config(
        Bed::TWO_DEVICE_GATEWAY,
        &bed.two_device_config(sensor_suspended),
    )?;
    let daemon = Daemon::start(&bed.gw, &pins, &["d1", "d2"])?;
    Ok((bed, pins, daemon))
}

#[test]
fn counters_suspension_survive_kill_restart_and_detach() -> anyhow::Result<()> {
    let (bed, pins, mut daemon) = started(true)?;

    let laptop = &bed.devices[0];
    let sensor = &bed.devices[1];
    let tx = |d: &gateway_testbed::Device| d.ns.stat("eth0", "tx_packets");

    // Both interfaces report their attach mode; veth supports native XDP.
    let stats = pins.stats()?;
    let modes: Vec<&str> = stats["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["mode"].as_str())
        .collect();
    assert_eq!(modes, ["native", "native"], "{stats}");

    let (l0, s0) = (pins.device("laptop")?, pins.device("sensor")?);
    let (ltx0, stx0) = (tx(laptop)?, tx(sensor)?);
    assert_eq!(bed.ping(0, 5)?, 5, "the laptop's pings pass");
    assert_eq!(
        bed.ping(1, 4)?,
        0,
        "the suspended sensor's pings are dropped"
    );
    let (l1, s1) = (pins.device("laptop")?, pins.device("sensor")?);
    let (ltx1, stx1) = (tx(laptop)?, tx(sensor)?);
    assert!(ltx1 - ltx0 >= 5 && stx1 - stx0 >= 4);
    assert_eq!(
        l1.0 - l0.0,
        ltx1 - ltx0,
        "laptop: counted frames = frames its interface sent"
    );
    assert_eq!(l1.2 - l0.2, 0, "laptop: nothing dropped");
    assert_eq!(
        s1.0 - s0.0,
        stx1 - stx0,
        "sensor: counted frames = frames its interface sent"
    );
    assert_eq!(s1.2 - s0.2, stx1 - stx0, "sensor: every frame dropped");
    let suspended_decisions: u64 = pins.stats()?["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["device"] == "sensor" && d["proto"] == "suspended" && d["action"] == "block")
        .filter_map(|d| d["count"].as_u64())
        .sum();
    assert_eq!(
        suspended_decisions, s1.2,
        "each dropped frame is a counted decision"
    );

    // kill -9: the filter stays attached and enforcing; counters keep counting.
    daemon.kill9()?;
    assert!(
        bed.gw.has_xdp("d1")? && bed.gw.has_xdp("d2")?,
        "XDP stays attached after kill -9"
    );
    assert_eq!(bed.ping(1, 3)?, 0, "still dropped without the daemon");
    assert_eq!(bed.ping(0, 2)?, 2, "still passed without the daemon");
    let (l2, s2) = (pins.device("laptop")?, pins.device("sensor")?);
    assert_eq!(l2.0 - l1.0, tx(laptop)? - ltx1);
    assert_eq!(s2.2 - s1.2, tx(sensor)? - stx1);

    // Restart: adopts the pins; counters continue from where they were.
    let (ltx2, stx2) = (tx(laptop)?, tx(sensor)?);
    let daemon2 = Daemon::start(&bed.gw, &pins, &["d1", "d2"])?;
    let (l3, s3) = (pins.device("laptop")?, pins.device("sensor")?);
    assert_eq!(
        (l3.0, s3.0),
        (l2.0, s2.0),
        "counters are not reset by a restart"
    );
    assert!(
        daemon2.log_text().contains("adopted the pinned maps"),
        "{}",
        daemon2.log_text()
    );
    assert_eq!(bed.ping(0, 3)?, 3);
    assert_eq!(bed.ping(1, 2)?, 0);
    let (l4, s4) = (pins.device("laptop")?, pins.device("sensor")?);
    assert_eq!(l4.0 - l3.0, tx(laptop)? - ltx2);
    assert_eq!(s4.2 - s3.2, tx(sensor)? - stx2);

    // Detach: nothing attached, no pins, and the sensor's traffic flows again.
    let out = pins.gateway("detach", &[])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !bed.gw.has_xdp("d1")? && !bed.gw.has_xdp("d2")?,
        "no XDP program left"
    );
    assert!(
        !pins.dir.exists(),
        "no pins left under {}",
        pins.dir.display()
    );
    assert_eq!(bed.ping(1, 2)?, 2, "detached: nothing filters any more");
    // The running daemon notices it was detached and exits on its own.
    let mut daemon2 = daemon2;
    let status = daemon2.wait_exit(Duration::from_secs(5))?;
    assert!(status.success(), "daemon exit status {status}");
    Ok(())
}

#[test]
fn sighup_reload_applies_and_a_bad_config_keeps_the_running_one() -> anyhow::Result<()> {
    let (bed, pins, daemon) = started(false)?;
    assert_eq!(bed.ping(1, 2)?, 2, "not suspended yet");

    // Suspend by configuration, reload with SIGHUP.
    let body = bed.two_device_config(true);
    pins.rewrite(Bed::TWO_DEVICE_GATEWAY, &body)?;
    daemon.signal(libc::SIGHUP)?;
    wait_for(|| daemon.log_text().matches("reloaded").count() >= 1)?;
    assert_eq!(bed.ping(1, 2)?, 0, "suspended after the reload");
    assert_eq!(bed.ping(0, 2)?, 2, "the laptop is unaffected");

    // A configuration that does not validate is rejected; the running one stays.
    pins.rewrite(
        Bed::TWO_DEVICE_GATEWAY,
        &format!(
            "{body}\n[[device]]\nname = \"broken\"\nip = \"10.0.0.300\"\npolicy = \"students\"\n"
        ),
    )?;
    daemon.signal(libc::SIGHUP)?;
    wait_for(|| daemon.log_text().contains("reload rejected"))?;
    assert!(
        daemon.log_text().contains("10.0.0.300"),
        "the error names the bad value: {}",
        daemon.log_text()
    );
    assert_eq!(
        bed.ping(1, 2)?,
        0,
        "still suspended: the old configuration is enforced"
    );
    assert_eq!(bed.ping(0, 2)?, 2);
    Ok(())
}

fn wait_for(mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("condition not met within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
