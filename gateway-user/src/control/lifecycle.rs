//! Device lifecycle (SPEC §8): operator suspensions and policy moves, and media-center
//! checkouts, kept in the state directory's SQLite database (the history's file) so they survive
//! restarts and reloads. `effective` lays them over the configuration file: the daemon applies
//! the result, so a suspension reaches the kernel as a map update like any other change.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::Duration,
};

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;

use super::proto::ControlError;
use crate::config::{Config, Overdue};

/// Why an operator-side suspension is in place.
pub const BY_OPERATOR: &str = "operator";
/// A checked-in device held suspended (`[lifecycle] hold_checked_in`).
pub const BY_CHECKIN: &str = "checked_in";

/// One checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkout {
    pub id: i64,
    pub device: String,
    pub borrower: String,
    /// The content-filter policy while checked out (`None`: the device's own).
    pub policy: Option<String>,
    /// Unix milliseconds.
    pub due_ms: i64,
    pub out_ms: i64,
    pub in_ms: Option<i64>,
    /// When it was first seen overdue.
    pub overdue_ms: Option<i64>,
}

/// One lifecycle event of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub time_ms: i64,
    pub device: String,
    /// suspend, resume, move, checkout, checkin, hold, overdue.
    pub event: String,
    pub detail: Option<String>,
}

/// The operator's state of a device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// `BY_OPERATOR` or `BY_CHECKIN`.
    pub suspended: Option<String>,
    /// The policy the device was moved to.
    pub policy: Option<String>,
}

/// Everything `effective` needs, read from the store at once.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub devices: HashMap<String, DeviceState>,
    /// Open checkouts by device.
    pub open: HashMap<String, Checkout>,
}

/// How a device stands now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Why it is suspended (empty: it is not): `configuration`, `operator`, `checked_in`,
    /// `overdue`.
    pub suspended_by: Vec<&'static str>,
    /// The policy it was moved to, if any.
    pub moved_to: Option<String>,
    pub checkout: Option<Checkout>,
    pub overdue: bool,
}

/// Each device of `config` (in order) with the lifecycle laid over it at `now`: its policy id
/// (checkout policy, else the one it was moved to, else its own), whether it is suspended, and
/// its status. Policies that no longer exist are ignored (the device keeps its own).
pub fn laid_over(config: &Config, snap: &Snapshot, now_ms: i64) -> Vec<(usize, bool, Status)> {
    config
        .devices
        .iter()
        .map(|dev| {
            let mut st = Status::default();
            let mut policy = dev.policy;
            if dev.suspended {
                st.suspended_by.push("configuration");
            }
            let state = snap.devices.get(&dev.name).cloned().unwrap_or_default();
            if let Some(why) = &state.suspended {
                st.suspended_by.push(if why == BY_CHECKIN {
                    BY_CHECKIN
                } else {
                    BY_OPERATOR
                });
            }
            if let Some(p) = state.policy.as_deref().and_then(|p| config.policy_id(p)) {
                policy = p;
                st.moved_to = state.policy.clone();
            }
            if let Some(c) = snap.open.get(&dev.name) {
                if let Some(p) = c.policy.as_deref().and_then(|p| config.policy_id(p)) {
                    policy = p;
                }
                st.overdue = now_ms >= c.due_ms;
                if st.overdue && config.lifecycle.overdue == Overdue::Suspend {
                    st.suspended_by.push("overdue");
                }
                st.checkout = Some(c.clone());
            }
            (policy, !st.suspended_by.is_empty(), st)
        })
        .collect()
}

/// `config` with the lifecycle laid over it at `now` (`laid_over` applied to a copy), and each
/// device's status.
pub fn effective(
    config: &Config,
    snap: &Snapshot,
    now_ms: i64,
) -> (Config, BTreeMap<String, Status>) {
    let mut out = config.clone();
    let mut statuses = BTreeMap::new();
    for (dev, (policy, suspended, st)) in
        out.devices.iter_mut().zip(laid_over(config, snap, now_ms))
    {
        dev.policy = policy;
        dev.suspended = suspended;
        statuses.insert(dev.name.clone(), st);
    }
    (out, statuses)
}

/// The lifecycle tables.
pub struct Store {
    conn: Connection,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("lifecycle::Store").finish_non_exhaustive()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS device_state (
    device TEXT PRIMARY KEY,
    suspended TEXT,
    policy TEXT
);
CREATE TABLE IF NOT EXISTS checkouts (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    borrower TEXT NOT NULL,
    policy TEXT,
    due_ms INTEGER NOT NULL,
    out_ms INTEGER NOT NULL,
    in_ms INTEGER,
    overdue_ms INTEGER
);
CREATE INDEX IF NOT EXISTS checkouts_device ON checkouts (device, out_ms);
CREATE TABLE IF NOT EXISTS lifecycle_events (
    id INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    device TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS lifecycle_events_device ON lifecycle_events (device, id);
";

/// The longest borrower ID or note accepted.
pub const MAX_TEXT: usize = 256;

fn check_text(what: &str, s: &str, required: bool) -> Result<(), ControlError> {
    if required && s.trim().is_empty() {
        return Err(ControlError::BadRequest(format!(
            "{what}: must not be empty"
        )));
    }
    if s.len() > MAX_TEXT {
        return Err(ControlError::BadRequest(format!(
            "{what}: {} bytes, at most {MAX_TEXT}",
            s.len()
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(ControlError::BadRequest(format!(
            "{what}: control characters are not allowed"
        )));
    }
    Ok(())
}

/// The configured device called `name`.
pub fn device<'c>(
    config: &'c Config,
    name: &str,
) -> Result<&'c crate::config::Device, ControlError> {
    config
        .devices
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| ControlError::UnknownDevice(name.to_string()))
}

/// The device `name` of a request that carries a `note`, the note checked.
fn noted<'c>(
    config: &'c Config,
    name: &str,
    note: Option<&str>,
) -> Result<&'c crate::config::Device, ControlError> {
    let d = device(config, name)?;
    if let Some(n) = note {
        check_text("note", n, false)?;
    }
    Ok(d)
}

/// `policy`, if given, must exist.
fn check_policy(config: &Config, policy: Option<&str>) -> Result<(), ControlError> {
    match policy {
        Some(p) if config.policy_id(p).is_none() => {
            Err(ControlError::BadRequest(format!("unknown policy \"{p}\"")))
        }
        _ => Ok(()),
    }
}

fn checkout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Checkout> {
    Ok(Checkout {
        id: r.get(0)?,
        device: r.get(1)?,
        borrower: r.get(2)?,
        policy: r.get(3)?,
        due_ms: r.get(4)?,
        out_ms: r.get(5)?,
        in_ms: r.get(6)?,
        overdue_ms: r.get(7)?,
    })
}

const CHECKOUT_COLUMNS: &str = "id, device, borrower, policy, due_ms, out_ms, in_ms, overdue_ms";

impl Store {
    /// Opens (creating) the lifecycle tables in the state directory's database.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let history = crate::observe::history::Store::open(state_dir)?;
        let conn = Connection::open(history.path())?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// An in-memory store (tests).
    pub fn in_memory() -> anyhow::Result<Self> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// Everything `effective` needs.
    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let mut snap = Snapshot::default();
        let mut st = self
            .conn
            .prepare("SELECT device, suspended, policy FROM device_state")?;
        for row in st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                DeviceState {
                    suspended: r.get(1)?,
                    policy: r.get(2)?,
                },
            ))
        })? {
            let (d, s) = row?;
            snap.devices.insert(d, s);
        }
        for c in self.checkouts(None, true)? {
            snap.open.insert(c.device.clone(), c);
        }
        Ok(snap)
    }

    fn state(&self, device: &str) -> rusqlite::Result<DeviceState> {
        Ok(self
            .conn
            .query_row(
                "SELECT suspended, policy FROM device_state WHERE device = ?1",
                params![device],
                |r| {
                    Ok(DeviceState {
                        suspended: r.get(0)?,
                        policy: r.get(1)?,
                    })
                },
            )
            .optional()?
            .unwrap_or_default())
    }

    fn set_state(&self, device: &str, s: &DeviceState) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT INTO device_state (device, suspended, policy) VALUES (?1, ?2, ?3)
             ON CONFLICT (device) DO UPDATE SET suspended = ?2, policy = ?3",
            params![device, s.suspended, s.policy],
        )?;
        Ok(())
    }

    fn event(
        &self,
        now_ms: i64,
        device: &str,
        event: &str,
        detail: Option<&str>,
    ) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT INTO lifecycle_events (time_ms, device, event, detail) VALUES (?1, ?2, ?3, ?4)",
            params![now_ms, device, event, detail],
        )?;
        Ok(())
    }

    /// Suspends `device` (operator).
    pub fn suspend(
        &self,
        config: &Config,
        device: &str,
        note: Option<&str>,
        now_ms: i64,
    ) -> Result<(), ControlError> {
        let d = noted(config, device, note)?;
        let mut s = self.state(device)?;
        if let Some(why) = &s.suspended {
            return Err(ControlError::Conflict(format!(
                "{device} is suspended already ({why})"
            )));
        }
        if d.suspended {
            return Err(ControlError::Conflict(format!(
                "{device} is suspended already (in the configuration file)"
            )));
        }
        s.suspended = Some(BY_OPERATOR.into());
        self.set_state(device, &s)?;
        self.event(now_ms, device, "suspend", note)?;
        Ok(())
    }

    /// Lifts the operator's (or a check-in's) suspension of `device`.
    pub fn resume(
        &self,
        config: &Config,
        device: &str,
        note: Option<&str>,
        now_ms: i64,
    ) -> Result<(), ControlError> {
        let d = noted(config, device, note)?;
        let mut s = self.state(device)?;
        if s.suspended.is_none() {
            let why = if d.suspended {
                format!("{device} is suspended in the configuration file: edit it to resume")
            } else {
                let overdue = self
                    .checkouts(Some(device), true)?
                    .first()
                    .is_some_and(|c| now_ms >= c.due_ms)
                    && config.lifecycle.overdue == Overdue::Suspend;
                if overdue {
                    format!("{device} is suspended because its checkout is overdue: check it in")
                } else {
                    format!("{device} is not suspended")
                }
            };
            return Err(ControlError::Conflict(why));
        }
        s.suspended = None;
        self.set_state(device, &s)?;
        self.event(now_ms, device, "resume", note)?;
        Ok(())
    }

    /// Moves `device` to `policy` (`None`: back to its own).
    pub fn move_to(
        &self,
        config: &Config,
        device: &str,
        policy: Option<&str>,
        now_ms: i64,
    ) -> Result<(), ControlError> {
        self::device(config, device)?;
        check_policy(config, policy)?;
        let mut s = self.state(device)?;
        s.policy = policy.map(str::to_string);
        self.set_state(device, &s)?;
        self.event(now_ms, device, "move", Some(policy.unwrap_or("(its own)")))?;
        Ok(())
    }

    /// Lends `device` to `borrower` until `due_ms`, with `policy` while it is out.
    pub fn checkout(
        &self,
        config: &Config,
        device: &str,
        borrower: &str,
        due_ms: i64,
        policy: Option<&str>,
        now_ms: i64,
    ) -> Result<Checkout, ControlError> {
        self::device(config, device)?;
        check_text("borrower", borrower, true)?;
        if due_ms <= now_ms {
            return Err(ControlError::BadRequest(
                "due: the due date is not in the future".into(),
            ));
        }
        check_policy(config, policy)?;
        if let Some(open) = self.checkouts(Some(device), true)?.first() {
            return Err(ControlError::Conflict(format!(
                "{device} is checked out already (to {})",
                open.borrower
            )));
        }
        self.conn.execute(
            "INSERT INTO checkouts (device, borrower, policy, due_ms, out_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![device, borrower, policy, due_ms, now_ms],
        )?;
        // A device lent out is in use: a check-in hold ends.
        let mut s = self.state(device)?;
        if s.suspended.as_deref() == Some(BY_CHECKIN) {
            s.suspended = None;
            self.set_state(device, &s)?;
        }
        self.event(now_ms, device, "checkout", Some(&format!("to {borrower}")))?;
        self.checkouts(Some(device), true)?
            .into_iter()
            .next()
            .ok_or_else(|| ControlError::Internal(anyhow::anyhow!("the checkout was not stored")))
    }

    /// Returns `device`; holds it suspended if `[lifecycle] hold_checked_in`.
    pub fn checkin(
        &self,
        config: &Config,
        device: &str,
        note: Option<&str>,
        now_ms: i64,
    ) -> Result<Checkout, ControlError> {
        noted(config, device, note)?;
        let Some(open) = self.checkouts(Some(device), true)?.into_iter().next() else {
            return Err(ControlError::Conflict(format!(
                "{device} is not checked out"
            )));
        };
        self.conn.execute(
            "UPDATE checkouts SET in_ms = ?1 WHERE id = ?2",
            params![now_ms, open.id],
        )?;
        self.event(now_ms, device, "checkin", note)?;
        if config.lifecycle.hold_checked_in {
            let mut s = self.state(device)?;
            if s.suspended.is_none() {
                s.suspended = Some(BY_CHECKIN.into());
                self.set_state(device, &s)?;
                self.event(now_ms, device, "hold", None)?;
            }
        }
        Ok(Checkout {
            in_ms: Some(now_ms),
            ..open
        })
    }

    /// Records the checkouts that became overdue by `now_ms` (once each); returns their devices.
    pub fn mark_overdue(&self, now_ms: i64) -> anyhow::Result<Vec<String>> {
        let due: Vec<Checkout> = self
            .checkouts(None, true)?
            .into_iter()
            .filter(|c| c.overdue_ms.is_none() && now_ms >= c.due_ms)
            .collect();
        for c in &due {
            self.conn.execute(
                "UPDATE checkouts SET overdue_ms = ?1 WHERE id = ?2",
                params![now_ms, c.id],
            )?;
            self.event(
                now_ms,
                &c.device,
                "overdue",
                Some(&format!("borrowed by {}", c.borrower)),
            )?;
        }
        Ok(due.into_iter().map(|c| c.device).collect())
    }

    /// Checkouts (of `device`, or all), newest first; only open ones if `open`.
    pub fn checkouts(&self, device: Option<&str>, open: bool) -> rusqlite::Result<Vec<Checkout>> {
        let sql = format!(
            "SELECT {CHECKOUT_COLUMNS} FROM checkouts WHERE (?1 IS NULL OR device = ?1) AND (?2 = 0 OR in_ms IS NULL) ORDER BY out_ms DESC, id DESC"
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(params![device, open as i64], checkout_row)?;
        rows.collect()
    }

    /// The lifecycle events of `device`, in order.
    pub fn events(&self, device: &str) -> rusqlite::Result<Vec<Event>> {
        let mut st = self.conn.prepare(
            "SELECT time_ms, device, event, detail FROM lifecycle_events WHERE device = ?1 ORDER BY id",
        )?;
        let rows = st.query_map(params![device], |r| {
            Ok(Event {
                time_ms: r.get(0)?,
                device: r.get(1)?,
                event: r.get(2)?,
                detail: r.get(3)?,
            })
        })?;
        rows.collect()
    }
}

/// A due date: an RFC 3339 time, or a date (`2026-12-01`: the end of that day in `tz`).
pub fn parse_due(text: &str, tz: &jiff::tz::TimeZone) -> Result<i64, ControlError> {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    if let Ok(d) = text.parse::<jiff::civil::Date>() {
        let end = d
            .at(23, 59, 59, 0)
            .to_zoned(tz.clone())
            .map_err(|e| ControlError::BadRequest(format!("due: {e}")))?;
        return Ok(end.timestamp().as_millisecond());
    }
    Err(ControlError::BadRequest(format!(
        "due: \"{text}\" is not a date (expected 2026-12-01 or 2026-12-01T15:00:00Z)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> Config {
        Config::parse(
            "[[policy]]\nname = \"guest\"\n[[device]]\nname = \"tablet\"\nmac = \"02:00:00:00:00:09\"\npolicy = \"guest\"\n",
            Path::new("t.toml"),
        )
        .expect("config")
    }

    proptest! {
        /// Whatever the strings in a request, the lifecycle answers Ok or an error that the API
        /// maps to 400, 404 or 409, never a panic or an internal error; and the state stays
        /// readable and consistent.
        #[test]
        fn any_request_gets_an_answer(
            ops in proptest::collection::vec(
                (0u8..6, prop_oneof![Just("tablet".to_string()), ".{0,12}"], ".{0,300}", prop_oneof![Just("2099-01-01".to_string()), Just("2000-01-01T00:00:00Z".to_string()), ".{0,30}"], prop_oneof![Just(None), Just(Some("guest".to_string())), ".{0,10}".prop_map(Some)]),
                1..20,
            ),
        ) {
            let c = config();
            let store = Store::in_memory().expect("store");
            let mut now = 1_800_000_000_000i64;
            for (op, device, text, due, policy) in ops {
                now += 60_000;
                let r = match op {
                    0 => store.suspend(&c, &device, Some(&text), now),
                    1 => store.resume(&c, &device, Some(&text), now),
                    2 => store.move_to(&c, &device, policy.as_deref(), now),
                    3 => parse_due(&due, &c.timezone)
                        .and_then(|d| store.checkout(&c, &device, &text, d, policy.as_deref(), now).map(|_| ())),
                    4 => store.checkin(&c, &device, Some(&text), now).map(|_| ()),
                    _ => store.mark_overdue(now).map(|_| ()).map_err(ControlError::Internal),
                };
                if let Err(e) = r {
                    prop_assert!(!matches!(e, ControlError::Internal(_) | ControlError::Unauthorized), "{e}");
                }
                let snap = store.snapshot().expect("snapshot");
                prop_assert!(snap.open.len() <= 1);
                let (effective, statuses) = effective(&c, &snap, now);
                prop_assert_eq!(effective.devices.len(), 1);
                prop_assert_eq!(effective.devices[0].suspended, !statuses["tablet"].suspended_by.is_empty());
            }
        }
    }
}
