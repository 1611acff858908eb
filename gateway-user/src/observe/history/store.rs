//! The history database: schema, inserts in transactions, queries, retention and deletion.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use rusqlite::{Connection, params};

use super::{DATABASE, Filter, Row, RowRef};
use crate::{BadInput, config::History};

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

// AUTOINCREMENT: a row's id is never reused, even after the newest rows are deleted
// (`forget`), so that the syslog shipper's cursor (the last id shipped) never skips a row.
const DECISIONS: &str = "decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms INTEGER NOT NULL,
    device TEXT NOT NULL,
    policy TEXT NOT NULL,
    protocol TEXT NOT NULL,
    name TEXT NOT NULL,
    qtype INTEGER NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    category TEXT
)";
const SCHEMA: &str = "
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (time_ms);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// A history made before ids were AUTOINCREMENT is copied into a table that has it, once
/// (between `DECISIONS` created and the copy).
const MIGRATE_FROM: &str = "
ALTER TABLE decisions RENAME TO decisions_old;
DROP INDEX IF EXISTS decisions_time;
";
const MIGRATE_TO: &str = "
INSERT INTO decisions SELECT * FROM decisions_old;
DROP TABLE decisions_old;
";

/// The columns of a row, in `Row`'s order.
const COLUMNS: &str = "time_ms, device, policy, protocol, name, qtype, action, reason, category";
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
        let old: Option<String> = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'decisions'",
                [],
                |r| r.get(0),
            )
            .ok();
        if old.is_some_and(|sql| !sql.contains("AUTOINCREMENT")) {
            conn.execute_batch(&format!(
                "BEGIN; {MIGRATE_FROM} CREATE TABLE {DECISIONS}; {MIGRATE_TO} COMMIT;"
            ))
            .with_context(|| format!("migrating the decisions of {}", path.display()))?;
        }
        conn.execute_batch(&format!("CREATE TABLE IF NOT EXISTS {DECISIONS};{SCHEMA}"))
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

    /// Stores `rows` in one transaction; returns the id of the first (the others follow it
    /// one by one: ids are AUTOINCREMENT and this connection the only writer).
    pub fn insert(&mut self, rows: &[Row]) -> anyhow::Result<i64> {
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
        let last = tx.last_insert_rowid();
        tx.commit()?;
        Ok(last - rows.len() as i64 + 1)
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
        let mut sql = format!("SELECT {COLUMNS} FROM decisions WHERE 1");
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
        let rows = st.query_map(rusqlite::params_from_iter(args), |r| row_at(r, 0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Calls `each` with the id and fields of up to `limit` rows after row `after`, in id
    /// order (only those not allowed if `only_blocked`), borrowing the fields from SQLite:
    /// what the syslog shipper sends next, read without a copy. Returns how many.
    pub fn each_after(
        &self,
        after: i64,
        only_blocked: bool,
        limit: u32,
        mut each: impl FnMut(i64, &RowRef<'_>),
    ) -> anyhow::Result<usize> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT id, {COLUMNS} FROM decisions WHERE id > ?1 AND (?2 = 0 OR action <> 'allow') ORDER BY id LIMIT ?3"
        ))?;
        let mut rows = st.query(params![after, only_blocked, limit])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let text =
                |i: usize| -> rusqlite::Result<&str> { r.get_ref(i)?.as_str().map_err(Into::into) };
            let row = RowRef {
                time_ms: r.get(1)?,
                device: text(2)?,
                policy: text(3)?,
                protocol: text(4)?,
                name: text(5)?,
                qtype: r.get(6)?,
                action: text(7)?,
                reason: text(8)?,
                category: r.get_ref(9)?.as_str_or_null()?,
            };
            each(r.get(0)?, &row);
            n += 1;
        }
        Ok(n)
    }

    /// How many rows come after row `after` (only those not allowed if `only_blocked`).
    pub fn count_after(&self, after: i64, only_blocked: bool) -> anyhow::Result<u64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM decisions WHERE id > ?1 AND (?2 = 0 OR action <> 'allow')",
            params![after, only_blocked],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// This database's identity: random, made with it, so that `(instance, id)` names a row
    /// uniquely even if the database is deleted and ids start again.
    pub fn instance(&self) -> anyhow::Result<String> {
        let fresh: String = crate::secret::random_bytes(8)?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', ?1)",
            params![fresh],
        )?;
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
                r.get(0)
            })?)
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

/// The `Row` in the columns of `r` from `at` on (in `COLUMNS`' order).
fn row_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Row> {
    Ok(Row {
        time_ms: r.get(at)?,
        device: r.get(at + 1)?,
        policy: r.get(at + 2)?,
        protocol: r.get(at + 3)?,
        name: r.get(at + 4)?,
        qtype: r.get(at + 5)?,
        action: r.get(at + 6)?,
        reason: r.get(at + 7)?,
        category: r.get(at + 8)?,
    })
}
