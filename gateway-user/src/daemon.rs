//! `gateway run`: attach, then keep the configuration current until told to stop.
//!
//! Stopping the daemon (SIGTERM, SIGINT, a crash, SIGKILL) leaves the filter attached and
//! enforcing the last configuration; `gateway detach` removes it. SIGHUP reloads the
//! configuration; one that fails validation is rejected and the running one stays.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    apply,
    attach::{self, Running},
    config::{Config, Interface, LinkSetting},
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

/// Runs the daemon until SIGTERM/SIGINT, or until the filter is detached from outside.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let config = Config::resolve(opts.config.as_deref())?;
    let ifaces = interfaces(&opts, &config);
    let mut running = attach::start(&config, &ifaces)?;
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
    // Decision events: the kernel does not wake us per event (too costly under load); they are
    // drained every 200 ms, and when the kernel signals a half-full ring.
    let mut drain = tokio::time::interval(Duration::from_millis(200));
    let events_fd = {
        use std::os::fd::AsFd as _;
        let fd = running
            .maps
            .events
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the event ring's fd")?;
        // SAFETY: the AsyncFd owns this duplicate, which stays open and unchanged until dropped.
        unsafe { tokio::io::unix::AsyncFd::register(fd) }
            .map_err(|e| anyhow::anyhow!("watching the event ring: {e}"))?
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                notify("RELOADING=1");
                reload(&opts, &mut running);
                notify("READY=1");
            }
            ready = events_fd.readable() => {
                if let Ok(mut guard) = ready {
                    log_events(&mut running);
                    guard.clear_ready();
                }
            }
            _ = drain.tick() => log_events(&mut running),
            _ = tick.tick() => {
                if running.attachments.iter().all(|a| !running.pins.link(&a.iface).exists()) {
                    tracing::info!("the filter was detached (gateway detach); exiting");
                    return Ok(());
                }
            }
        }
    }
    notify("STOPPING=1");
    tracing::info!("exiting; the filter stays attached and enforcing (gateway detach removes it)");
    Ok(())
}

/// Logs the decision events waiting in the ring (debug level; the history store is next).
fn log_events(running: &mut Running) {
    let names: std::collections::HashMap<u32, &str> = running
        .applied
        .slots
        .iter()
        .map(|(n, s)| (*s, n.as_str()))
        .collect();
    for ev in running.maps.drain_events() {
        tracing::debug!(
            device = names.get(&ev.slot).copied().unwrap_or("(unknown)"),
            policy = ev.policy,
            name = ev.name(),
            qtype = ev.qtype,
            action = gateway_common::enums::Action::from_u32(ev.action.into())
                .map_or("?", |a| a.label()),
            reason = gateway_common::enums::Reason::from_u32(ev.reason.into())
                .map_or("?", |r| r.label()),
            category = ev.category,
            "decision"
        );
    }
}

/// Re-reads the configuration and applies it; keeps the running one if the new one is bad.
fn reload(opts: &RunOptions, running: &mut Running) {
    match Config::resolve(opts.config.as_deref()) {
        Ok(config) => {
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
            match apply::apply(&mut running.maps, &config) {
                Ok(a) => {
                    tracing::info!(generation = a.generation, changes = a.changes, "reloaded");
                    running.applied = a;
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "reload failed while writing maps")
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reload rejected; the running configuration stays")
        }
    }
}
