//! Tier 3 for counters and history: real DNS queries from two devices with different `log`
//! settings; the daemon's `/metrics` (scraped with curl in its namespace) equals what was sent,
//! passes `promtool check metrics`, and has every metric the Grafana dashboard queries; the
//! history has one row per logged decision and none for `log = none`; `forget` and `export`
//! work per device; decisions made while no daemon ran are stored after a restart, under the
//! device and policy they were decided for though the new configuration renumbers the policies
//! and drops the device; with
//! `pseudonymize = true` no device identifier is anywhere in the database files.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, anyhow};
use gateway_testbed::{Bed, Daemon, Dnsmasq, Netns, Pins, check, dig, eventually};

const IMEI: &str = "356938035643809";

/// A policy listed before the others: it takes their numbers.
const GUESTS_FIRST: &str = "[[policy]]\nname = \"guests\"\n";

fn body(bed: &Bed, history: &str, first_policy: &str) -> String {
    let (tablet, sensor) = (&bed.devices[0], &bed.devices[1]);
    format!(
        r#"
[api]
device_labels = "name"

[history]
{history}

[[interface]]
name = "{}"

[[interface]]
name = "{}"

[[category]]
name = "ads"
domains = ["ads.example"]

{first_policy}
[[policy]]
name = "students"
block_categories = ["ads"]

[[policy]]
name = "quiet"
block_categories = ["ads"]
log = "none"

[[device]]
name = "tablet"
mac = "{}"
policy = "students"
imei = "{IMEI}"

[[device]]
name = "sensor"
ip = "{}"
policy = "quiet"
"#,
        tablet.gw_if, sensor.gw_if, tablet.mac, sensor.ip
    )
}

/// One scrape of the daemon's `/metrics`, from inside its namespace.
fn scrape(gw: &Netns) -> anyhow::Result<String> {
    gw.run(
        "curl",
        &["-sS", "--max-time", "5", "http://127.0.0.1:9477/metrics"],
    )
}

/// The value of the sample `name{labels}` whose labels include all of `want`; the sum if
/// several match.
fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let labels: BTreeMap<&str, &str> = labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            want.iter()
                .all(|(k, v)| labels.get(k) == Some(v))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// `gateway log --json` rows.
fn log(pins: &Pins, args: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut a = vec!["--json", "--limit", "0"];
    a.extend_from_slice(args);
    let text = check("gateway log", pins.gateway("log", &a)?)?;
    text.lines()
        .map(|l| serde_json::from_str(l).context("a JSON line"))
        .collect()
}

/// Every metric name the dashboard's queries use.
fn dashboard_metrics() -> anyhow::Result<BTreeSet<String>> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    let mut names = BTreeSet::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("gateway_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    anyhow::ensure!(names.len() >= 10, "the dashboard queries only {names:?}");
    Ok(names)
}

#[test]
fn metrics_and_history_match_what_was_sent() -> anyhow::Result<()> {
    let bed = Bed::new(2)?;
    let (tablet, sensor) = (&bed.devices[0], &bed.devices[1]);
    let pins = Pins::with_config("", &body(&bed, "", ""))?;
    let daemon = Daemon::start(&bed.gw, &pins, &["d1", "d2"])?;
    let _upstream = Dnsmasq::start(
        &bed.up,
        &bed.upstream_ip,
        &[
            ("allowed.example", "198.51.100.2"),
            ("ads.example", "198.51.100.1"),
        ],
    )?;
    let up = bed.upstream_ip.as_str();

    // The tablet: 3 blocked and 2 allowed; the sensor (log = none): 2 blocked and 1 allowed.
    let sent = [
        (
            tablet,
            vec!["ads.example", "www.ads.example", "ADS.example"],
            vec!["allowed.example", "allowed.example"],
        ),
        (
            sensor,
            vec!["ads.example", "x.ads.example"],
            vec!["allowed.example"],
        ),
    ];
    for (dev, blocked, allowed) in &sent {
        for name in blocked {
            assert_eq!(
                dig(&dev.ns, "dig", up, name, "A")?.status,
                "NXDOMAIN",
                "{name}"
            );
        }
        for name in allowed {
            assert_eq!(
                dig(&dev.ns, "dig", up, name, "A")?.status,
                "NOERROR",
                "{name}"
            );
        }
    }

    // Metrics: what each device sent, by action, with its policy and the category.
    let mut text = String::new();
    eventually("the metrics count every query", || {
        text = scrape(&bed.gw).unwrap_or_default();
        sample(&text, "gateway_decisions_total", &[("protocol", "dns")]) >= 8.0
            && sample(&text, "gateway_history_events_total", &[]) >= 5.0
    })
    .map_err(|e| anyhow!("{e}\n{text}\n{}", daemon.log_text()))?;
    for (device, policy, blocked, allowed) in [
        ("tablet", "students", 3.0, 2.0),
        ("sensor", "quiet", 2.0, 1.0),
    ] {
        let d = [("device", device), ("policy", policy), ("protocol", "dns")];
        let block = [
            d.as_slice(),
            &[
                ("action", "block"),
                ("reason", "category"),
                ("category", "ads"),
            ],
        ]
        .concat();
        assert_eq!(
            sample(&text, "gateway_decisions_total", &block),
            blocked,
            "{device} blocked\n{text}"
        );
        let allow = [d.as_slice(), &[("action", "allow")]].concat();
        assert_eq!(
            sample(&text, "gateway_decisions_total", &allow),
            allowed,
            "{device} allowed\n{text}"
        );
    }
    assert_eq!(
        sample(&text, "gateway_frames_answered_total", &[]),
        5.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "gateway_interface_attached", &[("interface", "d1")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "gateway_devices", &[("policy", "quiet")]),
        1.0,
        "{text}"
    );
    // The sensor's policy logs nothing: not even a ring event.
    assert_eq!(
        sample(&text, "gateway_history_events_total", &[]),
        5.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "gateway_events_lost_total", &[]),
        0.0,
        "{text}"
    );

    // promtool accepts the scrape.
    let file = std::env::temp_dir().join(format!("{}.prom", gateway_testbed::unique("scrape")));
    std::fs::write(&file, &text)?;
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", file.display()))
        .output()?;
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every metric the dashboard queries is exported.
    // (A family is exported when it is declared, with or without samples yet.)
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split(' ').next(),
            None if !l.starts_with('#') => l.split(['{', ' ']).next(),
            None => None,
        })
        .collect();
    for m in dashboard_metrics()? {
        assert!(
            exported.contains(m.as_str()),
            "the dashboard queries {m}, which is not exported"
        );
    }

    // History: one row per logged decision, none for the sensor.
    let mut rows = Vec::new();
    eventually("the history has the tablet's decisions", || {
        rows = log(&pins, &["--device", "tablet"]).unwrap_or_default();
        rows.len() >= 5
    })?;
    assert_eq!(rows.len(), 5, "{rows:?}");
    let names: BTreeMap<String, usize> = rows.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(format!(
            "{}:{}",
            r["name"].as_str().unwrap_or("?"),
            r["action"].as_str().unwrap_or("?")
        ))
        .or_default() += 1;
        m
    });
    assert_eq!(
        names,
        BTreeMap::from([
            ("ads.example:block".to_string(), 2),
            ("www.ads.example:block".to_string(), 1),
            ("allowed.example:allow".to_string(), 2),
        ])
    );
    assert!(
        rows.iter()
            .all(|r| r["policy"] == "students" && r["protocol"] == "dns" && r["qtype"] == 1)
    );
    assert!(
        log(&pins, &["--device", "sensor"])?.is_empty(),
        "log = none left rows"
    );
    assert_eq!(
        log(&pins, &["--action", "block", "--name", "ads.example"])?.len(),
        3
    );
    assert_eq!(
        log(&pins, &["--since", "10m", "--protocol", "dns"])?.len(),
        5
    );
    assert!(log(&pins, &["--until", "1h"])?.is_empty());
    // Bad filters are bad input.
    let out = pins.gateway("log", &["--action", "blocked"])?;
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // Export, then forget.
    let export = check("gateway export", pins.gateway("export", &["tablet"])?)?;
    let doc: serde_json::Value = serde_json::from_str(&export)?;
    assert_eq!(doc["decisions"].as_array().map(Vec::len), Some(5), "{doc}");
    let out = check(
        "gateway forget",
        pins.gateway("forget", &["tablet", "--json"])?,
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v["deleted"], 5, "{v}");
    assert!(log(&pins, &["--device", "tablet"])?.is_empty());

    // Decisions made while no daemon runs wait in the pinned ring. A daemon started on a
    // configuration that lists a policy before the tablet's, and no longer lists the tablet,
    // names them by the device and the policy they were decided for, not by what has their
    // numbers now.
    drop(daemon);
    for name in ["ads.example", "www.ads.example"] {
        assert_eq!(
            dig(&tablet.ns, "dig", up, name, "A")?.status,
            "NXDOMAIN",
            "{name}"
        );
    }
    let full = body(&bed, "", GUESTS_FIRST);
    let without_tablet = full.replace(
        &format!(
            "[[device]]\nname = \"tablet\"\nmac = \"{}\"\npolicy = \"students\"\nimei = \"{IMEI}\"\n",
            tablet.mac
        ),
        "",
    );
    assert_ne!(without_tablet, full);
    pins.rewrite("", &without_tablet)?;
    let daemon = Daemon::start(&bed.gw, &pins, &["d1", "d2"])?;
    let mut rows = Vec::new();
    eventually("the decisions made while no daemon ran", || {
        rows = log(&pins, &["--device", "tablet"]).unwrap_or_default();
        rows.len() >= 2
    })
    .map_err(|e| anyhow!("{e}\n{}", daemon.log_text()))?;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r["policy"] == "students" && r["action"] == "block"),
        "{rows:?}"
    );
    check(
        "gateway forget",
        pins.gateway("forget", &["tablet", "--json"])?,
    )?;

    // Pseudonymised: the rows are found by the device name, but no identifier of the device is
    // in the files.
    pins.rewrite("", &body(&bed, "pseudonymize = true", GUESTS_FIRST))?;
    let out = check("gateway reload", pins.gateway("reload", &[])?)?;
    assert!(out.contains("reload"), "{out}");
    for name in ["ads.example", "allowed.example"] {
        dig(&tablet.ns, "dig", up, name, "A")?;
    }
    let mut rows = Vec::new();
    eventually("pseudonymised rows", || {
        rows = log(&pins, &["--device", "tablet"]).unwrap_or_default();
        rows.len() >= 2
    })?;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let pseudonym = rows[0]["device"].as_str().unwrap_or_default().to_string();
    assert!(pseudonym.starts_with("p-"), "{rows:?}");
    drop(daemon);
    let mut bytes = Vec::new();
    for f in std::fs::read_dir(&pins.state_dir)? {
        let path = f?.path();
        if path.to_string_lossy().contains("history.sqlite") {
            bytes.extend(std::fs::read(&path)?);
        }
    }
    anyhow::ensure!(bytes.len() > 4096, "no database read");
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    let mac_bytes: Vec<u8> = tablet
        .mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()?;
    for (what, needle) in [
        ("name", b"tablet".to_vec()),
        ("MAC", tablet.mac.as_bytes().to_vec()),
        ("MAC (binary)", mac_bytes),
        ("IP", tablet.ip.as_bytes().to_vec()),
        ("IMEI", IMEI.as_bytes().to_vec()),
    ] {
        assert!(
            !contains(&needle),
            "the device's {what} is in the history files"
        );
    }
    assert!(
        contains(pseudonym.as_bytes()),
        "the pseudonym is not in the files"
    );
    Ok(())
}
