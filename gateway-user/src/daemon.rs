//! `gateway run`: attach, then keep the configuration current until told to stop.
//!
//! Stopping the daemon (SIGTERM, SIGINT, a crash, SIGKILL) leaves the filter attached and
//! enforcing the last configuration; `gateway detach` removes it. The configuration is reloaded
//! on SIGHUP (`gateway reload` sends it) and when one of its files changes; one that fails
//! validation is rejected and the running one stays. Schedules switch policies at their window
//! boundaries (checked every second) by applying a new generation.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    api, apply,
    attach::{self, Running},
    config::{self, Config, Interface, LinkSetting},
    control::{CheckoutView, EventView, Reply, Request, views},
    history::{self, Names, Naming, Pseudonym, Recorder, Store},
    kernel::Maps,
    lifecycle::{self, ControlError},
    metrics,
    notify::notify,
};

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: Option<PathBuf>,
    /// Interfaces from the command line; they replace the configuration's.
    pub interfaces: Vec<String>,
}

fn interfaces(opts: &RunOptions, config: &Config) -> Vec<Interface> {
    if opts.interfaces.is_empty() {
        config.interfaces.clone()
    } else {
        opts.interfaces
            .iter()
            .map(|n| Interface {
                name: n.clone(),
                link: LinkSetting::Auto,
            })
            .collect()
    }
}

/// Where the daemons keep their pid and reload status, one pair per bpffs root.
const RUNTIME_DIR: &str = "/run/gateway";

/// The daemon's runtime file `ext` for the filter pinned under `bpffs`.
pub fn runtime_file(bpffs: &Path, ext: &str) -> PathBuf {
    let name = bpffs.to_string_lossy().trim_matches('/').replace('/', "_");
    Path::new(RUNTIME_DIR).join(format!("{name}.{ext}"))
}

/// What the daemon says about its reloads and the configuration in force (`<runtime>.status`,
/// JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Reloads applied.
    pub reloads: u64,
    /// Reloads rejected (invalid configuration) or failed (writing the maps).
    pub failed: u64,
    /// The last attempt: what triggered it (`signal`, `watch`), whether it worked, and why not.
    pub last_trigger: Option<String>,
    pub last_ok: Option<bool>,
    pub last_error: Option<String>,
    /// Schedule switches applied.
    pub schedule_switches: u64,
    /// The categories of the configuration in force, in the order that numbers them in the
    /// kernel's counters (`gateway stats` names them with it).
    #[serde(default)]
    pub categories: Vec<String>,
    /// The policies of the configuration in force, in the order that numbers them in the
    /// kernel: a restarted daemon names the decisions made before its start with them.
    #[serde(default)]
    pub policies: Vec<String>,
}

impl ReloadStatus {
    /// Records how `config` (the configuration in force) numbers its categories and policies.
    fn in_force(&mut self, config: &Config) {
        self.categories = config.category_names();
        self.policies = config.policy_names();
    }

    /// Reads the status file (an absent or unreadable one is the zero status).
    pub fn read(path: &Path) -> Self {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    fn write(&self, path: &Path) {
        let tmp = path.with_extension("status.tmp");
        let result = serde_json::to_string(self)
            .map_err(std::io::Error::other)
            .and_then(|text| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the reload status");
        }
    }
}

/// The configuration in force and what the daemon watches of it.
struct State {
    /// The configuration file as read.
    config: Config,
    /// The file with the lifecycle (suspensions, moves, checkouts) laid over it: what is
    /// applied.
    applied_config: Config,
    /// Each device's lifecycle status, as last applied.
    statuses: std::collections::BTreeMap<String, lifecycle::Status>,
    /// Per device of `applied_config`: the policy in force and whether it is suspended, as
    /// last applied (a change, by a schedule window or a due date, applies a new generation).
    applied: Vec<(usize, bool)>,
    lifecycle: Option<lifecycle::Store>,
    /// Modification times of `config.files` when it was read.
    mtimes: Vec<Option<SystemTime>>,
    status: ReloadStatus,
    status_path: PathBuf,
    /// What the history recorder names events with; `publish` adds the configuration in
    /// force.
    names: Arc<RwLock<Naming>>,
    /// `[history]` of the configuration in force (what the recorder keeps, and how long).
    keep: Arc<RwLock<config::History>>,
    shared: Option<Arc<api::Shared>>,
    pseudonym: Option<Pseudonym>,
    recorder_stats: Option<Arc<history::RecorderStats>>,
}

/// `Config::keep_category_numbers`, saying which removed category's number was given to a
/// new one.
fn keep_category_numbers(config: &mut Config, previous: &[String]) {
    for (gone, new) in config.keep_category_numbers(previous) {
        tracing::warn!(
            removed = gone.as_str(),
            category = new.as_str(),
            "64 category numbers in use: a new category takes a removed one's number; the decision counts of the removed one are now shown under the new one"
        );
    }
}

/// What decides the kernel state of each device at `now`: its policy in force and suspension.
fn signature(config: &Config, now: jiff::Timestamp) -> Vec<(usize, bool)> {
    config
        .effective_policies(now)
        .into_iter()
        .zip(config.devices.iter().map(|d| d.suspended))
        .collect()
}

/// `file` with the lifecycle in `store` laid over it at `now`.
fn lay_over(
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
    fn publish(&self, running: &Running) {
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
                domains: running.maps.apply_cache.as_ref().map_or(0, |c| c.domains()),
                recorder: self.recorder_stats.clone(),
                pseudonym: self.pseudonym.clone(),
            };
            *shared.info.write().unwrap_or_else(|e| e.into_inner()) = info;
        }
    }

    /// Applies the file configuration `file` with the lifecycle laid over it, at `now`; on
    /// success it becomes the state (the caller publishes it, with the status it updates).
    fn apply(
        &mut self,
        running: &mut Running,
        file: Config,
        now: jiff::Timestamp,
    ) -> anyhow::Result<()> {
        let (effective, statuses) = lay_over(&file, self.lifecycle.as_ref(), now)?;
        let a = apply::apply_at(&mut running.maps, &effective, now).context("writing the maps")?;
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
fn open_state(config: &Config) -> (Option<Pseudonym>, Option<Store>, Option<lifecycle::Store>) {
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

fn mtimes(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Runs the daemon until SIGTERM/SIGINT, or until the filter is detached from outside.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let mut config = Config::resolve(opts.config.as_deref())?;
    // Counters pinned by an earlier daemon keep its category numbers (none pinned: nothing
    // to keep, whatever an old status file says).
    let pinned = attach::Pins::new(&config.bpffs)
        .maps()
        .join(gateway_common::maps::names::DECISIONS)
        .exists();
    let previous = if pinned {
        ReloadStatus::read(&runtime_file(&config.bpffs, "status"))
    } else {
        ReloadStatus::default()
    };
    keep_category_numbers(&mut config, &previous.categories);
    let ifaces = interfaces(&opts, &config);
    let (pseudonym, store, lifecycle) = open_state(&config);
    // The lifecycle is laid over the file before the first apply: a device suspended through
    // the API stays suspended across a restart, without a moment unsuspended.
    let now = jiff::Timestamp::now();
    let (effective, statuses) = lay_over(&config, lifecycle.as_ref(), now)?;
    let mut running = attach::start(&effective, &ifaces)?;
    let pid_path = runtime_file(&running.pins.root, "pid");
    std::fs::create_dir_all(RUNTIME_DIR)
        .and_then(|()| std::fs::write(&pid_path, std::process::id().to_string()))
        .with_context(|| format!("writing {}", pid_path.display()))?;
    let mut status = ReloadStatus::default();
    status.in_force(&effective);
    // Events the filter logged before this start (while no daemon ran, say) wait in the pinned
    // ring: they are named with the configuration they were decided under, devices that this
    // one removed included.
    let mut naming = Naming::default();
    if !previous.policies.is_empty() {
        naming.set(
            0,
            Names {
                slots: running.previous_slots.clone().into_iter().collect(),
                policies: previous.policies,
                categories: previous.categories,
                pseudonym: None,
            },
        );
    }
    let mut state = State {
        mtimes: mtimes(&config.files),
        applied: signature(&effective, now),
        applied_config: effective,
        statuses,
        lifecycle,
        status,
        status_path: runtime_file(&running.pins.root, "status"),
        names: Arc::new(RwLock::new(naming)),
        keep: Arc::new(RwLock::new(config.history.clone())),
        shared: None,
        pseudonym,
        recorder_stats: None,
        config,
    };
    state.status.write(&state.status_path);
    // The recorder names what it drains from the start (`publish` runs again once the HTTP
    // handlers are up).
    state.publish(&running);
    // The recorder owns the event ring; the HTTP handlers get map handles of their own.
    let recorder = match running.maps.take_events() {
        Ok(ring) => {
            let r = Recorder::start(ring, store, state.names.clone(), state.keep.clone());
            state.recorder_stats = Some(r.stats.clone());
            Some(r)
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot open the event ring: no decision history");
            None
        }
    };
    let (commands_tx, mut commands) = tokio::sync::mpsc::channel::<api::Command>(64);
    let token = match api::load_or_create_token(&state.config.api.token_file) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "no API token: /api/v1/ refuses every request");
            None
        }
    };
    match Maps::from_pins(&running.pins.maps()) {
        Ok(m) => {
            let shared = Arc::new(api::Shared {
                maps: Mutex::new(m),
                info: RwLock::new(metrics::Info {
                    config: Arc::new(state.applied_config.clone()),
                    status: state.status.clone(),
                    domains: 0,
                    recorder: state.recorder_stats.clone(),
                    pseudonym: state.pseudonym.clone(),
                }),
                token,
                commands: commands_tx,
            });
            let listen = state.config.api.listen;
            tokio::spawn({
                let shared = shared.clone();
                async move {
                    if let Err(e) = api::serve(listen, shared).await {
                        tracing::error!(error = %format!("{e:#}"), "HTTP listener failed: no /metrics and no API (the filter runs on)");
                    }
                }
            });
            state.shared = Some(shared);
        }
        Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot open the maps for /metrics"),
    }
    state.publish(&running);
    let config = &state.config;
    for a in &running.attachments {
        tracing::info!(iface = %a.iface, mode = a.mode.label(), link = a.link.label(), adopted = a.adopted, "filtering");
    }
    tracing::info!(
        config = %config.source.display(),
        devices = config.devices.len(),
        policies = config.policies.len(),
        pins = %running.pins.root.display(),
        "gateway running"
    );

    notify(&format!(
        "READY=1\nSTATUS=filtering on {} interface(s)",
        running.attachments.len()
    ));

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&opts, &mut running, &mut state, "signal"),
            Some((req, reply)) = commands.recv() => {
                let answer = control(&mut running, &mut state, req, jiff::Timestamp::now());
                let _ = reply.send(answer);
            }
            _ = tick.tick() => {
                if running.attachments.iter().all(|a| !running.pins.link(&a.iface).exists()) {
                    tracing::info!("the filter was detached (gateway detach); exiting");
                    let _ = std::fs::remove_file(&pid_path);
                    if let Some(r) = recorder {
                        r.stop();
                    }
                    return Ok(());
                }
                let now = mtimes(&state.config.files);
                if now != state.mtimes {
                    // Recorded first: a rejected file is not retried until it changes again.
                    state.mtimes = now;
                    reload(&opts, &mut running, &mut state, "watch");
                }
                follow(&mut running, &mut state, jiff::Timestamp::now());
            }
        }
    }
    let _ = std::fs::remove_file(&pid_path);
    notify("STOPPING=1");
    if let Some(r) = recorder {
        r.stop();
    }
    tracing::info!("exiting; the filter stays attached and enforcing (gateway detach removes it)");
    Ok(())
}

/// Applies a new generation when a schedule window opens or closes or a checkout falls due.
fn follow(running: &mut Running, state: &mut State, now: jiff::Timestamp) {
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
fn control(running: &mut Running, state: &mut State, req: Request, now: jiff::Timestamp) -> Reply {
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

/// Re-reads the configuration and applies it; keeps the running one if the new one is bad.
/// The outcome is logged and counted in the status file `gateway reload` reads.
fn reload(opts: &RunOptions, running: &mut Running, state: &mut State, trigger: &str) {
    notify("RELOADING=1");
    let result = try_reload(opts, running, state);
    state.status.last_trigger = Some(trigger.to_string());
    match result {
        Ok(()) => {
            state.status.reloads += 1;
            state.status.last_ok = Some(true);
            state.status.last_error = None;
        }
        Err(e) => {
            let e = format!("{e:#}");
            tracing::error!(trigger, error = %e, "reload rejected; the running configuration stays");
            state.status.failed += 1;
            state.status.last_ok = Some(false);
            state.status.last_error = Some(e);
        }
    }
    state.status.write(&state.status_path);
    state.publish(running);
    notify("READY=1");
}

fn try_reload(opts: &RunOptions, running: &mut Running, state: &mut State) -> anyhow::Result<()> {
    let mut config = Config::resolve(opts.config.as_deref())?;
    keep_category_numbers(&mut config, &state.status.categories);
    let wanted = interfaces(opts, &config);
    let current: Vec<&str> = running
        .attachments
        .iter()
        .map(|a| a.iface.as_str())
        .collect();
    if wanted.iter().map(|i| i.name.as_str()).collect::<Vec<_>>() != current {
        tracing::warn!(
            "interface changes take effect at the next start; applying policies and devices now"
        );
    }
    if config.bpffs != running.pins.root {
        tracing::warn!("bpffs changes take effect at the next start");
    }
    if config.api.listen != state.config.api.listen
        || config.state_dir != state.config.state_dir
        || config.api.token_file != state.config.api.token_file
    {
        tracing::warn!(
            "[api] listen and token_file and [gateway] state_dir changes take effect at the next start"
        );
    }
    let files = mtimes(&config.files);
    state.apply(running, config, jiff::Timestamp::now())?;
    state.mtimes = files;
    tracing::info!(
        generation = running.applied.generation,
        changes = running.applied.changes,
        "reloaded"
    );
    Ok(())
}
