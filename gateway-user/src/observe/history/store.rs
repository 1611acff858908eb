//! The history database: schema, inserts in transactions, queries, retention and deletion.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use rusqlite::{Connection, params};

use super::{DATABASE, Filter, Row};
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
