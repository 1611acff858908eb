//! Queries of the history: `gateway log`'s filters, times and ages, the keys a device's rows
//! are stored under, and the table for people.

use std::path::Path;

use gateway_common::enums::{Action, Proto};

use super::{KEY_FILE, Pseudonym, Row};
use crate::BadInput;

/// What `gateway log` asks for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Device names (and their pseudonyms); any of them.
    pub devices: Vec<String>,
    pub action: Option<String>,
    /// The name or any name under it.
    pub name_suffix: Option<String>,
    pub protocol: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Most recent rows first, at most this many (all if `None`).
    pub limit: Option<usize>,
}

/// The keys a device's rows may be stored under: its name, and its pseudonym when the state
/// directory has a key.
pub fn device_keys(state_dir: &Path, device: &str) -> anyhow::Result<Vec<String>> {
    let mut keys = vec![device.to_string()];
    let key = state_dir.join(KEY_FILE);
    if key.exists() {
        keys.push(Pseudonym::load(&key)?.of(device));
    }
    Ok(keys)
}

/// A point in time for `--since`/`--until`: an RFC 3339 timestamp (`2026-11-26T08:00:00Z`,
/// `2026-11-26T08:00:00+01:00`) or an age (`90s`, `15m`, `2h`, `7d`, `2w`: that long before
/// `now`). Unix milliseconds.
pub fn parse_time(text: &str, now: jiff::Timestamp) -> Result<i64, BadInput> {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let seconds: Option<i64> = match unit {
        "s" => Some(1),
        "m" => Some(60),
        "h" => Some(3_600),
        "d" => Some(86_400),
        "w" => Some(604_800),
        _ => None,
    };
    match (n.parse::<i64>(), seconds) {
        (Ok(n), Some(unit)) if n <= 36_500 * 86_400 => Ok(now.as_millisecond() - n * unit * 1_000),
        _ => Err(BadInput(format!(
            "\"{text}\" is not a time: expected an RFC 3339 timestamp (2026-11-26T08:00:00Z) or an age (15m, 2h, 7d)"
        ))),
    }
}

/// Checks an `action` or `protocol` value against the labels that exist.
fn check_label(what: &str, value: &str, labels: &[&str]) -> Result<(), BadInput> {
    if labels.contains(&value) {
        Ok(())
    } else {
        Err(BadInput(format!(
            "{what} \"{value}\": expected one of {}",
            labels.join(", ")
        )))
    }
}

/// A history query as given, on the command line (`gateway log`) or in the API's query string.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub devices: Vec<String>,
    pub action: Option<String>,
    pub name: Option<String>,
    pub protocol: Option<String>,
    /// RFC 3339 times or ages (`parse_time`).
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<usize>,
}

impl Filter {
    /// The filter `q` asks for: labels checked, times parsed, each device also under its
    /// pseudonym (the key in `state_dir`). Bad values are `BadInput`.
    pub fn from_query(q: Query, state_dir: &Path, now: jiff::Timestamp) -> anyhow::Result<Self> {
        if let Some(a) = &q.action {
            let labels: Vec<&str> = Action::ALL.iter().map(|a| a.label()).collect();
            check_label("action", a, &labels)?;
        }
        if let Some(p) = &q.protocol {
            let labels: Vec<&str> = Proto::ALL.iter().map(|p| p.label()).collect();
            check_label("protocol", p, &labels)?;
        }
        let mut devices = Vec::new();
        for d in &q.devices {
            devices.extend(device_keys(state_dir, d)?);
        }
        Ok(Self {
            devices,
            action: q.action,
            name_suffix: q.name,
            protocol: q.protocol,
            since_ms: q.since.map(|t| parse_time(&t, now)).transpose()?,
            until_ms: q.until.map(|t| parse_time(&t, now)).transpose()?,
            limit: q.limit,
        })
    }
}

/// Rows as a table for people, times in `tz`.
pub fn render(rows: &[Row], tz: &jiff::tz::TimeZone) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<25} {:<20} {:<14} {:<6} {:<40} {:>5} {:<8} {:<14} CATEGORY",
        "TIME", "DEVICE", "POLICY", "PROTO", "NAME", "QTYPE", "ACTION", "REASON"
    );
    for r in rows {
        let time = jiff::Timestamp::from_millisecond(r.time_ms).map_or_else(
            |_| r.time_ms.to_string(),
            |t| {
                t.to_zoned(tz.clone())
                    .strftime("%Y-%m-%dT%H:%M:%S%:z")
                    .to_string()
            },
        );
        let _ = writeln!(
            o,
            "{:<25} {:<20} {:<14} {:<6} {:<40} {:>5} {:<8} {:<14} {}",
            time,
            r.device,
            r.policy,
            r.protocol,
            r.name,
            r.qtype,
            r.action,
            r.reason,
            r.category.as_deref().unwrap_or("-")
        );
    }
    o
}
