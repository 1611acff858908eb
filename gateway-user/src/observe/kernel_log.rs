//! The filter's debug traces (`gateway run --trace-kernel`): the aya-log records the kernel
//! writes at its one exit (why a frame got its verdict), drained into the daemon's `tracing`
//! output under the target `gateway::kernel`, with their numbers named.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, RwLock},
};

use aya_log::EbpfLogger;
use gateway_common::{
    enums::{Action, LinkType, Reason, Verdict},
    maps::TRACE_NO_ACTION,
};
use tokio::io::{Interest, unix::AsyncFd};

use super::history::{Names, Naming};

/// Turns aya-log records into `tracing` events, naming verdicts, reasons, actions, devices
/// and policies with the names the recorder has (device names pseudonymised as it does).
pub struct Bridge {
    link: LinkType,
    names: Arc<RwLock<Naming>>,
}

impl Bridge {
    /// `text` (a record of the filter's exit, `key=number` pairs) with its numbers named.
    pub fn name(&self, text: &str) -> String {
        let naming = self.names.read().unwrap_or_else(|e| e.into_inner());
        let names = naming.newest();
        let named: Vec<String> = text
            .split_whitespace()
            .map(|token| {
                let Some((key, value)) = token.split_once('=') else {
                    return token.to_string();
                };
                let Ok(n) = value.parse::<u32>() else {
                    return token.to_string();
                };
                let label = match key {
                    "verdict" => Verdict::from_u32(n).map(|v| v.label().to_string()),
                    "reason" => Reason::from_u32(n).map(|r| r.label().to_string()),
                    "action" if n == TRACE_NO_ACTION => Some("-".to_string()),
                    "action" => Action::from_u32(n).map(|a| a.label().to_string()),
                    "slot" => {
                        let device = match names {
                            Some(m) => m.device(n, m.pseudonym.as_ref()),
                            None => Names::default().device(n, None),
                        };
                        return format!("device={device}");
                    }
                    "policy" => names.and_then(|m| m.policies.get(n as usize).cloned()),
                    _ => None,
                };
                format!("{key}={}", label.unwrap_or_else(|| value.to_string()))
            })
            .collect();
        named.join(" ")
    }
}

impl log::Log for Bridge {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let text = self.name(&record.args().to_string());
        tracing::info!(target: "gateway::kernel", link = self.link.label(), "{text}");
    }

    fn flush(&self) {}
}

/// Drains the debug traces of the filter `ebpf` (loaded with `kernel_log`, for `link`) on the
/// current tokio runtime until the runtime ends.
pub fn start(
    ebpf: &mut aya::Ebpf,
    link: LinkType,
    names: Arc<RwLock<Naming>>,
) -> anyhow::Result<()> {
    let logger = EbpfLogger::init_with_logger(ebpf, Bridge { link, names })
        .map_err(|e| anyhow::anyhow!("opening the filter's log ring: {e}"))?;
    // SAFETY: the logger owns its ring's file descriptor and keeps it open, unreplaced, for as
    // long as the `AsyncFd` owns the logger.
    let mut ready = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the filter's log ring: {e}"))?;
    tokio::spawn(async move {
        loop {
            let mut guard = match ready.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "the filter's log ring failed: no more kernel traces");
                    return;
                }
            };
            // aya-log panics on a record it cannot decode: the traces stop, the daemon does not.
            if std::panic::catch_unwind(AssertUnwindSafe(|| guard.get_inner_mut().flush())).is_err()
            {
                tracing::error!("a kernel trace record could not be read: no more kernel traces");
                return;
            }
            guard.clear_ready();
        }
    });
    tracing::info!(
        link = link.label(),
        "kernel traces on (target gateway::kernel)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use gateway_common::maps::UNKNOWN_DEVICE;

    use super::*;

    #[test]
    fn records_are_named() {
        let mut naming = Naming::default();
        naming.set(
            1,
            Names {
                slots: std::collections::HashMap::from([(3, "tablet".to_string())]),
                policies: vec!["default".into(), "students".into()],
                categories: Vec::new(),
                pseudonym: None,
            },
        );
        let bridge = Bridge {
            link: LinkType::Ethernet,
            names: Arc::new(RwLock::new(naming)),
        };
        let record = format!(
            "verdict={} reason={} slot=3 policy=1 action={} bytes=74",
            Verdict::Tx as u32,
            Reason::Category as u32,
            Action::Block as u32
        );
        assert_eq!(
            bridge.name(&record),
            "verdict=tx reason=category device=tablet policy=students action=block bytes=74"
        );
        assert_eq!(
            bridge.name(&format!(
                "verdict=0 reason={} slot=0 policy=9 action={TRACE_NO_ACTION} bytes=60",
                Reason::Uninspected as u32
            )),
            format!(
                "verdict=pass reason=uninspected device={UNKNOWN_DEVICE} policy=9 action=- bytes=60"
            )
        );
        // Unknown slots and numbers no enum has stay visible as numbers.
        assert_eq!(
            bridge.name("verdict=77 slot=12 other text"),
            "verdict=77 device=slot-12 other text"
        );
    }
}
