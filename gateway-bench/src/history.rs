//! The history and metrics: ingest into SQLite, the recorder draining the ring at a sustained
//! rate, and a `/metrics` scrape of 1,000 devices.

use gateway_common::enums::{LinkType, Reason};
use gateway_user::offline::testrun::TestRunner;
use serde::Serialize;

use crate::{
    common::{bench_config, median, table},
    verdicts::{dns_config, dns_query_frame},
};

/// The history and metrics benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    /// Decisions stored per second, in transactions of `batch` rows.
    pub ingest_per_s: f64,
    pub batch: usize,
    /// Decisions the kernel program made (and logged) per second, for `seconds`, drained by
    /// the daemon's recorder into the history.
    pub offered_per_s: f64,
    pub seconds: f64,
    pub decisions: u64,
    /// Events the ring had no room for.
    pub lost: u64,
    /// Rows the recorder stored.
    pub stored: u64,
    /// Devices with decisions in the scrape, and the time to build it (median of 21).
    pub scrape_devices: usize,
    pub scrape_ms: f64,
    pub scrape_bytes: usize,
}

/// Measures history ingest, ring loss at 20,000 logged decisions per second, and a `/metrics`
/// scrape of 1,000 devices.
pub fn history() -> anyhow::Result<HistoryRow> {
    use gateway_user::observe::history::{Row, Store};

    let dir = std::env::temp_dir().join(format!("gw-bench-history-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // Ingest: 200,000 rows, 1,000 per transaction (what a busy drain gives).
    let batch = 1_000;
    let mut store = Store::open(&dir.join("ingest"))?;
    let rows: Vec<Row> = (0..batch)
        .map(|i| Row {
            time_ms: 1_800_000_000_000 + i as i64,
            device: format!("dev-{}", i % 300),
            policy: "students".into(),
            protocol: "dns".into(),
            name: format!("www.d{i}.site{}.example", i % 1000),
            qtype: 1,
            action: "block".into(),
            reason: "category".into(),
            category: Some("big".into()),
        })
        .collect();
    let start = std::time::Instant::now();
    for _ in 0..200 {
        store.insert(&rows)?;
    }
    let ingest_per_s = 200.0 * batch as f64 / start.elapsed().as_secs_f64();
    drop(store);

    // Ring: the real program logs a blocked query 200 times every 10 ms for 10 s, while the
    // recorder drains the ring into a history as the daemon does.
    let (mut runner, recorder) = ring_recorder(&dir.join("ring"), None, None)?;
    let frame = dns_query_frame("www.d500.site500.example");
    let (per_tick, tick) = (200u32, std::time::Duration::from_millis(10));
    let start = std::time::Instant::now();
    let mut next = start;
    let mut decisions = 0u64;
    while start.elapsed() < std::time::Duration::from_secs(10) {
        // One run per decision, as traffic gives them (a BPF_PROG_TEST_RUN repeat of 200 here
        // takes 16-32 ms of wall time for 0.2 ms of program time).
        for _ in 0..per_tick {
            runner.time(&frame, 1)?;
        }
        decisions += u64::from(per_tick);
        next += tick;
        if let Some(wait) = next.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // Let the recorder finish the last drain.
    let stats = recorder.stats.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let lost = || -> anyhow::Result<u64> {
        Ok(gateway_user::observe::stats::snapshot(&runner.maps)?
            .global
            .get("ring_lost")
            .copied()
            .unwrap_or(0))
    };
    while stats
        .rows_written
        .load(std::sync::atomic::Ordering::Relaxed)
        + lost()?
        < decisions
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let stored = stats
        .rows_written
        .load(std::sync::atomic::Ordering::Relaxed);
    let lost = lost()?;
    recorder.stop();

    // Scrape: 1,000 devices with decisions in four kinds each.
    let scrape_devices = 1_000;
    let (runner, info) = scraped_devices(scrape_devices)?;
    let mut times = Vec::new();
    let mut scrape_bytes = 0;
    for _ in 0..21 {
        let start = std::time::Instant::now();
        let s = gateway_user::observe::stats::snapshot(&runner.maps)?;
        let text = gateway_user::observe::metrics::to_prometheus_text(
            &gateway_user::observe::metrics::render(&s, &info, jiff::Timestamp::now())?,
        );
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        scrape_bytes = text.len();
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(HistoryRow {
        ingest_per_s,
        batch,
        offered_per_s: decisions as f64 / seconds,
        seconds,
        decisions,
        lost,
        stored,
        scrape_devices,
        scrape_ms: median(&times),
        scrape_bytes,
    })
}

/// The history row as a table.
pub fn render_history(r: &HistoryRow) -> String {
    table(
        "History and metrics (ingest: SQLite WAL, one transaction per batch; ring: the real program logging blocked queries, drained by the daemon's recorder; scrape: /metrics of 1,000 devices)",
        &[
            "ingest (decisions/s)",
            "batch",
            "offered (decisions/s)",
            "decisions",
            "lost",
            "loss (%)",
            "stored",
            "scrape (ms)",
            "scrape (KiB)",
        ],
        false,
        std::iter::once(vec![
            format!("{:.0}", r.ingest_per_s),
            r.batch.to_string(),
            format!("{:.0}", r.offered_per_s),
            r.decisions.to_string(),
            r.lost.to_string(),
            format!("{:.3}", r.lost as f64 * 100.0 / r.decisions.max(1) as f64),
            r.stored.to_string(),
            format!("{:.1}", r.scrape_ms),
            format!("{:.0}", r.scrape_bytes as f64 / 1024.0),
        ]),
    )
}

/// A filter whose first `devices` devices have decisions in four kinds each, and the
/// daemon's state naming them (`device_labels = "name"`): what a busy gateway's scrape holds.
pub fn scraped_devices(
    devices: usize,
) -> anyhow::Result<(TestRunner, gateway_user::observe::metrics::Info)> {
    let mut bench = bench_config()?;
    let mut runner = TestRunner::with_trace(&bench, LinkType::Ethernet, false)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow::anyhow!("CPUs: {e}"))?;
    let mut slots: Vec<u32> = runner.applied.slots.values().copied().collect();
    slots.sort_unstable();
    for &slot in slots.iter().take(devices) {
        for (proto, action, reason, category) in [
            (0u8, 0u8, Reason::Default, gateway_common::maps::NO_CATEGORY),
            (0, 1, Reason::Category, 0),
            (1, 0, Reason::Default, gateway_common::maps::NO_CATEGORY),
            (1, 1, Reason::Explicit, gateway_common::maps::NO_CATEGORY),
        ] {
            let key = gateway_common::maps::DecisionKey {
                slot,
                proto,
                action,
                reason: reason as u8,
                category,
            };
            let values = aya::maps::PerCpuValues::try_from(vec![7u64; cpus])?;
            runner.maps.decisions.insert(key, values, 0)?;
        }
    }
    bench.api.device_labels = gateway_user::config::DeviceLabels::Name;
    let info = gateway_user::observe::metrics::Info {
        config: std::sync::Arc::new(bench),
        status: gateway_user::observe::status::ReloadStatus::default(),
        domains: 0,
        recorder: None,
        pseudonym: None,
        ship: None,
    };
    Ok((runner, info))
}

/// The filter of the 1,000-domain DNS configuration, and a recorder draining its ring into a
/// fresh history in `dir` as the daemon does (handing rows to the shipper of `shipping`).
pub fn ring_recorder(
    dir: &std::path::Path,
    ship: Option<&gateway_user::config::telemetry::Ship>,
    shipping: Option<std::sync::Arc<gateway_user::observe::ship::PipelineStats>>,
) -> anyhow::Result<(TestRunner, gateway_user::observe::history::Recorder)> {
    use gateway_user::observe::history::{Names, Naming, Recorder, Store};
    use std::sync::{Arc, RwLock};
    let config = dns_config(1_000)?;
    let mut runner = TestRunner::with_trace(&config, LinkType::Ethernet, false)?;
    let mut names = Naming::default();
    names.set(
        runner.applied.active_from_boot_ns,
        Names::of(&config, &runner.applied.slots, None),
    );
    let keep = gateway_user::config::History {
        enabled: true,
        retention_days: 30,
        max_rows: 10_000_000,
        max_bytes: 1 << 30,
        pseudonymize: false,
        ship: ship.cloned(),
    };
    let recorder = Recorder::start(
        runner.maps.take_events()?,
        Some(Store::open(dir)?),
        Arc::new(RwLock::new(names)),
        Arc::new(RwLock::new(keep)),
        shipping,
    );
    Ok((runner, recorder))
}
