//! The gateway-wide sections of the configuration as validated: modes, `[api]`, `[history]`,
//! `[lifecycle]`, and their defaults.

use std::path::PathBuf;

use serde::Deserialize;

/// `enforce` or `monitor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

/// `link` of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkSetting {
    /// Detect from the interface's ARPHRD type.
    #[default]
    Auto,
    Ethernet,
    RawIp,
}

/// What happens to a device whose checkout is past due (`[lifecycle] overdue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overdue {
    /// Shown as overdue (API, `gateway devices`), traffic unchanged.
    #[default]
    Flag,
    /// Suspended until checked in (or the due date moves).
    Suspend,
}

/// `[lifecycle]`: checkouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifecycle {
    /// A checked-in device stays suspended until it is checked out again or resumed.
    pub hold_checked_in: bool,
    pub overdue: Overdue,
}

/// How devices appear in `/metrics` (`[api] device_labels`): aggregates carry no device names
/// unless the operator says so (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceLabels {
    /// A keyed hash of the device name (the history's pseudonym): per-device series, no names.
    #[default]
    Pseudonym,
    /// The device name.
    Name,
    /// No per-device series.
    None,
}

/// `[api]`: the daemon's HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Api {
    pub listen: std::net::SocketAddr,
    pub device_labels: DeviceLabels,
    /// The bearer token of `/api/v1/` (created, mode 0600, if missing).
    pub token_file: PathBuf,
}

/// `[history]`: the decision history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// Whether decision events are stored at all.
    pub enabled: bool,
    /// Rows older than this many days are deleted.
    pub retention_days: u32,
    /// At most this many rows are kept (the oldest deleted first).
    pub max_rows: u64,
    /// The rows take at most this many bytes of the database (the oldest deleted first).
    pub max_bytes: u64,
    /// Store a keyed hash instead of the device name.
    pub pseudonymize: bool,
    /// Where the stored decisions are shipped as syslog (`ship`, `ship_only`, `ship_ca_file`).
    pub ship: Option<super::telemetry::Ship>,
}

/// The API token file in the state directory unless `[api] token_file` says otherwise.
pub const DEFAULT_TOKEN_FILE: &str = "api.token";
/// Where the daemon's HTTP listener is unless `[api] listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";
/// Where the history and the pseudonymisation key live unless `[gateway] state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gateway";
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
pub const DEFAULT_MAX_ROWS: u64 = 5_000_000;
pub const DEFAULT_MAX_MEGABYTES: u64 = 1024;
