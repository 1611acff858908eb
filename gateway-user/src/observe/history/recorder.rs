//! The recorder: a thread that drains the kernel's event ring into the history, naming each
//! event by the configuration it was decided under.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use gateway_common::{
    enums::{Action, Proto, Reason},
    maps::{DecisionEvent, NO_CATEGORY, UNKNOWN_DEVICE, UNKNOWN_SLOT},
};

use super::{Pseudonym, Row, Store};
use crate::{config::History, observe::ship::PipelineStats};

/// What the recorder needs to turn an event into a row: names for the ids the kernel reports,
/// in one configuration. The daemon adds one to the `Naming` on every reload.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub slots: std::collections::HashMap<u32, String>,
    pub policies: Vec<String>,
    pub categories: Vec<String>,
    /// Set when `[history] pseudonymize = true`.
    pub pseudonym: Option<Pseudonym>,
}

impl Names {
    /// The names of `config` and of the device `slots` (name -> slot); device names are
    /// pseudonymised with `pseudonym` if the history says so.
    pub fn of(
        config: &crate::config::Config,
        slots: &std::collections::HashMap<String, u32>,
        pseudonym: Option<&Pseudonym>,
    ) -> Self {
        Self {
            slots: slots.iter().map(|(n, s)| (*s, n.clone())).collect(),
            policies: config.policy_names(),
            categories: config.category_names(),
            pseudonym: config
                .history
                .pseudonymize
                .then(|| pseudonym.cloned())
                .flatten(),
        }
    }

    /// The row for `ev`, decided at `time_ms`.
    pub fn row(&self, ev: &DecisionEvent, time_ms: i64) -> Row {
        self.row_as(ev, time_ms, self.pseudonym.as_ref())
    }

    /// Whether `self` and `other` name every event alike (a daemon has one pseudonym key, so
    /// whether it is used is what matters).
    fn same_as(&self, other: &Names) -> bool {
        self.slots == other.slots
            && self.policies == other.policies
            && self.categories == other.categories
            && self.pseudonym.is_some() == other.pseudonym.is_some()
    }

    /// The name of the device in `slot`, pseudonymised with `pseudonym`; `(unknown)` for the
    /// slot of devices in no inventory, `slot-N` for a slot these names do not know.
    pub fn device(&self, slot: u32, pseudonym: Option<&Pseudonym>) -> String {
        match self.slots.get(&slot) {
            Some(name) => match pseudonym {
                Some(p) => p.of(name),
                None => name.clone(),
            },
            None if slot == UNKNOWN_SLOT => UNKNOWN_DEVICE.to_string(),
            None => format!("slot-{slot}"),
        }
    }

    /// The row for `ev`, device names pseudonymised with `pseudonym`.
    fn row_as(&self, ev: &DecisionEvent, time_ms: i64, pseudonym: Option<&Pseudonym>) -> Row {
        Row {
            time_ms,
            device: self.device(ev.slot, pseudonym),
            policy: self
                .policies
                .get(ev.policy as usize)
                .cloned()
                .unwrap_or_else(|| format!("policy-{}", ev.policy)),
            protocol: Proto::from_u32(ev.proto.into())
                .map_or("?", Proto::label)
                .to_string(),
            name: ev.name().to_string(),
            qtype: ev.qtype,
            action: Action::from_u32(ev.action.into())
                .map_or("?", Action::label)
                .to_string(),
            reason: Reason::from_u32(ev.reason.into())
                .map_or("?", Reason::label)
                .to_string(),
            category: (ev.category != NO_CATEGORY).then(|| {
                self.categories
                    .get(usize::from(ev.category))
                    .cloned()
                    .unwrap_or_else(|| format!("category-{}", ev.category))
            }),
        }
    }
}

/// The names of the configurations the kernel decided under lately, each from the moment its
/// generation became active: an event is named by the configuration it was decided under, not
/// the one in force when the recorder drains it (a reload that inserts or reorders policies
/// changes what a policy number means; events wait in the ring up to `POLL_MS`, and as long as
/// the daemon is down).
#[derive(Debug, Default)]
pub struct Naming {
    /// (`bpf_ktime_get_boot_ns` from which the names apply, the names), oldest first.
    eras: std::collections::VecDeque<(u64, Names)>,
}

impl Naming {
    /// Configurations kept: events older than the oldest kept are named by it.
    const KEEP: usize = 8;

    /// `names` apply to events decided from `from_boot_ns` on; names set earlier with the same
    /// start are replaced (a republish of the same generation). Names equal to the newest
    /// (an API change or a schedule switch: same devices, policies and categories) add nothing,
    /// so that they do not push out older configurations.
    pub fn set(&mut self, from_boot_ns: u64, names: Names) {
        if let Some((from, newest)) = self.eras.back()
            && *from < from_boot_ns
            && newest.same_as(&names)
        {
            return;
        }
        let at = self.eras.partition_point(|(from, _)| *from < from_boot_ns);
        match self.eras.get_mut(at) {
            Some(era) if era.0 == from_boot_ns => era.1 = names,
            _ => self.eras.insert(at, (from_boot_ns, names)),
        }
        while self.eras.len() > Self::KEEP {
            self.eras.pop_front();
        }
    }

    /// The names of the newest configuration, if any was set.
    pub fn newest(&self) -> Option<&Names> {
        self.eras.back().map(|(_, names)| names)
    }

    /// The row for `ev`, decided at `time_ms`: named by the configuration in force at the
    /// event's time, and pseudonymised as the newest configuration says (a reload that turns
    /// `pseudonymize` on leaves no name in the history, even of decisions made before it).
    pub fn row(&self, ev: &DecisionEvent, time_ms: i64) -> Row {
        let Some((_, newest)) = self.eras.back() else {
            return Names::default().row(ev, time_ms);
        };
        let at = self.eras.partition_point(|(from, _)| *from <= ev.boot_ns);
        let (_, era) = &self.eras[at.saturating_sub(1)];
        era.row_as(ev, time_ms, newest.pseudonym.as_ref())
    }
}

/// The wall-clock time, in Unix milliseconds, of a `bpf_ktime_get_boot_ns` reading.
pub fn wall_ms(boot_ns: u64) -> i64 {
    let now_boot = crate::kernel::sys::boot_ns();
    let now_ms = jiff::Timestamp::now().as_millisecond();
    now_ms - (now_boot.saturating_sub(boot_ns) / 1_000_000) as i64
}

/// What the recorder has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct RecorderStats {
    pub events: AtomicU64,
    pub rows_written: AtomicU64,
    pub rows_deleted: AtomicU64,
    pub write_errors: AtomicU64,
    /// Rows in the database at the last retention pass.
    pub rows: AtomicU64,
}

/// The thread that drains the event ring into the history.
pub struct Recorder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub stats: Arc<RecorderStats>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(30);
/// How long the recorder waits for the ring when it is quiet.
const POLL_MS: i32 = 100;

impl Recorder {
    /// Starts draining `ring` into `store` (`None`: the history is off or could not be opened;
    /// events are then only logged at debug level and dropped). Rows that retention deletes
    /// before the syslog shipper (`shipping`'s cursor) sent them are counted there as lost.
    pub fn start(
        mut ring: aya::maps::RingBuf<aya::maps::MapData>,
        store: Option<Store>,
        names: Arc<RwLock<Naming>>,
        keep: Arc<RwLock<History>>,
        shipping: Option<Arc<PipelineStats>>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RecorderStats::default());
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("history".into())
            .spawn(move || {
                let mut store = store;
                let mut last_retention: Option<Instant> = None;
                let mut rows: Vec<Row> = Vec::new();
                while !stop2.load(Ordering::Relaxed) {
                    wait_readable(&ring, POLL_MS);
                    let keep_now = keep
                        .read()
                        .map(|k| k.clone())
                        .unwrap_or_else(|e| e.into_inner().clone());
                    {
                        let names = names.read().unwrap_or_else(|e| e.into_inner());
                        while let Some(item) = ring.next() {
                            if item.len() < size_of::<DecisionEvent>() {
                                continue;
                            }
                            // SAFETY: the kernel wrote a DecisionEvent (a Pod) at the start of
                            // the item.
                            let ev: DecisionEvent =
                                unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                            let row = names.row(&ev, wall_ms(ev.boot_ns));
                            tracing::debug!(
                                device = row.device.as_str(),
                                policy = row.policy.as_str(),
                                protocol = row.protocol.as_str(),
                                name = row.name.as_str(),
                                qtype = row.qtype,
                                action = row.action.as_str(),
                                reason = row.reason.as_str(),
                                category = row.category.as_deref().unwrap_or("-"),
                                "decision"
                            );
                            rows.push(row);
                        }
                    }
                    stats2
                        .events
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
                    if let (Some(s), true, false) = (store.as_mut(), keep_now.enabled, rows.is_empty())
                    {
                        match s.insert(&rows) {
                            Ok(first) => {
                                stats2
                                    .rows_written
                                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                                // The syslog shipper, if one listens, takes them from here
                                // rather than reading them back.
                                if let Some(p) = shipping.as_deref() {
                                    p.hand(first, &mut rows);
                                }
                            }
                            Err(e) => {
                                stats2.write_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(error = %format!("{e:#}"), rows = rows.len(), "history: cannot store decisions");
                            }
                        }
                    }
                    rows.clear();
                    if let Some(s) = store.as_mut()
                        && last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
                    {
                        last_retention = Some(Instant::now());
                        let now = jiff::Timestamp::now().as_millisecond();
                        // The shipper moves its cursor meanwhile: the counts before and after
                        // are both of the rows above the cursor as it was before.
                        let unshipped = shipping
                            .as_deref()
                            .map(|p| (p.cursor.load(Ordering::Relaxed), p.only_blocked.load(Ordering::Relaxed)))
                            .filter(|(cursor, _)| *cursor >= 0)
                            .and_then(|(c, b)| Some((c, b, s.count_after(c, b).ok()?)));
                        match s.enforce_retention(now, &keep_now) {
                            Ok(n) => {
                                stats2.rows_deleted.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(e) => tracing::error!(error = %format!("{e:#}"), "history: retention failed"),
                        }
                        if let (Some((c, b, before)), Some(p)) = (unshipped, shipping.as_deref())
                            && let Ok(after) = s.count_after(c, b)
                            && after < before
                        {
                            p.dropped.fetch_add(before - after, Ordering::Relaxed);
                            tracing::warn!(rows = before - after, "history: retention deleted rows the syslog shipper had not sent yet (lost)");
                        }
                        if let Ok(n) = s.count() {
                            stats2.rows.store(n, Ordering::Relaxed);
                        }
                    }
                }
            })
            .ok();
        if thread.is_none() {
            tracing::error!("history: cannot start the recorder thread; decisions are not stored");
        }
        Self {
            stop,
            thread,
            stats,
        }
    }

    /// Stops the thread after its current drain.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits up to `timeout_ms` for the ring to have data (the kernel wakes it when half full, and
/// the recorder looks at least this often anyway).
fn wait_readable(ring: &aya::maps::RingBuf<aya::maps::MapData>, timeout_ms: i32) {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let mut pfd = libc::pollfd {
        fd: ring.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::history::tests::dir;

    fn names(policies: &[&str], categories: &[&str], slot_7: &str) -> Names {
        Names {
            slots: std::collections::HashMap::from([(7, slot_7.to_string())]),
            policies: policies.iter().map(|p| p.to_string()).collect(),
            categories: categories.iter().map(|c| c.to_string()).collect(),
            pseudonym: None,
        }
    }

    fn event(boot_ns: u64, policy: u32, category: u8) -> DecisionEvent {
        // SAFETY: DecisionEvent is plain old data; all zeros is a valid value.
        let mut ev: DecisionEvent = unsafe { std::mem::zeroed() };
        ev.boot_ns = boot_ns;
        ev.slot = 7;
        ev.policy = policy;
        ev.category = category;
        ev
    }

    /// (device, policy, category) of `ev` as `n` names it.
    fn named(n: &Naming, ev: &DecisionEvent) -> (String, String, Option<String>) {
        let r = n.row(ev, 0);
        (r.device, r.policy, r.category)
    }

    #[test]
    fn events_are_named_by_the_configuration_they_were_decided_under() {
        let mut n = Naming::default();
        // Nothing set yet: numbers.
        assert_eq!(
            named(&n, &event(5, 1, 0)),
            (
                "slot-7".into(),
                "policy-1".into(),
                Some("category-0".into())
            )
        );
        n.set(100, names(&["students", "staff"], &["ads"], "tablet"));
        // A reload inserts a policy first and moves the device's slot to another device.
        n.set(
            200,
            names(
                &["guests", "students", "staff"],
                &["ads", "games"],
                "laptop",
            ),
        );
        let t = |s: &str| s.to_string();
        // Before the first configuration: the oldest kept names it.
        assert_eq!(
            named(&n, &event(50, 0, 0)),
            (t("tablet"), t("students"), Some(t("ads")))
        );
        assert_eq!(
            named(&n, &event(199, 0, 0)),
            (t("tablet"), t("students"), Some(t("ads")))
        );
        // From the flip on, the new one.
        assert_eq!(
            named(&n, &event(200, 0, 1)),
            (t("laptop"), t("guests"), Some(t("games")))
        );
        assert_eq!(
            named(&n, &event(10_000, 1, NO_CATEGORY)),
            (t("laptop"), t("students"), None)
        );
        // The same generation published again replaces its names, and keeps the earlier ones.
        n.set(
            200,
            names(&["guests", "pupils", "staff"], &["ads"], "laptop"),
        );
        assert_eq!(named(&n, &event(300, 1, 0)).1, "pupils");
        assert_eq!(named(&n, &event(150, 1, 0)).1, "staff");
        // Set out of order (a restart's predecessor, from 0): placed by its start.
        n.set(0, names(&["old"], &[], "sensor"));
        assert_eq!(named(&n, &event(99, 0, 0)).1, "old");
        assert_eq!(named(&n, &event(100, 0, 0)).1, "students");
        // The same names again (an API change) add nothing: 100 and 200 stay as they were.
        for k in 0..2 * Naming::KEEP as u64 {
            n.set(
                300 + k,
                names(&["guests", "pupils", "staff"], &["ads"], "laptop"),
            );
        }
        assert_eq!(n.eras.len(), 3);
        assert_eq!(named(&n, &event(150, 1, 0)).1, "staff");
        // Only the last KEEP configurations are kept.
        for k in 0..Naming::KEEP as u64 {
            n.set(1_000 + k, names(&[&format!("p{k}")], &[], "x"));
        }
        assert_eq!(n.eras.len(), Naming::KEEP);
        assert_eq!(named(&n, &event(150, 0, 0)).1, "p0");
        assert_eq!(
            named(&n, &event(2_000, 0, 0)).1,
            format!("p{}", Naming::KEEP - 1)
        );
    }

    #[test]
    fn the_newest_configuration_decides_pseudonyms() {
        let d = dir("naming-pseudonym");
        std::fs::create_dir_all(&d).expect("dir");
        let p = Pseudonym::load_or_create(&d).expect("key");
        let mut n = Naming::default();
        n.set(100, names(&["students"], &[], "tablet"));
        let later = Names {
            pseudonym: Some(p.clone()),
            ..names(&["students"], &[], "tablet")
        };
        n.set(200, later);
        // Decided before `pseudonymize = true`, drained after it: no name stored.
        assert_eq!(named(&n, &event(150, 0, 0)).0, p.of("tablet"));
        assert_eq!(named(&n, &event(250, 0, 0)).0, p.of("tablet"));
        // And turned off again: names.
        n.set(300, names(&["students"], &[], "tablet"));
        assert_eq!(named(&n, &event(250, 0, 0)).0, "tablet");
        let _ = std::fs::remove_dir_all(&d);
    }
}
