//! Lists by URL, kept fresh: a thread downloads each list when it is due (`pull`), and swaps a
//! download in as the cached copy only if it is text that parses to enough rules and has not
//! shrunk past the list's guard. The copy is renamed into place, so the daemon's file watcher
//! reloads it like an edited list file (validate, diff, flip); a 304 or an unchanged body only
//! updates the record beside the copy, and nothing is recompiled. A failure is logged (once
//! per distinct error) and counted there, and the copy in use stays.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::mpsc,
    time::{Duration, Instant},
};

use super::pull::{self, Pulled};
use crate::config::{
    Domains, parse_list,
    remote::{MAX_LIST_BYTES, Meta, RemoteList, meta_path, write_whole},
};

/// The downloading thread's handle: `follow` gives it the lists of the configuration in force.
pub(super) struct Refresher {
    tx: mpsc::Sender<Vec<RemoteList>>,
    lists: Vec<RemoteList>,
}

impl Refresher {
    /// Starts the thread for `lists` (it fetches at once a list that has no copy yet).
    pub(super) fn start(lists: &[RemoteList]) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let first = lists.to_vec();
        std::thread::Builder::new()
            .name("lists".into())
            .spawn(move || run(first, &rx))?;
        Ok(Self {
            tx,
            lists: lists.to_vec(),
        })
    }

    /// Hands the thread `lists` if they differ from what it has.
    pub(super) fn follow(&mut self, lists: &[RemoteList]) {
        if self.lists != lists {
            self.lists = lists.to_vec();
            let _ = self.tx.send(self.lists.clone());
        }
    }
}

/// The thread: waits for the next list due (or new lists), refreshes it, schedules it again.
fn run(mut lists: Vec<RemoteList>, rx: &mpsc::Receiver<Vec<RemoteList>>) {
    let agent = pull::agent();
    let mut due: HashMap<PathBuf, Instant> = HashMap::new();
    loop {
        let now = Instant::now();
        due.retain(|cache, _| lists.iter().any(|l| &l.cache == cache));
        for l in &lists {
            due.entry(l.cache.clone())
                .or_insert_with(|| now + first_delay(l));
        }
        let next = lists
            .iter()
            .enumerate()
            .filter_map(|(i, l)| due.get(&l.cache).map(|at| (*at, i)))
            .min_by_key(|(at, _)| *at);
        let wait = next.map_or(Duration::from_secs(3600), |(at, _)| {
            at.saturating_duration_since(now)
        });
        match rx.recv_timeout(wait) {
            Ok(new) => {
                lists = new;
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(list) = next.and_then(|(_, i)| lists.get(i)) {
            let delay = refresh(&agent, list, jiff::Timestamp::now().as_second());
            due.insert(list.cache.clone(), Instant::now() + delay);
        }
    }
}

/// When a list is first due after a start: at once if there is no copy (or no record of its
/// download); else when its refresh would have come, counted from the last check.
fn first_delay(list: &RemoteList) -> Duration {
    let meta = list.meta();
    match meta.checked_at {
        Some(checked) if list.cache.exists() => {
            let since = jiff::Timestamp::now()
                .as_second()
                .saturating_sub(checked)
                .max(0);
            pull::after_success(list.refresh)
                .saturating_sub(Duration::from_secs(since.unsigned_abs()))
        }
        _ => Duration::ZERO,
    }
}

/// How one attempt ended.
enum Outcome {
    /// A new copy is in place (the watcher reloads it).
    Changed { rules: usize },
    /// 304, or the same body again.
    Unchanged,
    /// The server could not be asked, or answered with an error.
    Failed(String),
    /// A body came that the guards refused.
    Refused(String),
}

/// Refreshes `list` once, at Unix second `now`; returns the delay before the next attempt.
fn refresh(agent: &ureq::Agent, list: &RemoteList, now: i64) -> Duration {
    let meta_file = meta_path(&list.cache);
    let mut meta = Meta::read(&meta_file).unwrap_or_default();
    let in_use = std::fs::read(&list.cache).ok();
    // Validators only for the copy in use (none: the next answer must be a whole list).
    let (etag, modified) = if in_use.is_some() {
        (meta.etag.clone(), meta.last_modified.clone())
    } else {
        (None, None)
    };
    let outcome = match pull::get(
        agent,
        &list.url,
        etag.as_deref(),
        modified.as_deref(),
        MAX_LIST_BYTES,
    ) {
        Err(why) => Outcome::Failed(why.to_string()),
        Ok(Pulled::NotModified) => Outcome::Unchanged,
        Ok(Pulled::Body {
            bytes,
            etag,
            last_modified,
        }) => {
            let outcome = take(list, &meta, in_use.as_deref(), &bytes);
            if matches!(outcome, Outcome::Changed { .. } | Outcome::Unchanged) {
                // The body is the copy in use now: its validators are the ones to send.
                meta.etag = etag;
                meta.last_modified = last_modified;
            }
            outcome
        }
    };
    let shown = list.shown();
    meta.url = shown.clone();
    meta.checked_at = Some(now);
    let result = match &outcome {
        Outcome::Changed { .. } => "changed",
        Outcome::Unchanged => "unchanged",
        Outcome::Failed(_) => "failed",
        Outcome::Refused(_) => "refused",
    };
    *meta.results.entry(result.to_string()).or_default() += 1;
    let delay = match outcome {
        Outcome::Changed { rules } => {
            tracing::info!(list = %shown, rules, "list downloaded; it is applied by a reload");
            meta.rules = rules;
            meta.fetched_at = Some(now);
            succeeded(&mut meta, now, list)
        }
        Outcome::Unchanged => {
            tracing::debug!(list = %shown, "list unchanged");
            succeeded(&mut meta, now, list)
        }
        Outcome::Failed(why) | Outcome::Refused(why) => {
            let why = format!("{result}: {why}");
            if meta.last_error.as_deref() == Some(why.as_str()) {
                tracing::debug!(list = %shown, error = %why, "list still not refreshed");
            } else {
                tracing::warn!(list = %shown, error = %why, failures = meta.failures + 1, "list not refreshed; the copy in use stays");
            }
            meta.last_error = Some(why);
            meta.failures += 1;
            pull::after_failure(meta.failures, list.refresh)
        }
    };
    if let Err(e) = meta.write(&meta_file) {
        tracing::error!(list = %shown, file = %meta_file.display(), error = %e, "cannot record the list's download");
    }
    delay
}

fn succeeded(meta: &mut Meta, now: i64, list: &RemoteList) -> Duration {
    meta.last_success = Some(now);
    meta.failures = 0;
    meta.last_error = None;
    pull::after_success(list.refresh)
}

/// Whether `body` replaces the copy in use (`in_use`), and writes it if so.
fn take(list: &RemoteList, meta: &Meta, in_use: Option<&[u8]>, body: &[u8]) -> Outcome {
    if in_use == Some(body) {
        return Outcome::Unchanged;
    }
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => {
            return Outcome::Refused(format!(
                "not UTF-8 text (byte {} of {})",
                e.valid_up_to(),
                body.len()
            ));
        }
    };
    let stats = parse_list(text, &list.shown(), list.format, &mut Domains::default());
    // The copy in use, counted the way the record says, or again if there is no record.
    let rules_in_use = in_use.map(|old| {
        if meta.fetched_at.is_some() {
            meta.rules
        } else {
            let old = String::from_utf8_lossy(old);
            let s = parse_list(&old, "", list.format, &mut Domains::default());
            s.block + s.allow
        }
    });
    if let Err(why) = list.admits(&stats, rules_in_use) {
        return Outcome::Refused(why);
    }
    match write_whole(&list.cache, body) {
        Ok(()) => Outcome::Changed {
            rules: stats.block + stats.allow,
        },
        Err(e) => Outcome::Failed(format!("writing {}: {e}", list.cache.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_is_taken_only_if_it_passes_the_guards() {
        let dir = std::env::temp_dir().join(format!("gw-take-{}", std::process::id()));
        let list = RemoteList {
            url: "https://lists.example/a.txt".into(),
            format: None,
            refresh: Duration::from_secs(60),
            max_shrink: 50,
            min_rules: 1,
            cache: dir.join("a.list"),
        };
        let names = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|i| format!("n{i}.example\n"))
                .collect::<String>()
                .into_bytes()
        };
        let meta = Meta::default();
        assert!(matches!(
            take(&list, &meta, None, b"<html>502 Bad Gateway</html>\n"),
            Outcome::Refused(why) if why.contains("min_rules")
        ));
        assert!(matches!(
            take(&list, &meta, None, b"a.example\n\xff\n"),
            Outcome::Refused(why) if why.contains("not UTF-8 text (byte 10 of 12)")
        ));
        assert!(!list.cache.exists(), "nothing refused is written");
        assert!(matches!(
            take(&list, &meta, None, &names(10)),
            Outcome::Changed { rules: 10 }
        ));
        assert_eq!(std::fs::read(&list.cache).expect("copy"), names(10));
        let in_use = names(10);
        assert!(matches!(
            take(&list, &meta, Some(&in_use), &names(10)),
            Outcome::Unchanged
        ));
        // No record: the copy in use is counted again (10 rules); 4 is too few.
        assert!(matches!(
            take(&list, &meta, Some(&in_use), &names(4)),
            Outcome::Refused(why) if why.contains("gives 4 rules where the copy in use gives 10")
        ));
        assert_eq!(std::fs::read(&list.cache).expect("copy"), names(10), "kept");
        assert!(matches!(
            take(&list, &meta, Some(&in_use), &names(5)),
            Outcome::Changed { rules: 5 }
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
