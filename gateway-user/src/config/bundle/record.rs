//! Where a gateway keeps its fleet bundles (`state_dir/fleet/`) and the record of the one in
//! force and of the last attempts, which the poller writes and `gateway status`, the status
//! API and the metrics read.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::Failure;

/// The fleet directory under `state_dir`.
pub fn fleet_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("fleet")
}

/// The archive of the bundle in force, kept to be verified and unpacked again at each start.
pub fn active_archive(state_dir: &Path) -> PathBuf {
    fleet_dir(state_dir).join("active.tar.gz")
}

/// Its signature.
pub fn active_signature(state_dir: &Path) -> PathBuf {
    fleet_dir(state_dir).join("active.tar.gz.minisig")
}

/// Where revision `revision` of digest `digest` is unpacked.
pub fn unpacked_dir(state_dir: &Path, revision: u64, digest: &str) -> PathBuf {
    let short = digest.get(..16).unwrap_or(digest);
    fleet_dir(state_dir).join(format!("r{revision}-{short}"))
}

/// The record.
pub fn record_path(state_dir: &Path) -> PathBuf {
    fleet_dir(state_dir).join("record.json")
}

/// The bundle in force and the last attempts (Unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The revision in force (`None`: no bundle was ever activated).
    pub revision: Option<u64>,
    /// The ETag of the bundle in force: what the next request is conditional on. Never that
    /// of a bundle refused, which would then be answered with 304 forever (OPA #2220).
    pub etag: Option<String>,
    /// blake3 of the archive in force.
    pub digest: Option<String>,
    /// The manifest's `created` and labels of the bundle in force.
    pub created: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When the bundle in force was downloaded, and activated.
    pub fetched_at: Option<i64>,
    pub activated_at: Option<i64>,
    /// The last poll, and the last that ended well (a 304, or a bundle activated).
    pub last_check: Option<i64>,
    pub last_success: Option<i64>,
    /// The last attempt's error, if it failed.
    pub last_error: Option<String>,
    pub last_reason: Option<Failure>,
    /// Failures since the record began, by reason.
    #[serde(default)]
    pub failures: BTreeMap<Failure, u64>,
}

impl Record {
    /// The record in `state_dir` (none, or unreadable: the empty record).
    pub fn read(state_dir: &Path) -> Self {
        std::fs::read(record_path(state_dir))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default()
    }

    /// Writes it whole.
    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::config::remote::write_whole(&record_path(state_dir), &text)
    }

    /// Notes a failure of `reason` at `now`.
    pub fn failed(&mut self, reason: Failure, message: &str, now: i64) {
        self.last_check = Some(now);
        self.last_error = Some(message.to_string());
        self.last_reason = Some(reason);
        *self.failures.entry(reason).or_default() += 1;
    }

    /// Notes a poll that ended well at `now`.
    pub fn succeeded(&mut self, now: i64) {
        self.last_check = Some(now);
        self.last_success = Some(now);
        self.last_error = None;
        self.last_reason = None;
    }
}
