//! Running the real filter on frames with BPF_PROG_TEST_RUN: `replay`, the fixture tests and
//! the benchmarks all go through here.

use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    maps::{Array, MapData},
    programs::{TestRun as _, TestRunOptions},
};
use gateway_common::{
    enums::{LinkType, Reason, Verdict},
    maps::{Trace, UNKNOWN_DEVICE, UNKNOWN_SLOT},
};

use crate::{
    config::{Config, domain_buckets},
    kernel::{Applied, Applier, Filter, LoadOptions, Maps, batch::Emptied},
};

/// Room after the frame in the output buffer, for answers longer than their query.
pub const OUTPUT_HEADROOM: usize = 512;
/// BPF_PROG_TEST_RUN rejects XDP input shorter than an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// How the filter for `link` is loaded for `config` (its domain table and TLS flows sized as
/// the daemon sizes them): with `TRACE`, private maps, no debug traces.
pub fn load_options(config: &Config, link: LinkType) -> LoadOptions {
    LoadOptions {
        link,
        map_pins: None,
        trace: true,
        kernel_log: false,
        domain_buckets: domain_buckets(config.max_domains),
        tls_flows: config.max_tls_flows,
    }
}

/// Loads the filter for `link`, sized for `config`, on the maps pinned in `map_pins` or on
/// private ones; nothing is written into it.
pub fn load_filter(
    config: &Config,
    link: LinkType,
    trace: bool,
    map_pins: Option<std::path::PathBuf>,
) -> anyhow::Result<Filter> {
    Filter::load(&LoadOptions {
        trace,
        map_pins,
        ..load_options(config, link)
    })
}

/// The outcome of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    pub verdict: Verdict,
    pub reason: Reason,
    pub slot: u32,
    pub policy: u32,
    /// The action of a decision on a name (`None` for frames no rule judged).
    pub action: Option<gateway_common::enums::Action>,
    /// The frame as the program left it (an answer, for `Verdict::Tx`).
    pub output: Vec<u8>,
}

/// What distinguishes one shared filter from another: the link and the map sizes.
type PoolKey = (LinkType, u32, u32);

/// Filters loaded by `TestRunner::shared` and not in use.
static IDLE: std::sync::Mutex<Vec<(PoolKey, TestRunner)>> = std::sync::Mutex::new(Vec::new());

/// A `TestRunner` from `TestRunner::shared`, back to the idle ones when dropped.
pub struct SharedRunner {
    key: PoolKey,
    /// Moved back to the idle ones in `drop`.
    runner: std::mem::ManuallyDrop<TestRunner>,
}

impl std::ops::Deref for SharedRunner {
    type Target = TestRunner;
    fn deref(&self) -> &TestRunner {
        &self.runner
    }
}

impl std::ops::DerefMut for SharedRunner {
    fn deref_mut(&mut self) -> &mut TestRunner {
        &mut self.runner
    }
}

impl Drop for SharedRunner {
    fn drop(&mut self) {
        // SAFETY: `drop` runs once, and nothing uses `self.runner` after it.
        let runner = unsafe { std::mem::ManuallyDrop::take(&mut self.runner) };
        IDLE.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((self.key, runner));
    }
}

/// A filter instance with private maps, loaded with a configuration.
pub struct TestRunner {
    pub filter: Filter,
    pub maps: Maps,
    /// `None` when loaded without tracing (as in production): `run` is then unavailable.
    trace: Option<Array<MapData, Trace>>,
    pub applied: Applied,
    applier: Applier,
    device_names: HashMap<u32, String>,
    policy_names: Vec<String>,
    /// The filter's maps, to be emptied when the runner is used again (`shared`).
    emptied: Emptied,
}

impl TestRunner {
    /// Loads the filter for `link` with private maps and writes `config` into them.
    pub fn new(config: &Config, link: LinkType) -> anyhow::Result<Self> {
        Self::with_trace(config, link, true)
    }

    /// As `new`; `trace = false` loads exactly the production program (for timing).
    pub fn with_trace(config: &Config, link: LinkType, trace: bool) -> anyhow::Result<Self> {
        let opts = LoadOptions {
            trace,
            ..load_options(config, link)
        };
        Self::load(config, &opts)
    }

    /// As `new`, sharing (or creating and pinning) the maps pinned in `dir`, as a daemon does.
    pub fn pinned(config: &Config, link: LinkType, dir: &std::path::Path) -> anyhow::Result<Self> {
        let opts = LoadOptions {
            map_pins: Some(dir.to_path_buf()),
            ..load_options(config, link)
        };
        Self::load(config, &opts)
    }

    /// As `new`, with the filter's debug traces (aya-log, `gateway run --trace-kernel`) on: its
    /// log ring is left in `filter.ebpf` for a reader.
    pub fn with_kernel_log(config: &Config, link: LinkType) -> anyhow::Result<Self> {
        let opts = LoadOptions {
            kernel_log: true,
            ..load_options(config, link)
        };
        Self::load(config, &opts)
    }

    fn load(config: &Config, opts: &LoadOptions) -> anyhow::Result<Self> {
        let mut filter = Filter::load(opts)?;
        let emptied = Emptied::of(&filter.ebpf)?;
        let maps = filter.take_maps()?;
        let trace = if opts.trace {
            Some(filter.take_trace()?)
        } else {
            None
        };
        let mut runner = Self {
            filter,
            maps,
            trace,
            applied: Applied::default(),
            applier: Applier::default(),
            device_names: HashMap::new(),
            policy_names: Vec::new(),
            emptied,
        };
        runner.reconfigure(config)?;
        Ok(runner)
    }

    /// As `new`, on a filter loaded earlier in this process if one for `link` and `config`'s
    /// sizes is idle (emptied, then `config` written into it as into a fresh one), else on a
    /// new one; it is kept for the next caller when the returned runner is dropped. For test
    /// suites: a load's verification dominates the time of a test case, and under qemu it
    /// takes minutes.
    pub fn shared(config: &Config, link: LinkType) -> anyhow::Result<SharedRunner> {
        let opts = load_options(config, link);
        let key = (link, opts.domain_buckets, opts.tls_flows);
        let idle = {
            let mut pool = IDLE
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let at = pool.iter().position(|(k, _)| *k == key);
            at.map(|i| pool.swap_remove(i).1)
        };
        let runner = match idle {
            Some(mut runner) => {
                // The event ring through the runner's own reader first: a reader keeps its own
                // copy of the ring's read position.
                if let Some(ring) = runner.maps.events.as_mut() {
                    while ring.next().is_some() {}
                }
                runner.emptied.empty()?;
                runner.maps.safe_targets.forget();
                let (packets, bytes) = &runner.maps.uninspected_floor;
                packets.store(0, std::sync::atomic::Ordering::Relaxed);
                bytes.store(0, std::sync::atomic::Ordering::Relaxed);
                runner.applier = Applier::default();
                runner.applied = Applied::default();
                runner.reconfigure(config)?;
                runner
            }
            None => Self::load(config, &opts)?,
        };
        Ok(SharedRunner {
            key,
            runner: std::mem::ManuallyDrop::new(runner),
        })
    }

    /// Writes a new configuration (as a reload would).
    pub fn reconfigure(&mut self, config: &Config) -> anyhow::Result<()> {
        self.reconfigure_at(config, jiff::Timestamp::now())
    }

    /// Map entries the last `reconfigure` wrote or deleted (both generations).
    pub fn changes(&self) -> usize {
        self.applied.changes
    }

    /// As `reconfigure`, with the policies in force at `now` (schedules).
    pub fn reconfigure_at(&mut self, config: &Config, now: jiff::Timestamp) -> anyhow::Result<()> {
        self.applied = self.applier.apply_at(&mut self.maps, config, now)?;
        self.device_names = self
            .applied
            .slots
            .iter()
            .map(|(n, s)| (*s, n.clone()))
            .collect();
        self.policy_names = config.policy_names();
        Ok(())
    }

    /// Runs the program once on `frame`.
    pub fn run(&mut self, frame: &[u8]) -> anyhow::Result<RunResult> {
        if frame.len() < MIN_FRAME {
            bail!(
                "frame of {} bytes: BPF_PROG_TEST_RUN needs at least {MIN_FRAME}",
                frame.len()
            );
        }
        let trace = self.trace.as_ref().context("loaded without tracing")?;
        let before = trace.get(&0, 0)?.seq;
        let mut out = vec![0u8; frame.len() + OUTPUT_HEADROOM];
        let result = self
            .filter
            .program()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        let verdict = verdict_of(result.return_value)?;
        let t = self
            .trace
            .as_ref()
            .context("loaded without tracing")?
            .get(&0, 0)?;
        if t.seq == before {
            bail!("the program returned without recording its outcome");
        }
        let reason =
            Reason::from_u32(t.reason).ok_or_else(|| anyhow!("unknown reason {}", t.reason))?;
        if t.verdict != verdict as u32 {
            bail!(
                "recorded verdict {} but returned {}",
                t.verdict,
                verdict.label()
            );
        }
        Ok(RunResult {
            verdict,
            reason,
            slot: t.slot,
            policy: t.policy,
            action: gateway_common::enums::Action::from_u32(t.action),
            output: out,
        })
    }

    /// Average kernel-measured time per run over `repeat` runs of `frame`.
    pub fn time(&mut self, frame: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        time_program(self.filter.program()?, frame, repeat)
    }

    /// The name of the device in `slot`.
    pub fn device_name(&self, slot: u32) -> String {
        if slot == UNKNOWN_SLOT {
            return UNKNOWN_DEVICE.to_string();
        }
        self.device_names
            .get(&slot)
            .cloned()
            .unwrap_or_else(|| format!("slot-{slot}"))
    }

    /// The name of policy `id`.
    pub fn policy_name(&self, id: u32) -> String {
        self.policy_names
            .get(id as usize)
            .cloned()
            .unwrap_or_else(|| format!("policy-{id}"))
    }
}

/// The XDP action as a verdict; `XDP_ABORTED` and unknown values are errors.
pub fn verdict_of(action: u32) -> anyhow::Result<Verdict> {
    match action {
        1 => Ok(Verdict::Drop),
        2 => Ok(Verdict::Pass),
        3 => Ok(Verdict::Tx),
        0 => bail!("the program returned XDP_ABORTED"),
        other => bail!("the program returned unknown XDP action {other}"),
    }
}

/// Average kernel-measured time per run of `prog` on `frame`.
pub fn time_program(
    prog: &mut aya::programs::Xdp,
    frame: &[u8],
    repeat: u32,
) -> anyhow::Result<Duration> {
    let mut out = vec![0u8; frame.len() + OUTPUT_HEADROOM];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok(r.duration)
}
