//! The control API's requests and answers (`/api/v1/`), shared by the daemon's handlers and the
//! CLI's client.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    BadInput,
    config::Config,
    lifecycle::{Checkout, ControlError, Event, Status},
};

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

/// The devices of `file` (the configuration file) as they stand in `effective` (the file with
/// the lifecycle laid over it), with their statuses, at `now`.
pub fn views(
    file: &Config,
    effective: &Config,
    statuses: &BTreeMap<String, Status>,
    now: jiff::Timestamp,
) -> Vec<DeviceView> {
    let own = crate::check::devices(file, now);
    let in_force = crate::check::devices(effective, now);
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
    use std::fmt::Write as _;
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

/// The daemon of a configuration does not answer (not started, or not listening).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// The CLI's side of the API: requests to the daemon of a configuration.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client for the daemon that `config` describes (its `[api] listen` and token file).
    pub fn for_config(config: &Config) -> anyhow::Result<Self> {
        let mut addr = config.api.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let token = crate::api::read_token(&config.api.token_file)
            .map_err(|e| Unreachable(format!("{e:#} ({})", config.api.token_file.display())))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        Ok(Self {
            base: format!("http://{addr}/api/v1"),
            token,
            agent,
        })
    }

    /// `method path` with `body`; the JSON answer, or the error it carries (4xx: bad input).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let result = match body {
            Some(b) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .content_type("application/json")
                .send(b.to_string()),
            None if method == "POST" => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
            None => self.agent.get(&url).header("Authorization", &auth).call(),
        };
        let mut resp = result.map_err(|e| {
            Unreachable(format!(
                "cannot reach the daemon at {url} ({e}); is `gateway run` started?"
            ))
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| anyhow::anyhow!("reading the answer of {url}: {e}"))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{url}: answer is not JSON ({e}): {text}"))?;
        match status {
            200..=299 => Ok(value),
            400..=499 => Err(BadInput(
                value["error"]
                    .as_str()
                    .map_or_else(|| text.clone(), str::to_string),
            )
            .into()),
            _ => Err(anyhow::anyhow!(
                "{url}: {status}: {}",
                value["error"].as_str().unwrap_or(&text)
            )),
        }
    }
}
