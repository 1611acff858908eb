//! The daemon's runtime files in `/run/gateway`: its pid, and its status (reloads, the
//! categories and policies in force), which `gateway reload`, `gateway stats` and the next
//! daemon read; and the view `gateway status` and `/api/v1/status` give of them.

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

/// `gateway status` and `/api/v1/status`: the configuration in force, its reloads, and for a
/// fleet gateway the bundle in force and the last attempts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusView {
    /// The configuration the view was made of: for `/api/v1/status` the daemon's in force (a
    /// fleet bundle's `gateway.toml` while one is), for `gateway status` the gateway's own file.
    pub config: String,
    pub reloads: u64,
    pub reloads_failed: u64,
    pub last_reload_error: Option<String>,
    pub fleet: Option<FleetView>,
    /// The shipping pipelines that are configured, as the daemon last wrote them (`None`:
    /// not yet).
    #[serde(default)]
    pub shipping: Vec<ShippingView>,
}

/// One shipping pipeline in the status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShippingView {
    pub pipeline: String,
    pub state: Option<super::ship::PipelineView>,
}

/// The fleet part of `StatusView` (times in RFC 3339).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FleetView {
    /// Credentials removed.
    pub bundle_url: String,
    pub revision: Option<u64>,
    pub created: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub fetched_at: Option<String>,
    pub activated_at: Option<String>,
    pub last_check: Option<String>,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    pub last_reason: Option<String>,
    /// Failures by reason (`bundle::Failure` labels).
    pub failures: std::collections::BTreeMap<String, u64>,
}

impl StatusView {
    /// The view of `config` (in force) and `status` (its reloads), with the fleet record read
    /// from the state directory.
    pub fn of(config: &Config, status: &ReloadStatus) -> Self {
        let time = |t: Option<i64>| {
            t.and_then(|s| jiff::Timestamp::from_second(s).ok())
                .map(|t| t.to_string())
        };
        let fleet = config.fleet.as_ref().map(|f| {
            let r = crate::config::bundle::Record::read(&config.state_dir);
            FleetView {
                bundle_url: crate::config::remote::redact(&f.bundle_url),
                revision: r.revision,
                created: r.created,
                labels: r.labels,
                fetched_at: time(r.fetched_at),
                activated_at: time(r.activated_at),
                last_check: time(r.last_check),
                last_success: time(r.last_success),
                last_error: r.last_error,
                last_reason: r.last_reason.map(|x| x.label().to_string()),
                failures: r
                    .failures
                    .iter()
                    .map(|(k, v)| (k.label().to_string(), *v))
                    .collect(),
            }
        });
        let mut shipping = Vec::new();
        for (on, pipeline, file) in [
            (config.telemetry.is_some(), "remote-write", "remote_write"),
            (config.history.ship.is_some(), "syslog", "syslog"),
        ] {
            if on {
                shipping.push(ShippingView {
                    pipeline: pipeline.to_string(),
                    state: super::ship::PipelineView::read(&config.bpffs, file),
                });
            }
        }
        Self {
            shipping,
            config: config.source.display().to_string(),
            reloads: status.reloads,
            reloads_failed: status.failed,
            last_reload_error: status.last_error.clone(),
            fleet,
        }
    }

    /// As text, one `key: value` a line.
    pub fn render(&self) -> String {
        let mut out = format!(
            "config: {}\nreloads: {} applied, {} rejected\n",
            self.config, self.reloads, self.reloads_failed
        );
        if let Some(e) = &self.last_reload_error {
            out.push_str(&format!("last reload error: {e}\n"));
        }
        match &self.fleet {
            Some(f) => out.push_str(&f.render()),
            None => out.push_str("fleet: not configured\n"),
        }
        for p in &self.shipping {
            match &p.state {
                Some(v) => out.push_str(&v.render(&p.pipeline)),
                None => out.push_str(&format!(
                    "{}: configured, no state yet (is the daemon running?)\n",
                    p.pipeline
                )),
            }
        }
        if self.shipping.is_empty() {
            out.push_str("shipping: not configured\n");
        }
        out
    }
}

impl FleetView {
    /// Lines for `gateway status`.
    fn render(&self) -> String {
        let f = self;
        let mut out = String::new();
        let or_never = |v: &Option<String>| v.clone().unwrap_or_else(|| "never".into());
        out.push_str(&format!("fleet bundle: {}\n", f.bundle_url));
        match f.revision {
            Some(r) => out.push_str(&format!(
                "revision in force: {r} (created {}, fetched {}, activated {})\n",
                or_never(&f.created),
                or_never(&f.fetched_at),
                or_never(&f.activated_at)
            )),
            None => out.push_str("revision in force: none (the gateway's own file)\n"),
        }
        out.push_str(&format!(
            "last check: {}\nlast success: {}\n",
            or_never(&f.last_check),
            or_never(&f.last_success)
        ));
        if let Some(e) = &f.last_error {
            out.push_str(&format!(
                "last error: {e} ({})\n",
                f.last_reason.as_deref().unwrap_or("?")
            ));
        }
        if !f.failures.is_empty() {
            let list: Vec<String> = f.failures.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("failures: {}\n", list.join(" ")));
        }
        out
    }
}
