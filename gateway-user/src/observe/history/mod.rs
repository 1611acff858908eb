//! The decision history: the kernel's decision events, stored in SQLite (WAL) under the state
//! directory, kept by age and by count, queried by `gateway log`, erased per device by
//! `gateway forget` and exported by `gateway export`.
//!
//! The daemon drains the event ring on a thread of its own (`Recorder`) and writes each drain in
//! one transaction. With `pseudonymize = true` the device column holds a keyed hash of the device
//! name (`Pseudonym`, key in the state directory, mode 0600) instead of the name; no address,
//! MAC or other identifier is ever stored.

mod pseudonym;
mod query;
mod recorder;
mod store;
#[cfg(test)]
mod tests;

use serde::Serialize;

pub use pseudonym::Pseudonym;
pub use query::{Filter, Query, device_keys, parse_time, render};
pub use recorder::{Names, Naming, Recorder, RecorderStats, wall_ms};
pub use store::Store;

pub const DATABASE: &str = "history.sqlite";
/// The pseudonymisation key in the state directory.
pub const KEY_FILE: &str = "pseudonym.key";

/// One stored decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The device name, or its pseudonym.
    pub device: String,
    pub policy: String,
    pub protocol: String,
    /// The DNS query name or the TLS server name.
    pub name: String,
    pub qtype: u16,
    pub action: String,
    pub reason: String,
    pub category: Option<String>,
}

/// A stored decision's fields, borrowed (from a query's row, or from a `Row`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRef<'a> {
    pub time_ms: i64,
    pub device: &'a str,
    pub policy: &'a str,
    pub protocol: &'a str,
    pub name: &'a str,
    pub qtype: u16,
    pub action: &'a str,
    pub reason: &'a str,
    pub category: Option<&'a str>,
}

impl Row {
    /// The fields, borrowed.
    pub fn borrowed(&self) -> RowRef<'_> {
        RowRef {
            time_ms: self.time_ms,
            device: &self.device,
            policy: &self.policy,
            protocol: &self.protocol,
            name: &self.name,
            qtype: self.qtype,
            action: &self.action,
            reason: &self.reason,
            category: self.category.as_deref(),
        }
    }
}
