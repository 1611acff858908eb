//! Devices as the operator sees them: identifiers, policy and the policy in force, suspension
//! and checkout; for the API, `gateway devices` and its table.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use super::{
    lifecycle::Status,
    proto::{CheckoutView, DeviceView},
};
use crate::config::Config;

/// The devices of `file` (the configuration file) as they stand in `effective` (the file with
/// the lifecycle laid over it), with their statuses, at `now`.
pub fn views(
    file: &Config,
    effective: &Config,
    statuses: &BTreeMap<String, Status>,
    now: jiff::Timestamp,
) -> Vec<DeviceView> {
    let own = devices(file, now);
    let in_force = devices(effective, now);
    own.into_iter()
        .zip(in_force)
        .map(|(o, e)| {
            let st = statuses.get(&o.name).cloned().unwrap_or_default();
            DeviceView {
                policy_in_force: e.effective_policy,
                suspended: e.suspended,
                suspended_by: st.suspended_by.iter().map(|s| s.to_string()).collect(),
                moved_to: st.moved_to,
                checkout: st.checkout.as_ref().map(CheckoutView::from),
                overdue: st.overdue,
                name: o.name,
                identifiers: o.identifiers,
                policy: o.policy,
                metadata: o.metadata,
            }
        })
        .collect()
}

/// The devices as a table for people.
pub fn render_views(rows: &[DeviceView]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<20} {:<14} {:<14} {:<22} {:<30} IDENTIFIERS",
        "DEVICE", "POLICY", "IN FORCE", "SUSPENDED", "CHECKOUT"
    );
    for d in rows {
        let suspended = if d.suspended {
            d.suspended_by.join(",")
        } else {
            "-".into()
        };
        let checkout = d.checkout.as_ref().map_or_else(
            || "-".to_string(),
            |c| {
                format!(
                    "{} until {}{}",
                    c.borrower,
                    c.due.get(..10).unwrap_or(&c.due),
                    if d.overdue { " OVERDUE" } else { "" }
                )
            },
        );
        let _ = writeln!(
            o,
            "{:<20} {:<14} {:<14} {:<22} {:<30} {}",
            d.name,
            d.policy,
            d.policy_in_force,
            suspended,
            checkout,
            d.identifiers.join(" ")
        );
    }
    o
}
/// One device as `gateway devices` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceRow {
    pub name: String,
    pub identifiers: Vec<String>,
    pub policy: String,
    /// The policy in force now (a schedule window may put another in place).
    pub effective_policy: String,
    pub suspended: bool,
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// The devices of `config` with the policies in force at `now`.
pub fn devices(config: &Config, now: jiff::Timestamp) -> Vec<DeviceRow> {
    let name = |id: usize| {
        config
            .policies
            .get(id)
            .map_or("?", |p| p.name.as_str())
            .to_string()
    };
    let effective = config.effective_policies(now);
    config
        .devices
        .iter()
        .zip(effective)
        .map(|(d, e)| {
            let mut ids: Vec<String> = d
                .macs
                .iter()
                .map(|m| {
                    m.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":")
                })
                .collect();
            ids.extend(d.ips.iter().map(|a| {
                let v6 = std::net::Ipv6Addr::from(*a);
                v6.to_ipv4_mapped()
                    .map_or_else(|| v6.to_string(), |v4| v4.to_string())
            }));
            ids.extend(d.cidrs.iter().map(ToString::to_string));
            DeviceRow {
                name: d.name.clone(),
                identifiers: ids,
                policy: name(d.policy),
                effective_policy: name(e),
                suspended: d.suspended,
                metadata: d.metadata.clone(),
            }
        })
        .collect()
}

/// The devices as a table.
pub fn render_devices(rows: &[DeviceRow]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<24} {:<16} {:<16} {:<9} identifiers",
        "device", "policy", "in force", "suspended"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "{:<24} {:<16} {:<16} {:<9} {}",
            r.name,
            r.policy,
            r.effective_policy,
            if r.suspended { "yes" } else { "no" },
            r.identifiers.join(" ")
        );
    }
    o
}
