//! The daemon's state between events: the configuration in force with the lifecycle laid over
//! it, what it publishes to the recorder and the HTTP handlers, and the handlers of the run
//! loop's events (schedule and due-date switches, API requests).

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
};

use anyhow::Context as _;

use super::reload::Stamp;

use crate::{
    config::{self, Config},
    control::{CheckoutView, ControlError, EventView, Reply, Request, http, lifecycle, views},
    kernel::attach::Running,
    observe::{
        history::{self, Names, Naming, Pseudonym, Store},
        metrics, ship,
        status::ReloadStatus,
    },
};

/// The configuration in force and what the daemon watches of it.
pub(super) struct State {
    /// The configuration file as read.
    pub(super) config: Config,
    /// The file with the lifecycle (suspensions, moves, checkouts) laid over it: what is
    /// applied.
    pub(super) applied_config: Config,
    /// Each device's lifecycle status, as last applied.
    pub(super) statuses: std::collections::BTreeMap<String, lifecycle::Status>,
    /// Per device of `applied_config`: the policy in force and whether it is suspended, as
    /// last applied (a change, by a schedule window or a due date, applies a new generation).
    pub(super) applied: Vec<(usize, bool)>,
    pub(super) lifecycle: Option<lifecycle::Store>,
    /// Stamps of `config.files` when it was read (or last rejected).
    pub(super) stamps: Vec<Stamp>,
    /// Stamps the watcher saw differ from `stamps`, and when: it reloads once they have stayed
    /// the same for `SETTLE`.
    pub(super) settling: Option<(Vec<Stamp>, tokio::time::Instant)>,
    pub(super) status: ReloadStatus,
    pub(super) status_path: PathBuf,
    /// What the history recorder names events with; `publish` adds the configuration in
    /// force.
    pub(super) names: Arc<RwLock<Naming>>,
    /// `[history]` of the configuration in force (what the recorder keeps, and how long).
    pub(super) keep: Arc<RwLock<config::History>>,
    pub(super) shared: Option<Arc<http::Shared>>,
    pub(super) pseudonym: Option<Pseudonym>,
    pub(super) recorder_stats: Option<Arc<history::RecorderStats>>,
    /// The fleet bundle in force, unpacked (`None`: the gateway's own file alone).
    pub(super) bundle: Option<PathBuf>,
    /// What the shipping pipelines have done (they restart when their settings change; the
    /// counts stay).
    pub(super) ship: Arc<ship::ShipStats>,
}

/// What decides the kernel state of each device at `now`: its policy in force and suspension.
pub(super) fn signature(config: &Config, now: jiff::Timestamp) -> Vec<(usize, bool)> {
    config
        .effective_policies(now)
        .into_iter()
        .zip(config.devices.iter().map(|d| d.suspended))
        .collect()
}

/// `file` with the lifecycle in `store` laid over it at `now`.
pub(super) fn lay_over(
    file: &Config,
    store: Option<&lifecycle::Store>,
    now: jiff::Timestamp,
) -> anyhow::Result<(
    Config,
    std::collections::BTreeMap<String, lifecycle::Status>,
)> {
    let snap = match store {
        Some(s) => s.snapshot()?,
        None => lifecycle::Snapshot::default(),
    };
    Ok(lifecycle::effective(file, &snap, now.as_millisecond()))
}

impl State {
    /// Hands the current configuration, slots and status to the recorder and the HTTP
    /// handlers.
    pub(super) fn publish(&self, running: &Running) {
        let config = &self.applied_config;
        let names = Names::of(config, &running.applied.slots, self.pseudonym.as_ref());
        self.names
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set(running.applied.active_from_boot_ns, names);
        *self.keep.write().unwrap_or_else(|e| e.into_inner()) = config.history.clone();
        if let Some(shared) = &self.shared {
            let info = metrics::Info {
                config: Arc::new(config.clone()),
                status: self.status.clone(),
                domains: running.applier.domains(),
                recorder: self.recorder_stats.clone(),
                pseudonym: self.pseudonym.clone(),
                ship: Some(self.ship.clone()),
            };
            *shared.info.write().unwrap_or_else(|e| e.into_inner()) = info;
        }
    }

    /// Applies the file configuration `file` with the lifecycle laid over it, at `now`; on
    /// success it becomes the state (the caller publishes it, with the status it updates).
    pub(super) fn apply(
        &mut self,
        running: &mut Running,
        file: Config,
        now: jiff::Timestamp,
    ) -> anyhow::Result<()> {
        let (effective, statuses) = lay_over(&file, self.lifecycle.as_ref(), now)?;
        let a = running
            .applier
            .apply_at(&mut running.maps, &effective, now)
            .context("writing the maps")?;
        tracing::debug!(generation = a.generation, changes = a.changes, "applied");
        running.applied = a;
        self.status.in_force(&effective);
        self.applied = signature(&effective, now);
        self.applied_config = effective;
        self.statuses = statuses;
        self.config = file;
        Ok(())
    }
}

/// The pseudonymisation key, the history store and the lifecycle store of `config`; each is
/// `None` (and the reason logged) if it cannot be had: the filter runs without them.
pub(super) fn open_state(
    config: &Config,
) -> (Option<Pseudonym>, Option<Store>, Option<lifecycle::Store>) {
    let dir = &config.state_dir;
    let pseudonym = match Pseudonym::load_or_create(dir) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(state_dir = %dir.display(), error = %format!("{e:#}"), "no pseudonymisation key: device labels in /metrics are left out, and with pseudonymize = true no history is stored");
            None
        }
    };
    // Pseudonymised history without a key would store names: none at all then.
    let store = if !config.history.enabled || (config.history.pseudonymize && pseudonym.is_none()) {
        None
    } else {
        match Store::open(dir) {
            Ok(s) => {
                tracing::info!(database = %s.path().display(), "decision history");
                Some(s)
            }
            Err(e) => {
                tracing::error!(state_dir = %dir.display(), error = %format!("{e:#}"), "no decision history (the filter runs on)");
                None
            }
        }
    };
    let lifecycle = match lifecycle::Store::open(dir) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(state_dir = %dir.display(), error = %format!("{e:#}"), "no lifecycle state: suspensions and checkouts through the API are unavailable");
            None
        }
    };
    (pseudonym, store, lifecycle)
}

/// Applies a new generation when a schedule window opens or closes or a checkout falls due.
pub(super) fn follow(running: &mut Running, state: &mut State, now: jiff::Timestamp) {
    if let Some(l) = &state.lifecycle {
        match l.mark_overdue(now.as_millisecond()) {
            Ok(devices) => {
                for d in devices {
                    tracing::warn!(device = %d, "checkout overdue");
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "lifecycle: cannot record overdue checkouts")
            }
        }
    }
    // Compared without building the configuration: this runs every second.
    let snap = match state
        .lifecycle
        .as_ref()
        .map(lifecycle::Store::snapshot)
        .transpose()
    {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "lifecycle: cannot read the state");
            return;
        }
    };
    let (own, suspended): (Vec<usize>, Vec<bool>) =
        lifecycle::laid_over(&state.config, &snap, now.as_millisecond())
            .into_iter()
            .map(|(policy, suspended, _)| (policy, suspended))
            .unzip();
    let wanted: Vec<(usize, bool)> = state
        .config
        .policies_in_force(&own, now)
        .into_iter()
        .zip(suspended)
        .collect();
    if wanted == state.applied {
        return;
    }
    let switched = wanted
        .iter()
        .zip(&state.applied)
        .filter(|(a, b)| a != b)
        .count();
    let file = state.config.clone();
    match state.apply(running, file, now) {
        Ok(()) => {
            tracing::info!(devices = switched, "schedule or due date: devices switched");
            state.status.schedule_switches += 1;
            state.status.write(&state.status_path);
            state.publish(running);
        }
        Err(e) => tracing::error!(error = %format!("{e:#}"), "switch failed; retrying"),
    }
}

/// Answers an API request; requests that change a device apply a new generation at once.
pub(super) fn control(
    running: &mut Running,
    state: &mut State,
    req: Request,
    now: jiff::Timestamp,
) -> Reply {
    let ms = now.as_millisecond();
    let view = |state: &State, device: &str| -> Reply {
        views(&state.config, &state.applied_config, &state.statuses, now)
            .into_iter()
            .find(|v| v.name == device)
            .map(|v| serde_json::json!(v))
            .ok_or_else(|| ControlError::UnknownDevice(device.to_string()))
    };
    let store = || {
        state.lifecycle.as_ref().ok_or_else(|| {
            ControlError::Internal(anyhow::anyhow!(
                "no lifecycle state (the state directory {} is unusable; see the daemon's log)",
                state.config.state_dir.display()
            ))
        })
    };
    let file = &state.config;
    let description = format!("{req:?}");
    let device = match req {
        Request::Devices => {
            return Ok(serde_json::json!(views(
                file,
                &state.applied_config,
                &state.statuses,
                now
            )));
        }
        Request::Device(d) => return view(state, &d),
        Request::Checkouts { device, open } => {
            if let Some(d) = &device {
                lifecycle::device(file, d)?;
            }
            let list: Vec<CheckoutView> = store()?
                .checkouts(device.as_deref(), open)?
                .iter()
                .map(CheckoutView::from)
                .collect();
            return Ok(serde_json::json!(list));
        }
        Request::Events(device) => {
            lifecycle::device(file, &device)?;
            let list: Vec<EventView> = store()?
                .events(&device)?
                .iter()
                .map(EventView::from)
                .collect();
            return Ok(serde_json::json!(list));
        }
        Request::Suspend { device, note } => {
            store()?.suspend(file, &device, note.as_deref(), ms)?;
            device
        }
        Request::Resume { device, note } => {
            store()?.resume(file, &device, note.as_deref(), ms)?;
            device
        }
        Request::Move { device, policy } => {
            store()?.move_to(file, &device, policy.as_deref(), ms)?;
            device
        }
        Request::Checkout {
            device,
            borrower,
            due,
            policy,
        } => {
            let due_ms = lifecycle::parse_due(&due, &file.timezone)?;
            store()?.checkout(file, &device, &borrower, due_ms, policy.as_deref(), ms)?;
            device
        }
        Request::Checkin { device, note } => {
            store()?.checkin(file, &device, note.as_deref(), ms)?;
            device
        }
    };
    let file = state.config.clone();
    state.apply(running, file, now)?;
    state.publish(running);
    tracing::info!(device = %device, request = %description, "device changed through the API");
    view(state, &device)
}
