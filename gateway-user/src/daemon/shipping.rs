//! The shipping pipelines as the daemon runs them: started from the configuration in force,
//! restarted when a reload changes their settings (the remote-write spool and the syslog
//! cursor carry over), stopped with the daemon; their views written for `gateway status`.

use std::{path::PathBuf, sync::Arc, time::Instant};

use crate::{
    config::{
        Config,
        telemetry::{Ship, Telemetry},
    },
    control::http,
    observe::ship::{self, ShipStats, remote_write::Pusher, syslog::Shipper},
};

/// How often the views are written.
const VIEWS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The running pipelines and the settings each was started with.
pub(super) struct Pipelines {
    stats: Arc<ShipStats>,
    shared: Option<Arc<http::Shared>>,
    remote_write: Option<(Telemetry, PathBuf, Option<Pusher>)>,
    syslog: Option<(Ship, PathBuf, Option<Shipper>)>,
    views_at: Option<Instant>,
    /// Where the views go (the runtime directory of this bpffs root), and the last written.
    bpffs: PathBuf,
    written: [Option<ship::PipelineView>; 2],
}

impl Pipelines {
    pub(super) fn new(stats: Arc<ShipStats>, shared: Option<Arc<http::Shared>>) -> Self {
        Self {
            stats,
            shared,
            remote_write: None,
            syslog: None,
            views_at: None,
            bpffs: PathBuf::new(),
            written: [None, None],
        }
    }

    /// Starts, restarts or stops the pipelines as `config` says. A pipeline that cannot start
    /// is logged, and tried again when its settings change.
    pub(super) fn follow(&mut self, config: &Config) {
        let dir = config.state_dir.clone();
        let want = config.telemetry.clone().map(|t| (t, dir.clone()));
        if self.remote_write.as_ref().map(|(t, d, _)| (t, d)) != want.as_ref().map(|(t, d)| (t, d))
        {
            if let Some((_, _, Some(p))) = self.remote_write.take() {
                p.stop();
            }
            self.remote_write = want.map(|(t, d)| {
                let p = self.start_remote_write(&t, &d);
                (t, d, p)
            });
        }
        let want = config.history.ship.clone().map(|s| (s, dir.clone()));
        if self.syslog.as_ref().map(|(s, d, _)| (s, d)) != want.as_ref().map(|(s, d)| (s, d)) {
            if let Some((_, _, Some(s))) = self.syslog.take() {
                s.stop();
            }
            self.stats
                .syslog
                .cursor
                .store(-1, std::sync::atomic::Ordering::Relaxed);
            self.syslog = want.map(|(s, d)| {
                let started = if config.history.enabled {
                    Shipper::start(&s, &d, self.stats.syslog.clone())
                        .map_err(|e| tracing::error!(error = %format!("{e:#}"), "cannot ship the history to syslog"))
                        .ok()
                } else {
                    tracing::warn!("history.ship with the history disabled: nothing to ship");
                    None
                };
                (s, d, started)
            });
        }
        self.bpffs = config.bpffs.clone();
        if self.views_at.is_none_or(|t| t.elapsed() >= VIEWS_EVERY) {
            self.views_at = Some(Instant::now());
            self.write_views();
        }
    }

    /// Writes the view of each running pipeline that changed since it was last written.
    fn write_views(&mut self) {
        let views = [
            self.remote_write
                .as_ref()
                .map(|_| ("remote_write", self.stats.remote_write.view("samples"))),
            self.syslog
                .as_ref()
                .map(|_| ("syslog", self.stats.syslog.view("rows"))),
        ];
        for (view, last) in views.into_iter().zip(self.written.iter_mut()) {
            if let Some((name, v)) = view
                && last.as_ref() != Some(&v)
            {
                v.write(&self.bpffs, name);
                *last = Some(v);
            }
        }
    }

    fn start_remote_write(&self, t: &Telemetry, state_dir: &std::path::Path) -> Option<Pusher> {
        let Some(shared) = self.shared.clone() else {
            tracing::error!("remote-write: no access to the counters; nothing is pushed");
            return None;
        };
        let agent = match super::pull::agent_trusting(t.ca_file.as_deref()) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "remote-write: cannot set up TLS; nothing is pushed");
                return None;
            }
        };
        let collect = Box::new(move || http::render_metrics(&shared));
        let spool = state_dir.join(ship::DIR).join("remote_write");
        Pusher::start(t, agent, collect, &spool, self.stats.remote_write.clone())
            .map_err(|e| tracing::error!(error = %format!("{e:#}"), "cannot start remote-write"))
            .ok()
    }

    /// Stops the pipelines (the remote-write queue is spooled; the syslog cursor is saved),
    /// and writes their last views.
    pub(super) fn stop(&mut self) {
        if let Some((_, _, pusher)) = &mut self.remote_write
            && let Some(p) = pusher.take()
        {
            p.stop();
        }
        if let Some((_, _, shipper)) = &mut self.syslog
            && let Some(s) = shipper.take()
        {
            s.stop();
        }
        self.write_views();
    }
}
