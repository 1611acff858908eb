//! `gateway run`: the composition root. It attaches the filter, starts the recorder and the
//! HTTP listener, then keeps the configuration current until told to stop.
//!
//! Stopping the daemon (SIGTERM, SIGINT, a crash, SIGKILL) leaves the filter attached and
//! enforcing the last configuration; `gateway detach` removes it. The configuration is reloaded
//! on SIGHUP (`gateway reload` sends it) and when one of its files changes; one that fails
//! validation is rejected and the running one stays. Schedules switch policies at their window
//! boundaries (checked every second) by applying a new generation.

mod fleet;
mod lists;
mod notify;
mod pull;
mod reload;
mod safe_search;
mod shipping;
mod state;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use self::{
    notify::notify,
    reload::{SETTLE, interfaces, keep_category_numbers, reload, stamps},
    state::{State, control, follow, lay_over, open_state, signature},
};
use crate::{
    config::Config,
    control::http,
    kernel::{Maps, attach},
    observe::{
        history::{Names, Naming, Recorder},
        kernel_log, metrics,
        status::{RUNTIME_DIR, ReloadStatus, runtime_file},
    },
};

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: Option<PathBuf>,
    /// Interfaces from the command line; they replace the configuration's.
    pub interfaces: Vec<String>,
    /// Load the filter with its debug traces on and drain them into the log.
    pub trace_kernel: bool,
}

/// Runs the daemon until SIGTERM/SIGINT, or until the filter is detached from outside.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let main = Config::resolve(opts.config.as_deref())?;
    let main_file = main.source.clone();
    // A fleet gateway enforces its last good bundle from the start, before any network.
    let mut bundle = fleet::at_start(&main);
    let mut config = match bundle
        .as_deref()
        .map(|d| crate::config::bundle::compose(&main_file, d))
    {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            tracing::error!(error = %format!("{e:#}"), "the last good fleet bundle no longer composes with this file; the file alone is in force");
            bundle = None;
            main
        }
        None => main,
    };
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
    let mut running = attach::start(&effective, &ifaces, opts.trace_kernel)?;
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
        stamps: stamps(&config.files),
        settling: None,
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
        bundle,
        ship: Default::default(),
        config,
    };
    state.status.write(&state.status_path);
    // The recorder names what it drains from the start (`publish` runs again once the HTTP
    // handlers are up).
    state.publish(&running);
    if opts.trace_kernel {
        for (link, filter) in &mut running.filters {
            if let Err(e) = kernel_log::start(&mut filter.ebpf, *link, state.names.clone()) {
                tracing::error!(error = %format!("{e:#}"), "no kernel traces");
            }
        }
    }
    // The recorder owns the event ring; the HTTP handlers get map handles of their own.
    let recorder = match running.maps.take_events() {
        Ok(ring) => {
            let r = Recorder::start(
                ring,
                store,
                state.names.clone(),
                state.keep.clone(),
                Some(state.ship.syslog.clone()),
            );
            state.recorder_stats = Some(r.stats.clone());
            Some(r)
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot open the event ring: no decision history");
            None
        }
    };
    let (commands_tx, mut commands) = tokio::sync::mpsc::channel::<http::Command>(64);
    let token = match crate::control::token::load_or_create_token(&state.config.api.token_file) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "no API token: /api/v1/ refuses every request");
            None
        }
    };
    match Maps::from_pins(&running.pins.maps()) {
        Ok(m) => {
            let shared = Arc::new(http::Shared {
                maps: Mutex::new(m),
                info: RwLock::new(metrics::Info {
                    config: Arc::new(state.applied_config.clone()),
                    status: state.status.clone(),
                    domains: 0,
                    recorder: state.recorder_stats.clone(),
                    pseudonym: state.pseudonym.clone(),
                    ship: Some(state.ship.clone()),
                }),
                token,
                commands: commands_tx,
            });
            let listen = state.config.api.listen;
            tokio::spawn({
                let shared = shared.clone();
                async move {
                    if let Err(e) = http::serve(listen, shared).await {
                        tracing::error!(error = %format!("{e:#}"), "HTTP listener failed: no /metrics and no API (the filter runs on)");
                    }
                }
            });
            state.shared = Some(shared);
        }
        Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot open the maps for /metrics"),
    }
    state.publish(&running);
    // Lists by URL are downloaded beside the state; a new copy reaches the filter through the
    // file watcher below.
    let mut refresher = match lists::Refresher::start(&state.config.remote_lists) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the list downloads: lists by URL keep their cached copies");
            None
        }
    };
    // Metrics and history leave for the centre if configured; a reload that changes where
    // restarts the pipeline.
    // SafeSearch: the enforcement names the policies use, resolved and kept current.
    let resolver = safe_search::Resolver::start(&state.config, running.maps.safe_targets.clone())
        .map_err(|e| tracing::error!(error = %format!("{e:#}"), "SafeSearch names stay unresolved: their queries pass to the resolver"))
        .ok();
    let mut pipelines = shipping::Pipelines::new(state.ship.clone(), state.shared.clone());
    pipelines.follow(&state.config);
    // A fleet gateway polls for bundles; one verified and valid is applied in the loop below.
    let mut poller = state.config.fleet.as_ref().and_then(|f| {
        fleet::Poller::start(f, &main_file, &state.config.state_dir)
            .map_err(|e| tracing::error!(error = %e, "cannot start polling for fleet bundles: the policy in force stays"))
            .ok()
    });
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
            _ = hup.recv() => {
                reload(&opts, &mut running, &mut state, "signal");
            }
            Some((req, reply)) = commands.recv() => {
                let answer = control(&mut running, &mut state, req, jiff::Timestamp::now());
                let _ = reply.send(answer);
            }
            _ = tick.tick() => {
                if running.attachments.iter().all(|a| !running.pins.link(&a.iface).exists()) {
                    tracing::info!("the filter was detached (gateway detach); exiting");
                    let _ = std::fs::remove_file(&pid_path);
                    pipelines.stop();
                    if let Some(r) = recorder {
                        r.stop();
                    }
                    return Ok(());
                }
                let now = stamps(&state.config.files);
                if now != state.stamps && state.settling.as_ref().is_none_or(|(s, _)| *s != now) {
                    state.settling = Some((now, tokio::time::Instant::now() + SETTLE));
                }
                follow(&mut running, &mut state, jiff::Timestamp::now());
                if let Some(r) = &mut refresher {
                    r.follow(&state.config.remote_lists);
                }
                pipelines.follow(&state.config);
                if let Some(r) = &resolver {
                    r.follow(&state.config);
                }
                let candidate = poller
                    .as_mut()
                    .zip(state.config.fleet.clone())
                    .and_then(|(p, f)| p.follow(&f));
                if let Some(c) = candidate {
                    let previous = state.bundle.replace(c.dir.clone());
                    let applied = reload(&opts, &mut running, &mut state, "bundle");
                    if !applied {
                        state.bundle = previous;
                    }
                    tracing::debug!(revision = c.revision, applied, "fleet bundle handed over");
                    let _ = c.reply.send(if applied {
                        Ok(())
                    } else {
                        Err(state.status.last_error.clone().unwrap_or_default())
                    });
                }
            }
            _ = tokio::time::sleep_until(state.settling.as_ref().map_or_else(tokio::time::Instant::now, |(_, at)| *at)), if state.settling.is_some() => {
                let now = stamps(&state.config.files);
                match state.settling.take() {
                    // Unchanged for SETTLE. Recorded first: a rejected file is not retried until
                    // it changes again.
                    Some((seen, _)) if seen == now => {
                        state.stamps = now;
                        reload(&opts, &mut running, &mut state, "watch");
                    }
                    // Still being written: wait for it to settle again.
                    _ if now != state.stamps => {
                        state.settling = Some((now, tokio::time::Instant::now() + SETTLE));
                    }
                    _ => {}
                }
            }
        }
    }
    let _ = std::fs::remove_file(&pid_path);
    notify("STOPPING=1");
    pipelines.stop();
    if let Some(r) = resolver {
        r.stop();
    }
    if let Some(r) = recorder {
        r.stop();
    }
    tracing::info!("exiting; the filter stays attached and enforcing (gateway detach removes it)");
    Ok(())
}
