//! The decision history: the kernel's decision events, stored in SQLite (WAL) under the state
//! directory, kept by age and by count, queried by `gateway log`, erased per device by
//! `gateway forget` and exported by `gateway export`.
//!
//! The daemon drains the event ring on a thread of its own (`Recorder`) and writes each drain in
//! one transaction. With `pseudonymize = true` the device column holds a keyed hash of the device
//! name (`Pseudonym`, key in the state directory, mode 0600) instead of the name; no address,
//! MAC or other identifier is ever stored.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use gateway_common::{
    enums::{Action, Proto, Reason},
    maps::{DecisionEvent, NO_CATEGORY, UNKNOWN_SLOT},
};
use rusqlite::{Connection, params};
use serde::Serialize;

use crate::{BadInput, config::History, stats::UNKNOWN_DEVICE};

/// The database file in the state directory.
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

/// The keyed hash that stands for a device name (BLAKE3 in keyed mode, 64 bits shown).
#[derive(Clone)]
pub struct Pseudonym {
    key: [u8; 32],
}

impl std::fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonym(..)")
    }
}

impl Pseudonym {
    /// The key in `state_dir`, created (mode 0600) if there is none. A key file that others can
    /// read is refused: it would let them reverse the pseudonyms of known device names.
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join(KEY_FILE);
        let bytes = crate::secret::load_or_create(&path, || crate::secret::random_bytes(32))?;
        Self::from_bytes(&path, &bytes)
    }

    /// The key at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::from_bytes(path, &crate::secret::read_private(path)?)
    }

    fn from_bytes(path: &Path, bytes: &[u8]) -> anyhow::Result<Self> {
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            BadInput(format!(
                "{}: {} bytes, expected a 32-byte key",
                path.display(),
                bytes.len()
            ))
        })?;
        Ok(Self { key })
    }

    /// The pseudonym of device `name`: `p-` and 16 hex digits.
    pub fn of(&self, name: &str) -> String {
        let h = blake3::keyed_hash(&self.key, name.as_bytes());
        let mut out = String::from("p-");
        for b in &h.as_bytes()[..8] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

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

/// The history database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    device TEXT NOT NULL,
    policy TEXT NOT NULL,
    protocol TEXT NOT NULL,
    name TEXT NOT NULL,
    qtype INTEGER NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    category TEXT
);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (time_ms);
";
// Only time is indexed: an index on the device (rows of a few hundred devices interleaved)
// made every insert a random b-tree write and halved the ingest rate. Queries by device
// (`log --device`, `forget`, `export`) scan, narrowed by time when `--since` is given.

impl Store {
    /// Opens (creating if needed) the history in `state_dir`.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        crate::secret::ensure_private_dir(state_dir)?;
        Self::open_file(&state_dir.join(DATABASE))
    }

    /// Opens the existing history in `state_dir` (for the query verbs: no history is an error
    /// that says where it was looked for).
    pub fn open_existing(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join(DATABASE);
        if !path.exists() {
            return Err(BadInput(format!(
                "{}: no history here (is [gateway] state_dir the daemon's, and has it run?)",
                path.display()
            ))
            .into());
        }
        Self::open_file(&path)
    }

    fn open_file(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        // WAL: the daemon writes while `gateway log` reads. secure_delete: rows that `forget`
        // and retention delete are overwritten, not left in free pages.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("creating the tables of {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores `rows` in one transaction.
    pub fn insert(&mut self, rows: &[Row]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO decisions (time_ms, device, policy, protocol, name, qtype, action, reason, category)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for r in rows {
                st.execute(params![
                    r.time_ms, r.device, r.policy, r.protocol, r.name, r.qtype, r.action, r.reason,
                    r.category
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes rows older than `keep.retention_days` before `now_ms`, then the oldest rows
    /// beyond `keep.max_rows`, then the oldest rows until the database's pages in use take at
    /// most `keep.max_bytes` (freed pages are reused, so the file stops growing there). Returns
    /// the rows deleted.
    pub fn enforce_retention(&mut self, now_ms: i64, keep: &History) -> anyhow::Result<usize> {
        let cutoff = now_ms - i64::from(keep.retention_days) * 86_400_000;
        let mut deleted = self
            .conn
            .execute("DELETE FROM decisions WHERE time_ms < ?1", params![cutoff])?;
        deleted += self.delete_oldest_beyond(keep.max_rows)?;
        // Rows are about the same size: keep the share of them that fits, a little less each
        // round, until it does.
        for _ in 0..8 {
            let used = self.bytes_in_use()?;
            if used <= keep.max_bytes {
                break;
            }
            let rows = self.count()?;
            if rows == 0 {
                break;
            }
            let fits = (rows as f64 * keep.max_bytes as f64 / used as f64 * 0.95) as u64;
            deleted += self.delete_oldest_beyond(fits.min(rows - 1))?;
        }
        Ok(deleted)
    }

    /// Deletes the oldest rows so that at most `keep` remain.
    fn delete_oldest_beyond(&mut self, keep: u64) -> anyhow::Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM decisions WHERE id <= (SELECT id FROM decisions ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            params![keep as i64],
        )?)
    }

    /// Bytes of the database's pages in use (not on the free list).
    pub fn bytes_in_use(&self) -> anyhow::Result<u64> {
        let pragma = |name: &str| -> anyhow::Result<u64> {
            Ok(self
                .conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))?
                as u64)
        };
        Ok(pragma("page_count")?.saturating_sub(pragma("freelist_count")?) * pragma("page_size")?)
    }

    /// Rows matching `f`, most recent first.
    pub fn query(&self, f: &Filter) -> anyhow::Result<Vec<Row>> {
        let mut sql = String::from(
            "SELECT time_ms, device, policy, protocol, name, qtype, action, reason, category FROM decisions WHERE 1",
        );
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        // Each value is bound once and referred to by its number.
        let mut bind = |v: rusqlite::types::Value| {
            args.push(v);
            args.len()
        };
        if !f.devices.is_empty() {
            let list: Vec<String> = f
                .devices
                .iter()
                .map(|d| format!("?{}", bind(d.clone().into())))
                .collect();
            sql.push_str(&format!(" AND device IN ({})", list.join(", ")));
        }
        if let Some(a) = &f.action {
            sql.push_str(&format!(" AND action = ?{}", bind(a.clone().into())));
        }
        if let Some(p) = &f.protocol {
            sql.push_str(&format!(" AND protocol = ?{}", bind(p.clone().into())));
        }
        if let Some(n) = &f.name_suffix {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            let exact = bind(n.clone().into());
            let under = bind(format!(".{n}").into());
            sql.push_str(&format!(
                " AND (name = ?{exact} OR substr(name, -length(?{under})) = ?{under})"
            ));
        }
        if let Some(t) = f.since_ms {
            sql.push_str(&format!(" AND time_ms >= ?{}", bind(t.into())));
        }
        if let Some(t) = f.until_ms {
            sql.push_str(&format!(" AND time_ms < ?{}", bind(t.into())));
        }
        sql.push_str(" ORDER BY time_ms DESC, id DESC");
        if let Some(l) = f.limit {
            sql.push_str(&format!(" LIMIT {l}"));
        }
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(args), |r| {
            Ok(Row {
                time_ms: r.get(0)?,
                device: r.get(1)?,
                policy: r.get(2)?,
                protocol: r.get(3)?,
                name: r.get(4)?,
                qtype: r.get(5)?,
                action: r.get(6)?,
                reason: r.get(7)?,
                category: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes every row of the devices `keys` (a name and its pseudonym); returns how many.
    /// The deleted rows are overwritten in the file and the WAL is checkpointed and truncated,
    /// so nothing of them stays on disk.
    pub fn forget(&mut self, keys: &[String]) -> anyhow::Result<usize> {
        let mut n = 0;
        for k in keys {
            n += self
                .conn
                .execute("DELETE FROM decisions WHERE device = ?1", params![k])?;
        }
        self.checkpoint()?;
        Ok(n)
    }

    /// Moves the WAL into the database and truncates it.
    pub fn checkpoint(&self) -> anyhow::Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Rows stored.
    pub fn count(&self) -> anyhow::Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM decisions", [], |r| r.get::<_, i64>(0))?
            as u64)
    }
}

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

    /// The row for `ev`, device names pseudonymised with `pseudonym`.
    fn row_as(&self, ev: &DecisionEvent, time_ms: i64, pseudonym: Option<&Pseudonym>) -> Row {
        let device = match self.slots.get(&ev.slot) {
            Some(name) => match pseudonym {
                Some(p) => p.of(name),
                None => name.clone(),
            },
            None if ev.slot == UNKNOWN_SLOT => UNKNOWN_DEVICE.to_string(),
            None => format!("slot-{}", ev.slot),
        };
        Row {
            time_ms,
            device,
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
    let now_boot = crate::sys::boot_ns();
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
    /// events are then only logged at debug level and dropped).
    pub fn start(
        mut ring: aya::maps::RingBuf<aya::maps::MapData>,
        store: Option<Store>,
        names: Arc<RwLock<Naming>>,
        keep: Arc<RwLock<History>>,
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
                            Ok(()) => {
                                stats2
                                    .rows_written
                                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
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
                        match s.enforce_retention(now, &keep_now) {
                            Ok(n) => {
                                stats2.rows_deleted.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(e) => tracing::error!(error = %format!("{e:#}"), "history: retention failed"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gw-history-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn row(t: i64, device: &str, name: &str, action: &str) -> Row {
        Row {
            time_ms: t,
            device: device.into(),
            policy: "students".into(),
            protocol: "dns".into(),
            name: name.into(),
            qtype: 1,
            action: action.into(),
            reason: "category".into(),
            category: Some("ads".into()),
        }
    }

    #[test]
    fn stores_queries_and_forgets() {
        let d = dir("query");
        let mut s = Store::open(&d).expect("open");
        s.insert(&[
            row(1_000, "tablet", "ads.example.com", "block"),
            row(2_000, "tablet", "example.com", "allow"),
            row(3_000, "laptop", "notexample.com", "allow"),
            row(4_000, "laptop", "www.example.com", "block"),
        ])
        .expect("insert");
        assert_eq!(s.count().expect("count"), 4);
        fn q(s: &Store, f: Filter) -> Vec<String> {
            s.query(&f)
                .expect("query")
                .into_iter()
                .map(|r| format!("{}:{}", r.device, r.name))
                .collect()
        }
        // Most recent first; the suffix matches the name and names under it, not look-alikes.
        assert_eq!(
            q(
                &s,
                Filter {
                    name_suffix: Some("Example.com.".into()),
                    ..Filter::default()
                }
            ),
            [
                "laptop:www.example.com",
                "tablet:example.com",
                "tablet:ads.example.com"
            ]
        );
        assert_eq!(
            q(
                &s,
                Filter {
                    devices: vec!["tablet".into()],
                    action: Some("block".into()),
                    ..Filter::default()
                }
            ),
            ["tablet:ads.example.com"]
        );
        assert_eq!(
            q(
                &s,
                Filter {
                    since_ms: Some(2_000),
                    until_ms: Some(4_000),
                    ..Filter::default()
                }
            ),
            ["laptop:notexample.com", "tablet:example.com"]
        );
        assert_eq!(
            q(
                &s,
                Filter {
                    limit: Some(1),
                    ..Filter::default()
                }
            ),
            ["laptop:www.example.com"]
        );
        assert_eq!(s.forget(&["tablet".into()]).expect("forget"), 2);
        assert!(
            q(
                &s,
                Filter {
                    devices: vec!["tablet".into()],
                    ..Filter::default()
                }
            )
            .is_empty()
        );
        // Forgotten rows are gone from the file too (secure_delete, WAL truncated).
        drop(s);
        let bytes = std::fs::read(d.join(DATABASE)).expect("read");
        assert!(!bytes.windows(15).any(|w| w == b"ads.example.com"));
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn retention_by_age_and_by_count() {
        let d = dir("retention");
        let mut s = Store::open(&d).expect("open");
        let day = 86_400_000;
        let now = 100 * day;
        let rows: Vec<Row> = (0..20)
            .map(|i| row(now - (20 - i) * day / 2, "tablet", "a.example", "allow"))
            .collect();
        s.insert(&rows).expect("insert");
        let keep = |days, rows, bytes| History {
            enabled: true,
            retention_days: days,
            max_rows: rows,
            max_bytes: bytes,
            pseudonymize: false,
        };
        // 7 days keep the rows of the last 7 days: 14 of them (one every half day).
        assert_eq!(
            s.enforce_retention(now, &keep(7, 1_000, 1 << 30))
                .expect("retention"),
            6
        );
        assert_eq!(s.count().expect("count"), 14);
        // At most 5 rows: the 5 newest stay.
        assert_eq!(
            s.enforce_retention(now, &keep(7, 5, 1 << 30))
                .expect("retention"),
            9
        );
        let left = s.query(&Filter::default()).expect("query");
        assert_eq!(left.len(), 5);
        assert!(left.iter().all(|r| r.time_ms >= now - 5 * day / 2));

        // By size: 30,000 rows (a few MB), then at most 1 MiB in use.
        let rows: Vec<Row> = (0..30_000)
            .map(|i| {
                row(
                    now - 30_000 + i,
                    "tablet",
                    &format!("www.n{i}.example.com"),
                    "allow",
                )
            })
            .collect();
        s.insert(&rows).expect("insert");
        assert!(s.bytes_in_use().expect("bytes") > 2 << 20);
        let deleted = s
            .enforce_retention(now, &keep(7, 1_000_000, 1 << 20))
            .expect("retention");
        assert!(s.bytes_in_use().expect("bytes") <= 1 << 20);
        let left = s.count().expect("count");
        assert!(
            left > 1_000 && deleted > 10_000,
            "{left} left, {deleted} deleted"
        );
        // The newest rows are the ones kept.
        let newest = s
            .query(&Filter {
                limit: Some(1),
                ..Filter::default()
            })
            .expect("query");
        assert_eq!(newest[0].name, "www.n29999.example.com");
        // Inserting more does not grow the file past what it reached: freed pages are reused.
        let size = std::fs::metadata(d.join(DATABASE)).expect("meta").len();
        s.insert(&rows[..5_000]).expect("insert");
        s.enforce_retention(now, &keep(7, 1_000_000, 1 << 20))
            .expect("retention");
        s.checkpoint().expect("checkpoint");
        assert!(std::fs::metadata(d.join(DATABASE)).expect("meta").len() <= size + (1 << 20));
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn times_are_timestamps_or_ages() {
        let now: jiff::Timestamp = "2026-11-26T12:00:00Z".parse().expect("time");
        let ms = now.as_millisecond();
        assert_eq!(parse_time("2026-11-26T11:00:00Z", now), Ok(ms - 3_600_000));
        assert_eq!(
            parse_time("2026-11-26T12:00:00+01:00", now),
            Ok(ms - 3_600_000)
        );
        assert_eq!(parse_time("15m", now), Ok(ms - 900_000));
        assert_eq!(parse_time("7d", now), Ok(ms - 7 * 86_400_000));
        for bad in ["", "yesterday", "5y", "-3h", "2026-13-01T00:00:00Z"] {
            let e = parse_time(bad, now).expect_err(bad);
            assert!(e.0.contains("is not a time"), "{e}");
        }
    }

    #[test]
    fn pseudonyms_are_keyed_stable_and_the_key_private() {
        let d = dir("key");
        let p = Pseudonym::load_or_create(&d).expect("key");
        let again = Pseudonym::load_or_create(&d).expect("key");
        assert_eq!(p.of("tablet"), again.of("tablet"));
        assert_ne!(p.of("tablet"), p.of("laptop"));
        assert!(p.of("tablet").starts_with("p-") && p.of("tablet").len() == 18);
        let key = d.join(KEY_FILE);
        let mode = std::fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Another key, another pseudonym.
        let other = dir("key2");
        assert_ne!(
            Pseudonym::load_or_create(&other).expect("key").of("tablet"),
            p.of("tablet")
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = Pseudonym::load(&key).expect_err("readable by others");
        assert!(format!("{e}").contains("expected 0600"), "{e}");
        std::fs::remove_dir_all(&d).expect("cleanup");
        std::fs::remove_dir_all(&other).expect("cleanup");
    }

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
