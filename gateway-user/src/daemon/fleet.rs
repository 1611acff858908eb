//! Fleet bundles pulled from any HTTP origin (SPEC §14, docs/fleet.md), as Open Policy
//! Agent's bundle plugin does: a thread polls `[fleet] bundle_url` after a delay drawn between
//! `poll.min` and `poll.max` (backing off, capped, while attempts fail), conditional on the
//! ETag of the bundle in force. A new archive's signature is checked first (`config::bundle`),
//! then its revision, then it is unpacked into a directory of its own and its configuration
//! validated; only then is it handed to the daemon's loop, which applies it through the normal
//! reload (diff, flip). Activated, it becomes the last good bundle: its archive and signature
//! are kept, and at each start verified again and enforced before any network is asked.
//! Anything wrong leaves the policy in force; it is logged once per distinct error and counted
//! in the record (`bundle::Record`).

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use super::pull::{self, PullError, Pulled};
use crate::config::{
    Config,
    bundle::{self, Failure, Record, Refused},
    fleet::Fleet,
    remote::write_whole,
};

/// A bundle verified, unpacked and valid, waiting for the daemon's loop to apply it.
pub(super) struct Candidate {
    pub(super) revision: u64,
    pub(super) dir: PathBuf,
    /// The loop's answer: `Err` with why it could not be applied.
    pub(super) reply: mpsc::Sender<Result<(), String>>,
}

/// The polling thread's handle.
pub(super) struct Poller {
    candidates: mpsc::Receiver<Candidate>,
    fleet: mpsc::Sender<Fleet>,
    current: Fleet,
}

/// What the poller needs besides `[fleet]`: the gateway's own file (to compose with) and where
/// the bundles are kept.
#[derive(Clone)]
struct Site {
    main: PathBuf,
    state_dir: PathBuf,
}

impl Poller {
    /// Starts polling for the gateway whose own file is `main` and whose state is in
    /// `state_dir`.
    pub(super) fn start(fleet: &Fleet, main: &Path, state_dir: &Path) -> std::io::Result<Self> {
        let (candidates_tx, candidates) = mpsc::channel();
        let (fleet_tx, fleet_rx) = mpsc::channel();
        let site = Site {
            main: main.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
        };
        let first = fleet.clone();
        std::thread::Builder::new()
            .name("fleet".into())
            .spawn(move || run(first, &site, &fleet_rx, &candidates_tx))?;
        Ok(Self {
            candidates,
            fleet: fleet_tx,
            current: fleet.clone(),
        })
    }

    /// Hands the thread `[fleet]` as now configured, if it changed; returns a bundle waiting
    /// to be applied, if one is.
    pub(super) fn follow(&mut self, fleet: &Fleet) -> Option<Candidate> {
        if &self.current != fleet {
            self.current = fleet.clone();
            let _ = self.fleet.send(fleet.clone());
        }
        self.candidates.try_recv().ok()
    }
}

/// The bundle in force at a start: the last good one, verified again and unpacked afresh, if
/// the gateway's own file `main` has `[fleet]`; `None` (the file alone is in force) if there is
/// none or it no longer verifies (logged and counted).
pub(super) fn at_start(main: &Config) -> Option<PathBuf> {
    let fleet = main.fleet.as_ref()?;
    let state = &main.state_dir;
    let mut record = Record::read(state);
    let revision = record.revision?;
    let now = jiff::Timestamp::now().as_second();
    let restore = || -> Result<PathBuf, Refused> {
        let archive = std::fs::read(bundle::active_archive(state)).map_err(|e| {
            Refused::new(
                Failure::Archive,
                format!("the last good bundle is gone: {e}"),
            )
        })?;
        let signature = std::fs::read_to_string(bundle::active_signature(state))
            .map_err(|e| Refused::new(Failure::Signature, format!("its signature is gone: {e}")))?;
        let trusted = bundle::verify(&archive, &signature, &fleet.public_keys)?;
        if trusted.revision != revision {
            return Err(Refused::new(
                Failure::Signature,
                format!("the kept bundle is signed as revision {}", trusted.revision),
            ));
        }
        let digest = blake3::hash(&archive).to_hex().to_string();
        unpack_checked(&archive, &trusted, &digest, fleet, state).map(|(dir, _)| dir)
    };
    match restore() {
        Ok(dir) => {
            tracing::info!(revision, "enforcing the last good fleet bundle");
            Some(dir)
        }
        Err(e) => {
            tracing::error!(revision, error = %e, "the last good fleet bundle cannot be used; the gateway's own file is in force");
            record.failed(e.reason, &format!("at start: {e}"), now);
            // Nothing is in force: the next poll asks for the bundle whole, and may take the
            // same revision again (its revision stays the floor against rollback).
            record.etag = None;
            record.digest = None;
            let _ = record.write(state);
            None
        }
    }
}

/// The thread: polls, and hands each new valid bundle to the loop.
fn run(
    mut fleet: Fleet,
    site: &Site,
    updates: &mpsc::Receiver<Fleet>,
    candidates: &mpsc::Sender<Candidate>,
) {
    let mut agent = pull::agent_trusting(fleet.ca_file.as_deref());
    let mut failures = 0u64;
    let mut logged: Option<String> = None;
    // The first poll at once: a gateway started with an old bundle catches up.
    let mut wait = Duration::ZERO;
    loop {
        match updates.recv_timeout(wait) {
            Ok(new) => {
                fleet = new;
                agent = pull::agent_trusting(fleet.ca_file.as_deref());
                wait = Duration::ZERO;
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = jiff::Timestamp::now().as_second();
        let mut record = Record::read(&site.state_dir);
        let polled = match &agent {
            Ok(agent) => poll(agent, &fleet, site, &mut record, candidates, now),
            Err(e) => Err(Refused::new(
                Failure::Network,
                format!("fleet.ca_file: {e}"),
            )),
        };
        match polled {
            Ok(outcome) => {
                failures = 0;
                record.succeeded(now);
                if logged.take().is_some() || outcome.is_some() {
                    tracing::info!(
                        revision = record.revision,
                        activated = outcome.is_some(),
                        "fleet bundle current"
                    );
                }
            }
            Err(e) => {
                failures += 1;
                record.failed(e.reason, &e.message, now);
                let text = e.to_string();
                if logged.as_deref() != Some(text.as_str()) {
                    tracing::error!(error = %text, "fleet bundle refused; the policy in force stays");
                    logged = Some(text);
                }
            }
        }
        if let Err(e) = record.write(&site.state_dir) {
            tracing::warn!(error = %e, "cannot write the fleet record");
        }
        wait = if failures == 0 {
            uniform(fleet.poll_min, fleet.poll_max)
        } else {
            pull::after_failure(failures, fleet.poll_max)
        };
    }
}

/// A delay drawn uniformly in [min, max].
fn uniform(min: Duration, max: Duration) -> Duration {
    min + (max.saturating_sub(min)).mul_f64(crate::observe::ship::retry::unit_random())
}

/// One poll; `Ok(Some(revision))` when a new bundle was activated, `Ok(None)` when the one in
/// force is current.
fn poll(
    agent: &ureq::Agent,
    fleet: &Fleet,
    site: &Site,
    record: &mut Record,
    candidates: &mpsc::Sender<Candidate>,
    now: i64,
) -> Result<Option<u64>, Refused> {
    let pulled = pull::get(
        agent,
        &fleet.bundle_url,
        record.etag.as_deref(),
        None,
        fleet.max_bytes,
    )
    .map_err(refused_pull)?;
    let (archive, etag) = match pulled {
        Pulled::NotModified => return Ok(None),
        Pulled::Body { bytes, etag, .. } => (bytes, etag),
    };
    let signature = match pull::get(
        agent,
        &fleet.signature_url,
        None,
        None,
        bundle::MAX_SIGNATURE_BYTES,
    )
    .map_err(|e| {
        let refused = refused_pull(e);
        // No signature where the bundle is is a signature problem (unsigned or half
        // published), not the origin's.
        let reason = match refused.reason {
            Failure::Http => Failure::Signature,
            other => other,
        };
        Refused::new(
            reason,
            format!("no signature at the signature URL ({})", refused.message),
        )
    })? {
        Pulled::Body { bytes, .. } => String::from_utf8_lossy(&bytes).into_owned(),
        Pulled::NotModified => {
            return Err(Refused::new(
                Failure::Http,
                "the signature: 304 to an unconditional request",
            ));
        }
    };
    // Nothing of the archive is read before its signature is checked.
    let trusted = bundle::verify(&archive, &signature, &fleet.public_keys)?;
    if trusted.name != fleet.bundle_name() {
        return Err(Refused::new(
            Failure::Signature,
            format!(
                "signed as bundle {:?}, not {:?}",
                trusted.name,
                fleet.bundle_name()
            ),
        ));
    }
    let digest = blake3::hash(&archive).to_hex().to_string();
    if let Some(in_force) = record.revision {
        if trusted.revision < in_force {
            return Err(Refused::new(
                Failure::Rollback,
                format!(
                    "revision {} is older than the one in force ({in_force})",
                    trusted.revision
                ),
            ));
        }
        if trusted.revision == in_force {
            match record.digest.as_deref() {
                // The same bundle under a new ETag (republished): nothing to apply.
                Some(d) if d == digest => {
                    record.etag = etag;
                    return Ok(None);
                }
                // The revision in force could not be restored at the start: take it again.
                None => {}
                Some(_) => {
                    return Err(Refused::new(
                        Failure::Rollback,
                        format!("revision {in_force} again, with other contents"),
                    ));
                }
            }
        }
    }
    let (dir, manifest) = unpack_checked(&archive, &trusted, &digest, fleet, &site.state_dir)?;
    if let Err(e) = bundle::compose(&site.main, &dir) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(Refused::new(Failure::Validation, format!("{e:#}")));
    }
    let (reply, answer) = mpsc::channel();
    let handed = candidates.send(Candidate {
        revision: trusted.revision,
        dir: dir.clone(),
        reply,
    });
    let applied = match handed {
        Ok(()) => answer
            .recv()
            .unwrap_or_else(|_| Err("the daemon is stopping".to_string())),
        Err(_) => Err("the daemon is stopping".to_string()),
    };
    if let Err(e) = applied {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(Refused::new(Failure::Apply, e));
    }
    // The last good bundle: kept whole for the next start.
    let keep = write_whole(&bundle::active_archive(&site.state_dir), &archive).and_then(|()| {
        write_whole(
            &bundle::active_signature(&site.state_dir),
            signature.as_bytes(),
        )
    });
    if let Err(e) = keep {
        tracing::error!(error = %e, "cannot keep the bundle in force for the next start");
    }
    let previous = record
        .revision
        .zip(record.digest.clone())
        .map(|(r, d)| bundle::unpacked_dir(&site.state_dir, r, &d));
    record.revision = Some(trusted.revision);
    record.etag = etag;
    record.digest = Some(digest);
    record.created = Some(manifest.created);
    record.labels = manifest.labels;
    record.fetched_at = Some(now);
    record.activated_at = Some(jiff::Timestamp::now().as_second());
    if let Some(old) = previous.filter(|p| p != &dir) {
        let _ = std::fs::remove_dir_all(old);
    }
    tracing::info!(revision = trusted.revision, "fleet bundle activated");
    Ok(Some(trusted.revision))
}

/// Unpacks the verified `archive` (of blake3 `digest`) afresh into its directory under
/// `state_dir` and checks its manifest against the signature and the gateway's labels; on
/// refusal nothing is left there.
fn unpack_checked(
    archive: &[u8],
    trusted: &bundle::Trusted,
    digest: &str,
    fleet: &Fleet,
    state_dir: &Path,
) -> Result<(PathBuf, bundle::Manifest), Refused> {
    let dir = bundle::unpacked_dir(state_dir, trusted.revision, digest);
    let _ = std::fs::remove_dir_all(&dir);
    // Unpacked, a bundle may be at most 8 times its archive's limit.
    let manifest = bundle::unpack(archive, &dir, fleet.max_bytes.saturating_mul(8))?;
    if let Err(e) = bundle::check_manifest(&manifest, trusted, &fleet.labels) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    Ok((dir, manifest))
}

/// A failed pull as a refusal: an HTTP status, a body over the limit, or no answer.
fn refused_pull(e: PullError) -> Refused {
    let reason = match e {
        PullError::Status(_) => Failure::Http,
        PullError::TooLarge(_) => Failure::Size,
        PullError::Transport(_) => Failure::Network,
    };
    Refused::new(reason, e.to_string())
}
