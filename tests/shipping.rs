//! Tier 3 for shipping (SPEC §14): the metrics pushed by remote-write to Debian's Prometheus,
//! and the history shipped to Debian's rsyslog over TCP and TLS — across a 60-second uplink
//! outage, a receiver stopped for 60 seconds, and the daemon killed with -9 — ending with
//! exactly what the gateway decided: the receiver's totals equal the queries made, every
//! decision is received, duplicates only under the same id, none missing; with
//! `pseudonymize = true` no device identifier reaches the receiver.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gateway_testbed::{
    Bed, Daemon, Dnsmasq, Pins, Prometheus, Rsyslog, check, dig, eventually_within, private_ca,
    unique,
};

const IMEI: &str = "356938035643809";
/// How long each outage lasts.
const OUTAGE: Duration = Duration::from_secs(60);

/// The one-device bed's configuration: the laptop (by MAC, with an IMEI in the inventory) in
/// "students", which blocks ads.example; `extra` added.
fn body(bed: &Bed, extra: &str) -> String {
    let dev = &bed.devices[0];
    format!(
        "[[interface]]\nname = \"{}\"\n\n[[policy]]\nname = \"students\"\nblock = [\"ads.example\"]\n\n\
         [[device]]\nname = \"laptop\"\nmac = \"{}\"\nimei = \"{IMEI}\"\npolicy = \"students\"\n\n{extra}\n",
        dev.gw_if, dev.mac
    )
}

/// The upstream resolver, which knows allowed.example.
fn upstream(bed: &Bed) -> anyhow::Result<Dnsmasq> {
    Dnsmasq::start(
        &bed.up,
        &bed.upstream_ip,
        &[("allowed.example", "198.51.100.2")],
    )
}

/// `n` queries for `name` from the bed's device, answered (or, with the uplink down, not)
/// without retries: each is one decision.
fn queries(bed: &Bed, name: &str, n: usize) -> anyhow::Result<()> {
    for _ in 0..n {
        dig(&bed.devices[0].ns, "dig", &bed.upstream_ip, name, "A")?;
    }
    Ok(())
}

/// The wall clock in Unix seconds (Prometheus's timestamps).
fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `gateway status` of the daemon.
fn status(pins: &Pins) -> anyhow::Result<String> {
    check("gateway status", pins.gateway("status", &[])?)
}

/// The Prometheus series of the laptop's decisions with `action`, summed.
fn total(prom: &Prometheus, action: &str) -> f64 {
    prom.number(&format!(
        "sum(gateway_decisions_total{{device=\"laptop\",action=\"{action}\",id=\"bus-17\",site=\"north\"}})"
    ))
    .unwrap_or(-1.0)
}

#[test]
fn metrics_reach_prometheus_by_remote_write_across_an_uplink_outage() -> anyhow::Result<()> {
    let bed = Bed::new(1)?;
    let _dns = upstream(&bed)?;
    let prom = Prometheus::start(&bed.up, &bed.upstream_ip)?;
    let telemetry = format!(
        "[api]\ndevice_labels = \"name\"\n\n[telemetry]\nremote_write_url = \"{}\"\ninterval = 1\nlabels = {{ id = \"bus-17\", site = \"north\" }}\n",
        prom.write_url()
    );
    let pins = Pins::with_config("", &body(&bed, &telemetry))?;
    let daemon = Daemon::start_logging(
        &bed.gw,
        &pins,
        &["d1"],
        "info,gateway_user::observe::ship=debug",
    )?;

    // N blocked, M allowed: the receiver's totals for the device are exactly those.
    queries(&bed, "ads.example", 3)?;
    queries(&bed, "allowed.example", 2)?;
    eventually_within(
        "Prometheus has the device's 3 blocked and 2 allowed",
        30,
        || total(&prom, "block") == 3.0 && total(&prom, "allow") == 2.0,
    )
    .with_context(|| format!("daemon log:\n{}", daemon.log_text()))?;

    // The uplink goes down for a minute, while the device makes more queries (the blocked
    // ones answered by the filter, the allowed ones unanswered but decided and counted).
    bed.gw.ip(&["link", "set", "dev", "up0", "down"])?;
    let cut = now_s();
    let cut_at = Instant::now();
    queries(&bed, "ads.example", 4)?;
    for _ in 0..2 {
        let _ = bed.devices[0].ns.output(
            "dig",
            &[
                "+tries=1",
                "+time=1",
                &format!("@{}", bed.upstream_ip),
                "allowed.example",
                "A",
            ],
        );
    }
    std::thread::sleep(Duration::from_secs(5));
    let during = status(&pins)?;
    assert!(during.contains("remote-write: http://"), "{during}");
    while cut_at.elapsed() < OUTAGE {
        std::thread::sleep(Duration::from_millis(200));
    }
    let waiting = status(&pins)?;
    let backlog: u64 = waiting
        .lines()
        .find_map(|l| l.trim().strip_prefix("backlog: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no backlog in\n{waiting}"))?;
    assert!(
        backlog > 0,
        "samples wait while the uplink is down:\n{waiting}"
    );
    assert!(waiting.contains("last error:"), "{waiting}");
    bed.gw.ip(&["link", "set", "dev", "up0", "up"])?;
    let restored = now_s();

    // The receiver ends with the exact totals…
    eventually_within("Prometheus has the totals after the outage", 90, || {
        total(&prom, "block") == 7.0 && total(&prom, "allow") == 4.0
    })
    .with_context(|| format!("status:\n{}", status(&pins).unwrap_or_default()))?;
    // The totals are in as soon as the first late batch is; the backlog is sent in order, so
    // it is all in once a sample from after the outage is.
    eventually_within("the backlog sent", 60, || {
        prom.number(
            "max(timestamp(gateway_decisions_total{device=\"laptop\",action=\"block\",id=\"bus-17\"}))",
        )
        .is_ok_and(|t| t > restored + 1.0)
    })?;
    // …and the outage's own samples, which arrived late: the counter's raw samples cover the
    // outage at about the interval, and show the blocked queries made during it at the time
    // they were made.
    let raw = prom
        .query("gateway_decisions_total{device=\"laptop\",action=\"block\",id=\"bus-17\"}[10m]")?;
    let values = raw
        .as_array()
        .and_then(|a| a.first())
        .and_then(|s| s["values"].as_array())
        .context("no raw samples")?;
    let points: Vec<(f64, f64)> = values
        .iter()
        .filter_map(|v| Some((v[0].as_f64()?, v[1].as_str()?.parse::<f64>().ok()?)))
        .collect();
    let (from, to) = (cut, restored);
    let inside: Vec<&(f64, f64)> = points
        .iter()
        .filter(|(t, _)| *t > from && *t < to)
        .collect();
    assert!(
        inside.len() as f64 >= (to - from) * 0.8,
        "{} samples inside an outage of {:.0} s at 1 s ({from:.1} to {to:.1}): {points:?}\ndaemon log:\n{}",
        inside.len(),
        to - from,
        daemon.log_text()
    );
    let worst = points
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .fold(0.0f64, f64::max);
    assert!(worst <= 5.0, "a gap of {worst:.1} s in the samples");
    assert!(
        inside.iter().any(|(t, v)| *v == 7.0 && *t < to - 30.0),
        "the outage's queries are at their own time: {inside:?}"
    );
    let after = status(&pins)?;
    assert!(after.contains("remote-write:"), "{after}");
    drop(daemon);
    Ok(())
}

/// One received message: its id and fields (the structured data), and the whole text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Received {
    id: String,
    fields: BTreeMap<String, String>,
    text: String,
}

/// The RFC 5424 message `m` as received: `<PRI>1 TIME HOST APP PROCID MSGID [SD] MSG`.
fn parse(m: &str) -> anyhow::Result<Received> {
    let sd = m
        .split_once(" [decision@32473 ")
        .map(|(_, rest)| rest)
        .with_context(|| format!("no structured data in {m}"))?;
    let mut fields = BTreeMap::new();
    let mut rest = sd;
    loop {
        let Some((key, tail)) = rest.split_once("=\"") else {
            bail!("bad SD in {m}");
        };
        let mut value = String::new();
        let mut chars = tail.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    if let Some((_, c)) = chars.next() {
                        value.push(c);
                    }
                }
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => bail!("unterminated value in {m}"),
            }
        };
        fields.insert(key.trim().to_string(), value);
        rest = &tail[end + 1..];
        if rest.starts_with(']') {
            break;
        }
    }
    Ok(Received {
        id: fields.remove("id").context("no id")?,
        fields,
        text: m.to_string(),
    })
}

/// The history as `gateway log --json` has it: each row's fields as syslog carries them.
fn history(pins: &Pins) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
    let text = check(
        "gateway log",
        pins.gateway("log", &["--json", "--limit", "0"])?,
    )?;
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            let mut f = BTreeMap::new();
            for key in [
                "device", "policy", "protocol", "name", "action", "reason", "category",
            ] {
                if let Some(s) = v[key].as_str() {
                    f.insert(key.to_string(), s.to_string());
                }
            }
            f.insert("qtype".into(), v["qtype"].to_string());
            Ok(f)
        })
        .collect()
}

/// Every row of the history is received with its fields, once per id; a duplicate is the
/// same message under the same id. Returns the distinct messages.
fn all_received(pins: &Pins, rsyslog: &Rsyslog) -> anyhow::Result<Vec<Received>> {
    let mut by_id: BTreeMap<String, Received> = BTreeMap::new();
    for m in rsyslog.messages() {
        let r = parse(&m)?;
        if let Some(seen) = by_id.get(&r.id) {
            anyhow::ensure!(
                seen.text == r.text,
                "{} twice, differently:\n{}\n{}",
                r.id,
                seen.text,
                r.text
            );
        }
        by_id.insert(r.id.clone(), r);
    }
    let mut want: Vec<BTreeMap<String, String>> = history(pins)?;
    let mut got: Vec<BTreeMap<String, String>> = by_id.values().map(|r| r.fields.clone()).collect();
    want.sort();
    got.sort();
    anyhow::ensure!(
        want == got,
        "{} rows in the history, {} distinct messages received",
        want.len(),
        got.len()
    );
    Ok(by_id.into_values().collect())
}

#[test]
fn the_history_reaches_rsyslog_whole_across_a_stopped_receiver_and_a_killed_daemon()
-> anyhow::Result<()> {
    let bed = Bed::new(1)?;
    let _dns = upstream(&bed)?;
    let mut rsyslog = Rsyslog::start(&bed.up, &bed.upstream_ip, 5514)?;
    let ship = format!(
        "[history]\npseudonymize = true\nship = \"tcp://{}:5514\"\n",
        bed.upstream_ip
    );
    let pins = Pins::with_config("", &body(&bed, &ship))?;
    let mut daemon = Daemon::start(&bed.gw, &pins, &["d1"])?;
    let mut made = 0;
    // `n` blocked and `n` allowed queries, counted in `made`.
    let round = |n: usize, made: &mut usize| -> anyhow::Result<()> {
        queries(&bed, "ads.example", n)?;
        queries(&bed, "allowed.example", n)?;
        *made += 2 * n;
        Ok(())
    };
    let settled = |pins: &Pins, rsyslog: &Rsyslog, made: usize, what: &str| {
        eventually_within(what, 60, || {
            history(pins).is_ok_and(|h| h.len() == made) && all_received(pins, rsyslog).is_ok()
        })
        .with_context(|| {
            format!(
                "{:?}\nstatus:\n{}",
                all_received(pins, rsyslog).err(),
                status(pins).unwrap_or_default()
            )
        })
    };
    round(3, &mut made)?;
    settled(&pins, &rsyslog, made, "the first decisions received")?;

    // The receiver is stopped for a minute while the device keeps querying.
    rsyslog.stop()?;
    let stopped = Instant::now();
    while stopped.elapsed() < OUTAGE {
        round(1, &mut made)?;
        std::thread::sleep(Duration::from_secs(5));
    }
    let waiting = status(&pins)?;
    assert!(
        waiting.contains("syslog: tcp://") && waiting.contains("last error:"),
        "{waiting}"
    );
    rsyslog.resume(&bed.up)?;
    settled(
        &pins,
        &rsyslog,
        made,
        "the outage's decisions received late",
    )?;

    // The daemon is killed with -9 in the middle of traffic, and started again: the filter
    // went on deciding, the pinned ring kept the events, the cursor on disk says where to
    // go on from.
    round(2, &mut made)?;
    daemon.kill9()?;
    round(2, &mut made)?;
    let daemon = Daemon::start(&bed.gw, &pins, &["d1"])?;
    round(1, &mut made)?;
    let got = {
        settled(
            &pins,
            &rsyslog,
            made,
            "every decision received after a restart",
        )?;
        all_received(&pins, &rsyslog)?
    };
    assert_eq!(got.len(), made);
    let blocked = got.iter().filter(|r| r.fields["action"] == "block").count();
    assert_eq!(blocked, made / 2);
    assert!(got.iter().all(|r| r.fields["policy"] == "students"
        && r.fields["protocol"] == "dns"
        && r.fields["qtype"] == "1"));
    let ids: BTreeSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), made, "one id per decision");

    // Pseudonymised: no device name, MAC, address or IMEI reached the receiver.
    let raw = std::fs::read_to_string(&rsyslog.out)?;
    let dev = &bed.devices[0];
    for secret in [
        "laptop",
        dev.mac.as_str(),
        &dev.mac.to_uppercase(),
        &dev.mac.replace(':', ""),
        dev.ip.as_str(),
        IMEI,
    ] {
        assert!(!raw.contains(secret), "{secret} reached the receiver");
    }
    drop(daemon);
    Ok(())
}

#[test]
fn the_history_reaches_rsyslog_over_tls_from_a_private_ca() -> anyhow::Result<()> {
    let bed = Bed::new(1)?;
    let _dns = upstream(&bed)?;
    let work = std::env::temp_dir().join(unique("gwshiptls"));
    std::fs::create_dir_all(&work)?;
    let (ca, cert, key) = private_ca(&work, &bed.upstream_ip)?;
    let rsyslog = Rsyslog::start_tls(&bed.up, &bed.upstream_ip, 6514, &ca, &cert, &key)?;
    let ship = format!(
        "[history]\nship = \"tls://{}\"\nship_only = \"blocked\"\nship_ca_file = \"{}\"\n",
        bed.upstream_ip,
        ca.display()
    );
    let pins = Pins::with_config("", &body(&bed, &ship))?;
    let daemon = Daemon::start(&bed.gw, &pins, &["d1"])?;
    queries(&bed, "ads.example", 3)?;
    queries(&bed, "allowed.example", 2)?;
    eventually_within("three blocked decisions over TLS", 30, || {
        rsyslog.messages().len() >= 3
    })
    .with_context(|| format!("status:\n{}", status(&pins).unwrap_or_default()))?;
    std::thread::sleep(Duration::from_secs(2));
    let got: Vec<Received> = rsyslog
        .messages()
        .iter()
        .map(|m| parse(m))
        .collect::<anyhow::Result<_>>()?;
    let ids: BTreeSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "only the blocked ones: {got:?}");
    for r in &got {
        assert_eq!(r.fields["device"], "laptop");
        assert_eq!(r.fields["name"], "ads.example");
        assert_eq!(r.fields["action"], "block");
        assert!(r.text.starts_with("<133>1 "), "{}", r.text);
    }
    drop(daemon);
    drop(pins);

    // Without the private CA, Mozilla's roots do not know the receiver: nothing is sent, and
    // the status says why.
    let pins2 = Pins::with_config(
        "",
        &body(
            &bed,
            &format!("[history]\nship = \"tls://{}\"\n", bed.upstream_ip),
        ),
    )?;
    let _daemon = Daemon::start(&bed.gw, &pins2, &["d1"])?;
    queries(&bed, "ads.example", 1)?;
    eventually_within("the certificate refused", 20, || {
        status(&pins2).is_ok_and(|s| s.contains("last error:") && s.contains("certificate"))
    })
    .with_context(|| status(&pins2).unwrap_or_default())?;
    assert_eq!(
        rsyslog
            .messages()
            .iter()
            .filter_map(|m| parse(m).ok())
            .map(|r| r.id)
            .collect::<BTreeSet<_>>()
            .len(),
        3
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
