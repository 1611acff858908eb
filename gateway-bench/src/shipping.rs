//! Shipping (SPEC §14): the recorder's CPU per decision with the syslog shipper off and on
//! (the real program logging blocked queries at a sustained rate, drained into the history
//! as the daemon does, and shipped to a TCP receiver in this process), the bytes per decision
//! on the wire, and the size of a remote-write push of 1,000 devices' counters.

use std::{
    io::Read as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use gateway_user::{
    config::telemetry::{Ship, Transport},
    observe::{
        history::Store,
        ship::{PipelineStats, remote_write, syslog::Shipper},
    },
};
use serde::Serialize;

use crate::{common::table, verdicts::dns_query_frame};

/// The shipping benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct ShippingRow {
    /// Decisions the program made (and logged) per second, for `seconds` each run.
    pub offered_per_s: f64,
    pub seconds: f64,
    /// Decisions of the run without shipping, and the recorder's CPU per decision.
    pub decisions_off: u64,
    pub recorder_us_off: f64,
    /// The same with the shipper: the recorder's thread (what it costs the recorder), and the
    /// shipper's thread per decision shipped (what shipping adds).
    pub decisions_on: u64,
    pub recorder_us_on: f64,
    pub shipper_us: f64,
    /// Of which reading rows from the history and framing them (the same rows read again
    /// in batches of 500 without sending; the rest is TCP).
    pub read_frame_us: f64,
    /// Rows the receiver had, and the bytes it read per row (octet-counted RFC 5424).
    pub shipped: u64,
    pub syslog_bytes_per_decision: f64,
    /// A remote-write push of 1,000 devices' counters: series, bytes (snappy protobuf), and
    /// the Prometheus text the same scrape takes.
    pub push_series: usize,
    pub push_bytes: usize,
    pub scrape_bytes: usize,
}

/// CPU time (ns) of this process's threads named `names`, from the scheduler's statistics.
fn thread_cpu_ns(names: &[&str]) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| names.contains(&c.trim()))
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// A TCP receiver on the loopback that reads and counts everything it is sent.
fn sink() -> anyhow::Result<(u16, Arc<AtomicU64>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = bytes.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let counted = counted.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    counted.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    Ok((port, bytes))
}

/// One run: the program logs `per_tick` blocked queries every 10 ms for `seconds`, the
/// recorder drains them into a fresh history, and (`ship`) the shipper sends them on.
/// Returns (decisions, recorder CPU ns, shipper CPU ns, rows shipped).
fn run(
    dir: &std::path::Path,
    seconds: u64,
    ship: Option<&Ship>,
) -> anyhow::Result<(u64, u64, u64, u64)> {
    let shipping = Arc::new(PipelineStats::default());
    // The history exists before the shipper opens it.
    drop(Store::open(dir)?);
    let shipper = match ship {
        Some(s) => Some(Shipper::start(s, dir, shipping.clone())?),
        None => None,
    };
    let (mut runner, recorder) = crate::history::ring_recorder(dir, ship, Some(shipping.clone()))?;
    let frame = dns_query_frame("www.d500.site500.example");
    let (per_tick, tick) = (200u32, Duration::from_millis(10));
    let start = Instant::now();
    let mut next = start;
    let mut decisions = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..per_tick {
            runner.time(&frame, 1)?;
        }
        decisions += u64::from(per_tick);
        next += tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    // The recorder's last drain, then (if shipping) the receiver's confirmation of it.
    let stats = recorder.stats.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let written = stats.rows_written.load(Ordering::Relaxed);
        let done = match ship {
            None => written >= decisions,
            Some(_) => written >= decisions && shipping.sent.load(Ordering::Relaxed) >= written,
        };
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let recorder_ns = thread_cpu_ns(&["history"]);
    let shipper_ns = thread_cpu_ns(&["syslog"]);
    let shipped = shipping.sent.load(Ordering::Relaxed);
    if let Some(s) = shipper {
        s.stop();
    }
    recorder.stop();
    Ok((decisions, recorder_ns, shipper_ns, shipped))
}

/// Microseconds per row to read the history in `dir` in the shipper's batches and frame it.
fn read_and_frame(dir: &std::path::Path) -> anyhow::Result<f64> {
    use gateway_user::observe::ship::syslog::{Framer, Origin};
    let store = Store::open(dir)?;
    let mut framer = Framer::new(Origin::of_host(store.instance()?));
    let mut out = Vec::with_capacity(500 * 320);
    let (mut after, mut rows) = (0i64, 0u64);
    let start = Instant::now();
    loop {
        out.clear();
        let n = store.each_after(after, false, 500, |id, row| {
            framer.frame_into(&mut out, id, row);
            after = id;
        })?;
        if n == 0 {
            break;
        }
        rows += n as u64;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / rows.max(1) as f64)
}

/// A remote-write push of the 1,000-device scrape: (series, bytes on the wire, text bytes).
fn push_size() -> anyhow::Result<(usize, usize, usize)> {
    let (runner, info) = crate::history::scraped_devices(1_000)?;
    let s = gateway_user::observe::stats::snapshot(&runner.maps)?;
    let text = gateway_user::observe::metrics::render(&s, &info, jiff::Timestamp::now())?;
    let lines = remote_write::parse_exposition(&text);
    let identity = std::collections::BTreeMap::from([
        ("id".to_string(), "bus-0017".to_string()),
        ("site".to_string(), "north".to_string()),
        ("group".to_string(), "buses".to_string()),
    ]);
    let req = remote_write::request(&lines, &identity, jiff::Timestamp::now().as_millisecond());
    let wire = remote_write::encode(&req).map_err(|e| anyhow::anyhow!(e))?;
    Ok((
        lines.len(),
        wire.len(),
        gateway_user::observe::metrics::to_prometheus_text(&text).len(),
    ))
}

/// Measures the recorder with the syslog shipper off and on, and a remote-write push.
pub fn shipping() -> anyhow::Result<ShippingRow> {
    let base = std::env::temp_dir().join(format!("gw-bench-ship-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let seconds = 10;
    let (decisions_off, rec_off, _, _) = run(&base.join("off"), seconds, None)?;
    let (port, received) = sink()?;
    let ship = Ship {
        url: format!("tcp://127.0.0.1:{port}"),
        transport: Transport::Tcp,
        host: "127.0.0.1".into(),
        port,
        only_blocked: false,
        ca_file: None,
    };
    let (decisions_on, rec_on, shipper_ns, shipped) = run(&base.join("on"), seconds, Some(&ship))?;
    let read_frame_us = read_and_frame(&base.join("on"))?;
    let (push_series, push_bytes, scrape_bytes) = push_size()?;
    std::fs::remove_dir_all(&base)?;
    let per = |ns: u64, n: u64| ns as f64 / 1000.0 / n.max(1) as f64;
    Ok(ShippingRow {
        offered_per_s: decisions_on as f64 / seconds as f64,
        seconds: seconds as f64,
        decisions_off,
        recorder_us_off: per(rec_off, decisions_off),
        decisions_on,
        recorder_us_on: per(rec_on, decisions_on),
        shipper_us: per(shipper_ns, shipped),
        read_frame_us,
        shipped,
        syslog_bytes_per_decision: received.load(Ordering::Relaxed) as f64 / shipped.max(1) as f64,
        push_series,
        push_bytes,
        scrape_bytes,
    })
}

/// The shipping row as a table.
pub fn render_shipping(r: &ShippingRow) -> String {
    table(
        "Shipping (the real program logging a blocked query at the offered rate, the recorder draining it into SQLite, the syslog shipper taking the stored rows from the recorder and sending them to a TCP receiver on the loopback, whose kernel work counts for the shipper; CPU per decision of each thread; a remote-write push of 1,000 devices' counters)",
        &[
            "offered (decisions/s)",
            "recorder, shipping off (µs/decision)",
            "recorder, shipping on (µs/decision)",
            "shipper thread (µs/decision)",
            "read back + frame, if behind (µs/decision)",
            "shipped",
            "syslog (bytes/decision)",
            "push: series",
            "push (KiB, snappy)",
            "same scrape as text (KiB)",
        ],
        false,
        std::iter::once(vec![
            format!("{:.0}", r.offered_per_s),
            format!("{:.2}", r.recorder_us_off),
            format!("{:.2}", r.recorder_us_on),
            format!("{:.2}", r.shipper_us),
            format!("{:.2}", r.read_frame_us),
            r.shipped.to_string(),
            format!("{:.0}", r.syslog_bytes_per_decision),
            r.push_series.to_string(),
            format!("{:.1}", r.push_bytes as f64 / 1024.0),
            format!("{:.0}", r.scrape_bytes as f64 / 1024.0),
        ]),
    )
}
