//! The control API's requests, answers and errors (`/api/v1/`), shared by the daemon's
//! handlers and the CLI's client.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::lifecycle::{Checkout, Event};

/// What an API request asks of the daemon (validated and typed by the HTTP layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Devices,
    Device(String),
    Suspend {
        device: String,
        note: Option<String>,
    },
    Resume {
        device: String,
        note: Option<String>,
    },
    Move {
        device: String,
        policy: Option<String>,
    },
    Checkout {
        device: String,
        borrower: String,
        due: String,
        policy: Option<String>,
    },
    Checkin {
        device: String,
        note: Option<String>,
    },
    Checkouts {
        device: Option<String>,
        open: bool,
    },
    Events(String),
}

/// The daemon's answer: a JSON document, or why not.
pub type Reply = Result<serde_json::Value, ControlError>;

/// Body of `suspend`, `resume` and `checkin` (optional).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    pub note: Option<String>,
}

/// Body of `move`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    /// The policy to move to; `null` moves the device back to its own.
    pub policy: Option<String>,
}

/// Body of `checkout`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    pub borrower: String,
    /// `2026-12-01` (end of that day, local time) or an RFC 3339 time.
    pub due: String,
    /// The content-filter policy while it is out.
    pub policy: Option<String>,
}

/// A device as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceView {
    pub name: String,
    pub identifiers: Vec<String>,
    /// Its policy in the configuration file.
    pub policy: String,
    /// The policy in force now (moves, checkouts, schedules).
    pub policy_in_force: String,
    pub suspended: bool,
    /// Why: configuration, operator, checked_in, overdue.
    pub suspended_by: Vec<String>,
    pub moved_to: Option<String>,
    pub checkout: Option<CheckoutView>,
    pub overdue: bool,
    pub metadata: BTreeMap<String, String>,
}

/// A checkout as the API shows it (times in RFC 3339).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckoutView {
    pub device: String,
    pub borrower: String,
    pub policy: Option<String>,
    pub due: String,
    pub checked_out: String,
    pub checked_in: Option<String>,
    pub overdue_since: Option<String>,
}

fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

impl From<&Checkout> for CheckoutView {
    fn from(c: &Checkout) -> Self {
        Self {
            device: c.device.clone(),
            borrower: c.borrower.clone(),
            policy: c.policy.clone(),
            due: time(c.due_ms),
            checked_out: time(c.out_ms),
            checked_in: c.in_ms.map(time),
            overdue_since: c.overdue_ms.map(time),
        }
    }
}

/// A lifecycle event as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventView {
    pub time: String,
    pub event: String,
    pub detail: Option<String>,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        Self {
            time: time(e.time_ms),
            event: e.event.clone(),
            detail: e.detail.clone(),
        }
    }
}

/// Why a request was refused; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// 400: the request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// 401.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// 404.
    #[error("unknown device \"{0}\"")]
    UnknownDevice(String),
    /// 409: the device is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// 500.
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<rusqlite::Error> for ControlError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Internal(e.into())
    }
}
