//! What the gateway ships to the centre (SPEC §14, docs/shipping.md): its metrics by
//! Prometheus remote-write (`remote_write`, queued in `spool`) and its decision history as
//! RFC 5424 syslog (`syslog`, the history database as spool), each pipeline on threads of its
//! own with one backoff (`retry`), its state counted (`PipelineStats`) for `/metrics` and kept
//! in the state directory for `gateway status`. Imports `config` and the history.

pub mod remote_write;
pub mod retry;
pub mod spool;
pub mod syslog;

use std::{
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};

/// Where the pipelines keep their state under the state directory.
pub const DIR: &str = "ship";

/// The view file of a pipeline, beside the daemon's runtime status (`/run/gateway`, a tmpfs:
/// rewritten every few seconds, it would wear a gateway's flash).
pub fn view_path(bpffs: &Path, pipeline: &str) -> PathBuf {
    crate::observe::status::runtime_file(bpffs, &format!("{pipeline}.json"))
}

/// The CA certificates of the PEM file `path` (a `ca_file` setting): what an HTTPS origin or
/// a TLS syslog receiver must chain to instead of Mozilla's roots. Errors name the file.
pub fn ca_certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(certs)
}

/// One pipeline's counts: samples (remote-write) or rows (syslog).
#[derive(Debug)]
pub struct PipelineStats {
    /// Sent and taken.
    pub sent: AtomicU64,
    /// Dropped: beyond the spool's cap or refused for good (remote-write); deleted by
    /// retention before they were shipped (syslog).
    pub dropped: AtomicU64,
    /// Waiting to be sent.
    pending: AtomicU64,
    /// Failed attempts (connections, pushes, collections).
    pub errors: AtomicU64,
    /// Failures in a row: 0 while the destination takes what it is sent.
    failing: AtomicU64,
    /// Unix milliseconds of the last success, 0 for never.
    last_success_ms: AtomicI64,
    last_error: Mutex<Option<String>>,
    destination: Mutex<String>,
    /// Syslog: the last history row confirmed shipped, -1 while not shipping (the recorder
    /// counts rows retention deletes above it as lost).
    pub cursor: AtomicI64,
    /// Syslog: only decisions that were not allowed are shipped.
    pub only_blocked: std::sync::atomic::AtomicBool,
    /// Syslog: where the recorder hands the rows it stored (the first's id, the rows), while a
    /// shipper listens.
    handoff: Mutex<Option<std::sync::mpsc::SyncSender<Handed>>>,
}

/// Rows the recorder stored, handed to the shipper: the first row's id and the rows.
pub type Handed = (i64, Vec<crate::observe::history::Row>);

/// Batches the handoff holds before the recorder stops handing (the shipper reads the history
/// instead): never a wait for the recorder.
const HANDOFF_BATCHES: usize = 64;

impl Default for PipelineStats {
    fn default() -> Self {
        Self {
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            failing: AtomicU64::new(0),
            last_success_ms: AtomicI64::new(0),
            last_error: Mutex::new(None),
            destination: Mutex::new(String::new()),
            cursor: AtomicI64::new(-1),
            only_blocked: std::sync::atomic::AtomicBool::new(false),
            handoff: Mutex::new(None),
        }
    }
}

impl PipelineStats {
    pub fn set_pending(&self, n: u64) {
        self.pending.store(n, Ordering::Relaxed);
    }

    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Failures in a row.
    pub fn failing(&self) -> u64 {
        self.failing.load(Ordering::Relaxed)
    }

    /// The destination, as shown (no credentials).
    pub fn destination(&self, shown: &str) {
        *self.destination.lock().unwrap_or_else(|e| e.into_inner()) = shown.to_string();
    }

    /// A success: the failures in a row end.
    pub fn succeeded(&self) {
        let was = self.failing.swap(0, Ordering::Relaxed);
        self.last_success_ms
            .store(jiff::Timestamp::now().as_millisecond(), Ordering::Relaxed);
        if was > 0 {
            tracing::info!(destination = %self.shown(), after_failures = was, "shipping: the destination takes what it is sent again");
        }
    }

    /// The `n`th failure in a row.
    pub fn failed(&self, n: u64) {
        self.failing.store(n, Ordering::Relaxed);
    }

    /// An error: counted, kept for `gateway status`, logged when it differs from the last one.
    pub fn error(&self, why: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_deref() != Some(why) {
            tracing::warn!(destination = %self.shown(), error = why, "shipping failed; retrying with backoff");
            *last = Some(why.to_string());
        }
    }

    fn shown(&self) -> String {
        self.destination
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The recorder's rows just stored, from id `first` on: taken by a listening shipper
    /// (`rows` is left empty), else left as they are. Never waits.
    pub fn hand(&self, first: i64, rows: &mut Vec<crate::observe::history::Row>) {
        let guard = self.handoff.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.as_ref() {
            let batch = std::mem::take(rows);
            // Full (the shipper is behind) or gone: it reads the history itself.
            let _ = tx.try_send((first, batch));
        }
    }

    /// A shipper listens for the recorder's rows (until `unlisten`).
    pub fn listen(&self) -> std::sync::mpsc::Receiver<Handed> {
        let (tx, rx) = std::sync::mpsc::sync_channel(HANDOFF_BATCHES);
        *self.handoff.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    pub fn unlisten(&self) {
        *self.handoff.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// What `gateway status` shows.
    pub fn view(&self, unit: &str) -> PipelineView {
        let ms = self.last_success_ms.load(Ordering::Relaxed);
        PipelineView {
            destination: self.shown(),
            unit: unit.to_string(),
            last_success: (ms > 0)
                .then(|| jiff::Timestamp::from_millisecond(ms).ok())
                .flatten()
                .map(|t| t.to_string()),
            pending: self.pending(),
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            failing: self.failing(),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// Both pipelines' counts, for `/metrics` (they outlive a pipeline restarted by a reload).
#[derive(Debug, Default)]
pub struct ShipStats {
    pub remote_write: std::sync::Arc<PipelineStats>,
    pub syslog: std::sync::Arc<PipelineStats>,
}

/// A pipeline as `gateway status` and `/api/v1/status` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PipelineView {
    pub destination: String,
    /// What is counted: `samples` or `rows`.
    pub unit: String,
    pub last_success: Option<String>,
    /// Waiting: the backlog.
    pub pending: u64,
    pub sent: u64,
    /// Dropped (remote-write) or lost to retention before they were shipped (syslog).
    pub dropped: u64,
    pub errors: u64,
    /// Failures in a row now.
    pub failing: u64,
    pub last_error: Option<String>,
}

impl PipelineView {
    /// The view the daemon of `bpffs` last wrote for `pipeline`.
    pub fn read(bpffs: &Path, pipeline: &str) -> Option<Self> {
        let text = std::fs::read_to_string(view_path(bpffs, pipeline)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the view for `gateway status`.
    pub fn write(&self, bpffs: &Path, pipeline: &str) {
        let path = view_path(bpffs, pipeline);
        let result = serde_json::to_vec_pretty(self)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::config::remote::write_whole(&path, &b));
        if let Err(e) = result {
            tracing::debug!(path = %path.display(), error = %e, "cannot write a shipping status");
        }
    }

    /// Lines for `gateway status`.
    pub fn render(&self, title: &str) -> String {
        let mut out = format!("{title}: {}\n", self.destination);
        out.push_str(&format!(
            "  last success: {}\n  backlog: {} {u}; sent {}; {} {}\n",
            self.last_success.as_deref().unwrap_or("never"),
            self.pending,
            self.sent,
            self.dropped,
            if self.unit == "rows" {
                "lost to retention"
            } else {
                "dropped"
            },
            u = self.unit,
        ));
        out.push_str(&format!("  errors: {}", self.errors));
        if self.failing > 0 {
            out.push_str(&format!(" ({} in a row now)", self.failing));
        }
        out.push('\n');
        if let Some(e) = &self.last_error {
            out.push_str(&format!("  last error: {e}\n"));
        }
        out
    }
}
