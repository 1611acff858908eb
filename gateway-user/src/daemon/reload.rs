//! Reloads: the configuration read again, validated and applied as a difference, the running
//! one kept when the new one is rejected.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use super::{RunOptions, notify::notify, state::State};
use crate::{
    config::{Config, Interface, LinkSetting},
    kernel::attach::Running,
};

pub(super) fn interfaces(opts: &RunOptions, config: &Config) -> Vec<Interface> {
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

/// `Config::keep_category_numbers`, saying which removed category's number was given to a
/// new one.
pub(super) fn keep_category_numbers(config: &mut Config, previous: &[String]) {
    for (gone, new) in config.keep_category_numbers(previous) {
        tracing::warn!(
            removed = gone.as_str(),
            category = new.as_str(),
            "64 category numbers in use: a new category takes a removed one's number; the decision counts of the removed one are now shown under the new one"
        );
    }
}

/// What the watcher compares of a file: its modification time and size (`None`: unreadable).
pub(super) type Stamp = Option<(SystemTime, u64)>;

/// The stamps of `files`, in order.
pub(super) fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .and_then(|m| Ok((m.modified()?, m.len())))
                .ok()
        })
        .collect()
}

/// How long the configuration's files must stay as they are before the watcher reloads them:
/// an editor or a script that truncates a file and then writes it is not caught between the
/// two (the empty file would otherwise be read as a configuration with nothing in it).
pub(super) const SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

/// Re-reads the configuration and applies it; keeps the running one if the new one is bad.
/// The outcome is logged and counted in the status file `gateway reload` reads; returns
/// whether it was applied.
pub(super) fn reload(
    opts: &RunOptions,
    running: &mut Running,
    state: &mut State,
    trigger: &str,
) -> bool {
    notify("RELOADING=1");
    let result = try_reload(opts, running, state);
    state.status.last_trigger = Some(trigger.to_string());
    let ok = result.is_ok();
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
    ok
}

/// The configuration in force: the gateway's own file, composed with the fleet bundle in
/// force if the file has `[fleet]` and a bundle was activated.
pub(super) fn resolve(opts: &RunOptions, bundle: Option<&Path>) -> anyhow::Result<Config> {
    let main = Config::resolve(opts.config.as_deref())?;
    match (&main.fleet, bundle) {
        (Some(_), Some(dir)) => crate::config::bundle::compose(&main.source, dir),
        _ => Ok(main),
    }
}

fn try_reload(opts: &RunOptions, running: &mut Running, state: &mut State) -> anyhow::Result<()> {
    let mut config = resolve(opts, state.bundle.as_deref())?;
    keep_category_numbers(&mut config, &state.status.categories);
    let wanted = interfaces(opts, &config);
    // A running filter whose file now names no interface was most likely given an empty or cut
    // short file: keep enforcing what is in force rather than drop every device.
    anyhow::ensure!(
        !wanted.is_empty(),
        "{}: no [[interface]] (an empty or truncated file?); the running configuration stays",
        config.source.display()
    );
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
    let files = stamps(&config.files);
    state.apply(running, config, jiff::Timestamp::now())?;
    state.stamps = files;
    tracing::info!(
        generation = running.applied.generation,
        changes = running.applied.changes,
        "reloaded"
    );
    Ok(())
}
