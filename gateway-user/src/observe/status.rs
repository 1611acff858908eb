//! The daemon's runtime files in `/run/gateway`: its pid, and its status (reloads, the
//! categories and policies in force), which `gateway reload`, `gateway stats` and the next
//! daemon read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Where the daemons keep their pid and reload status, one pair per bpffs root.
pub const RUNTIME_DIR: &str = "/run/gateway";

/// The daemon's runtime file `ext` for the filter pinned under `bpffs`.
pub fn runtime_file(bpffs: &Path, ext: &str) -> PathBuf {
    let name = bpffs.to_string_lossy().trim_matches('/').replace('/', "_");
    Path::new(RUNTIME_DIR).join(format!("{name}.{ext}"))
}

/// What the daemon says about its reloads and the configuration in force (`<runtime>.status`,
/// JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Reloads applied.
    pub reloads: u64,
    /// Reloads rejected (invalid configuration) or failed (writing the maps).
    pub failed: u64,
    /// The last attempt: what triggered it (`signal`, `watch`), whether it worked, and why not.
    pub last_trigger: Option<String>,
    pub last_ok: Option<bool>,
    pub last_error: Option<String>,
    /// Schedule switches applied.
    pub schedule_switches: u64,
    /// The categories of the configuration in force, in the order that numbers them in the
    /// kernel's counters (`gateway stats` names them with it).
    #[serde(default)]
    pub categories: Vec<String>,
    /// The policies of the configuration in force, in the order that numbers them in the
    /// kernel: a restarted daemon names the decisions made before its start with them.
    #[serde(default)]
    pub policies: Vec<String>,
}

impl ReloadStatus {
    /// Records how `config` (the configuration in force) numbers its categories and policies.
    pub fn in_force(&mut self, config: &Config) {
        self.categories = config.category_names();
        self.policies = config.policy_names();
    }

    /// Reads the status file (an absent or unreadable one is the zero status).
    pub fn read(path: &Path) -> Self {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    pub fn write(&self, path: &Path) {
        let tmp = path.with_extension("status.tmp");
        let result = serde_json::to_string(self)
            .map_err(std::io::Error::other)
            .and_then(|text| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the reload status");
        }
    }
}
