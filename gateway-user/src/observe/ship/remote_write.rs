//! Metrics pushed by Prometheus Remote-Write 1.0: every `interval` the exposition `/metrics`
//! serves (so the same families, and the same rules for device labels) becomes one
//! `WriteRequest` — protobuf, snappy block-compressed — with the gateway's identity labels on
//! every series, queued (`spool`) and sent oldest first by a thread of its own with one
//! backoff (`retry`). Collecting and sending are separate threads: a hung uplink delays
//! pushes, never the samples' collection, and neither touches filtering or the recorder.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    PipelineStats,
    retry::{Backoff, Verdict, classify},
    spool::Queue,
};
use crate::config::telemetry::Telemetry;

/// The remote-write 1.0 messages (prometheus/prompb `types.proto`, `remote.proto`), the
/// fields a sender fills.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        /// Sorted by name; `__name__` is the metric's.
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Label {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(double, tag = "1")]
        pub value: f64,
        /// Milliseconds since the Unix epoch.
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }
}

/// One sample line of the exposition: its labels (`__name__` included) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// The sample lines of exposition `text` (OpenMetrics or Prometheus text, as `render` writes
/// it); comments and lines that do not parse are skipped.
pub fn parse_exposition(text: &str) -> Vec<Line> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

/// `name{a="x",b="y"} value [timestamp]`.
fn parse_line(line: &str) -> Option<Line> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = vec![("__name__".to_string(), name.to_string())];
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            // A key up to `="`, or the closing brace.
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' | ' ' if key.is_empty() => continue,
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Line { labels, value })
}

/// The `WriteRequest` of `lines` sampled at `time_ms`, each series with the `identity` labels
/// (a series' own label of the same name wins), labels sorted by name as the spec requires.
pub fn request(
    lines: &[Line],
    identity: &BTreeMap<String, String>,
    time_ms: i64,
) -> proto::WriteRequest {
    let timeseries = lines
        .iter()
        .map(|l| {
            let mut labels: Vec<proto::Label> = l
                .labels
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(name, value)| proto::Label {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect();
            for (name, value) in identity {
                if !l.labels.iter().any(|(n, _)| n == name) {
                    labels.push(proto::Label {
                        name: name.clone(),
                        value: value.clone(),
                    });
                }
            }
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            proto::TimeSeries {
                labels,
                samples: vec![proto::Sample {
                    value: l.value,
                    timestamp: time_ms,
                }],
            }
        })
        .collect();
    proto::WriteRequest { timeseries }
}

/// `request` on the wire: protobuf, then snappy's block format.
pub fn encode(req: &proto::WriteRequest) -> Result<Vec<u8>, String> {
    use prost::Message as _;
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .map_err(|e| format!("snappy: {e}"))
}

/// What renders the exposition text (the daemon's `/metrics`, without the HTTP).
pub type Collect = Box<dyn FnMut() -> anyhow::Result<String> + Send>;

/// A batch in memory takes at most this much before batches go to the spool.
const MEMORY_BYTES: u64 = 4 << 20;
/// Backoff between failed pushes.
const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// The queue and the condition the sender waits on.
type Shared = Arc<(Mutex<Queue>, Condvar)>;

/// The two threads of the remote-write pipeline.
pub struct Pusher {
    stop: Arc<AtomicBool>,
    shared: Shared,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher").finish_non_exhaustive()
    }
}

impl Pusher {
    /// Starts collecting with `collect` every `t.interval` and pushing to `t.remote_write_url`
    /// through `agent`, with the batches an earlier daemon left in `spool_dir` first.
    pub fn start(
        t: &Telemetry,
        agent: ureq::Agent,
        mut collect: Collect,
        spool_dir: &Path,
        stats: Arc<PipelineStats>,
    ) -> anyhow::Result<Self> {
        let auth = match &t.auth {
            Some(a) => Some(a.header().map_err(|e| anyhow::anyhow!("telemetry: {e}"))?),
            None => None,
        };
        let (queue, dropped) = Queue::open(spool_dir, MEMORY_BYTES, t.spool_bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", spool_dir.display()))?;
        stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        stats.set_pending(queue.pending());
        stats.destination(&crate::config::remote::redact(&t.remote_write_url));
        let shared: Shared = Arc::new((Mutex::new(queue), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();

        let (interval, identity) = (t.interval, t.labels.clone());
        let (stop2, shared2, stats2) = (stop.clone(), shared.clone(), stats.clone());
        threads.push(
            std::thread::Builder::new()
                .name("remote-write-collect".into())
                .spawn(move || {
                    let mut next = Instant::now();
                    while !stop2.load(Ordering::Relaxed) {
                        let now = Instant::now();
                        if now < next {
                            std::thread::sleep((next - now).min(Duration::from_millis(200)));
                            continue;
                        }
                        // Every tick on the grid from the start, none twice after a stall.
                        while next <= now {
                            next += interval;
                        }
                        let time_ms = jiff::Timestamp::now().as_millisecond();
                        let body = collect().map_err(|e| format!("{e:#}")).and_then(|text| {
                            let lines = parse_exposition(&text);
                            let n = lines.len() as u64;
                            encode(&request(&lines, &identity, time_ms)).map(|b| (n, b))
                        });
                        match body {
                            Ok((samples, body)) => {
                                let (lock, wake) = &*shared2;
                                let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
                                let uplink_up = stats2.failing() == 0;
                                let dropped = q.push(samples, body, uplink_up);
                                tracing::debug!(
                                    time_ms,
                                    samples,
                                    in_memory = uplink_up,
                                    waiting = q.len(),
                                    "remote-write: collected"
                                );
                                stats2.dropped.fetch_add(dropped, Ordering::Relaxed);
                                stats2.set_pending(q.pending());
                                wake.notify_all();
                            }
                            Err(e) => {
                                stats2.error(&format!("collecting the metrics: {e}"));
                            }
                        }
                    }
                })?,
        );

        let url = t.remote_write_url.clone();
        let timeout = t
            .interval
            .clamp(Duration::from_secs(10), Duration::from_secs(60));
        let (stop3, shared3, stats3) = (stop.clone(), shared.clone(), stats);
        threads.push(
            std::thread::Builder::new()
                .name("remote-write-send".into())
                .spawn(move || {
                    let mut backoff = BACKOFF;
                    let mut retry_at = Instant::now();
                    let (lock, wake) = &*shared3;
                    while !stop3.load(Ordering::Relaxed) {
                        let batch = {
                            let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
                            let now = Instant::now();
                            if q.is_empty() || now < retry_at {
                                let wait = if q.is_empty() {
                                    Duration::from_millis(500)
                                } else {
                                    (retry_at - now).min(Duration::from_millis(500))
                                };
                                drop(wake.wait_timeout(q, wait));
                                continue;
                            }
                            q.front()
                        };
                        let batch = match batch {
                            Some(Ok(b)) => b,
                            Some(Err(lost)) => {
                                stats3.dropped.fetch_add(lost, Ordering::Relaxed);
                                continue;
                            }
                            None => continue,
                        };
                        let verdict = push(&agent, &url, auth.as_deref(), &batch.body, timeout);
                        let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
                        match verdict {
                            Ok(()) => {
                                tracing::debug!(batch = batch.id, samples = batch.samples, "remote-write: pushed");
                                q.pop(batch.id);
                                backoff.succeeded();
                                stats3.sent.fetch_add(batch.samples, Ordering::Relaxed);
                                stats3.succeeded();
                            }
                            Err((NotTaken::Retry(after), why)) => {
                                let wait = backoff.failed(after);
                                retry_at = Instant::now() + wait;
                                stats3.failed(backoff.failures());
                                // The uplink is down: what waits goes to disk.
                                let dropped = q.spill();
                                stats3.dropped.fetch_add(dropped, Ordering::Relaxed);
                                stats3.error(&why);
                                tracing::debug!(wait = ?wait, "remote-write: push failed; retrying later");
                            }
                            Err((NotTaken::Refused, _)) => {
                                q.pop(batch.id);
                                stats3.dropped.fetch_add(batch.samples, Ordering::Relaxed);
                                stats3.error("the receiver refused a batch for good (4xx); dropped");
                            }
                        }
                        stats3.set_pending(q.pending());
                    }
                    // Stopping: what waits in memory is kept on disk for the next daemon.
                    let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
                    let dropped = q.spill();
                    stats3.dropped.fetch_add(dropped, Ordering::Relaxed);
                    stats3.set_pending(q.pending());
                })?,
        );
        Ok(Self {
            stop,
            shared,
            threads,
        })
    }

    /// Stops both threads; batches not sent are spooled.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.shared.1.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Why a push did not get a batch taken.
enum NotTaken {
    /// Try it again, not before the server's `Retry-After` if it gave one (also after a
    /// transport error).
    Retry(Option<Duration>),
    /// The receiver will never take it.
    Refused,
}

/// POSTs one batch: taken, or why not, in words.
fn push(
    agent: &ureq::Agent,
    url: &str,
    auth: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<(), (NotTaken, String)> {
    let mut request = agent
        .post(url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0");
    if let Some(a) = auth {
        request = request.header("Authorization", a);
    }
    let response = request
        .config()
        .timeout_global(Some(timeout))
        .build()
        .send(body)
        .map_err(|e| (NotTaken::Retry(None), format!("pushing: {e}")))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok());
    let why = || format!("the receiver answered HTTP {status}");
    match classify(status, retry_after) {
        Verdict::Sent => Ok(()),
        Verdict::Retry(after) => Err((NotTaken::Retry(after), why())),
        Verdict::Drop => Err((NotTaken::Refused, why())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lines_become_series_with_the_identity() {
        let text = "# HELP gateway_decisions Decisions.\n# TYPE gateway_decisions counter\n\
            gateway_decisions_total{device=\"a\\\"b\",policy=\"kids\",category=\"\"} 5\n\
            gateway_generation 3\n\
            gateway_odd{site=\"own\"} NaN\n\
            not a line\n# EOF\n";
        let lines = parse_exposition(text);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            lines[0].labels,
            vec![
                ("__name__".into(), "gateway_decisions_total".into()),
                ("device".into(), "a\"b".into()),
                ("policy".into(), "kids".into()),
                ("category".into(), String::new()),
            ]
        );
        assert_eq!(lines[0].value, 5.0);
        assert!(lines[2].value.is_nan());
        let identity = BTreeMap::from([
            ("id".to_string(), "bus-17".to_string()),
            ("site".to_string(), "north".to_string()),
        ]);
        let req = request(&lines, &identity, 1_700_000_000_123);
        let names = |i: usize| -> Vec<(String, String)> {
            req.timeseries[i]
                .labels
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect()
        };
        // Sorted; the empty category is no label; the identity on every series.
        let t = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            names(0),
            vec![
                t("__name__", "gateway_decisions_total"),
                t("device", "a\"b"),
                t("id", "bus-17"),
                t("policy", "kids"),
                t("site", "north"),
            ]
        );
        // A series' own label wins over the identity's.
        assert_eq!(names(2)[2], t("site", "own"));
        assert_eq!(req.timeseries[1].samples[0].timestamp, 1_700_000_000_123);
        // On the wire: snappy's block format around the protobuf, which decodes back.
        use prost::Message as _;
        let wire = encode(&req).expect("encode");
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&wire)
            .expect("snappy");
        let back = proto::WriteRequest::decode(raw.as_slice()).expect("protobuf");
        assert_eq!(back.timeseries.len(), 3);
        assert_eq!(back.timeseries[0], req.timeseries[0]);
    }
}
