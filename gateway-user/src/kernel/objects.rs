//! The kernel objects: the filter and the empty program, loaded (against pinned maps or private
//! ones) and verified; the check of pinned maps against this build's layouts.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData},
    programs::Xdp,
};
use gateway_common::{
    enums::LinkType,
    maps::{Control, Meta, TRACE_LOG, TRACE_MAP, Trace, globals, names},
};

use super::{Maps, probe};

/// The filter's object file, built by `build.rs` from `gateway-ebpf`.
pub static FILTER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));
/// The empty XDP program (benchmark floor).
pub static EMPTY_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-empty"));

/// Name of the filter's XDP program in its object.
pub const FILTER_PROGRAM: &str = "gateway";
/// Name of the DNS program the filter tail-calls.
pub const DNS_PROGRAM: &str = "gateway_dns";
/// Name of the TLS program the filter tail-calls.
pub const TLS_PROGRAM: &str = "gateway_tls";
/// Names of the DNS-over-TCP programs the filter tail-calls (the stream, and its messages).
pub const DNS_TCP_PROGRAM: &str = "gateway_dns_tcp";
pub const DNS_MSG_PROGRAM: &str = "gateway_dns_msg";
/// Name of the plain-HTTP program the filter tail-calls.
pub const HTTP_PROGRAM: &str = "gateway_http";
/// The filter's program array, and the tail-called programs' indexes in it.
const PROGS_MAP: &str = "PROGS";
const PROG_DNS: u32 = 0;
const PROG_TLS: u32 = 1;
const PROG_DNS_TCP: u32 = 2;
const PROG_DNS_MSG: u32 = 3;
const PROG_HTTP: u32 = 4;
/// Name of the empty XDP program in its object.
pub const EMPTY_PROGRAM: &str = "empty";

/// How a filter instance is loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub link: LinkType,
    /// Share the maps pinned in this directory (creating and pinning missing ones); `None` gives
    /// the instance private maps (replay, fixtures, benchmarks).
    pub map_pins: Option<PathBuf>,
    /// Record every outcome in `TRACE`.
    pub trace: bool,
    /// Domain-table buckets per generation (`apply::domain_buckets`).
    pub domain_buckets: u32,
    /// Capacity of the TLS flow table (`[gateway] max_tls_flows`).
    pub tls_flows: u32,
    /// The filter's debug traces on (aya-log, `gateway run --trace-kernel`); off, the verifier
    /// prunes them.
    pub kernel_log: bool,
}

/// A loaded filter program for one link type.
pub struct Filter {
    pub ebpf: Ebpf,
    pub link: LinkType,
    /// Each program's name and the instructions the verifier processed for it (when the kernel
    /// says: 5.16+).
    pub verified: Vec<(&'static str, Option<u32>)>,
}

impl Filter {
    /// Loads and verifies the filter.
    pub fn load(opts: &LoadOptions) -> anyhow::Result<Self> {
        // A kernel without what the programs need is refused by name, before the verifier.
        probe::require()?;
        let link = opts.link as u32;
        let trace =
            if opts.trace { TRACE_MAP } else { 0 } | if opts.kernel_log { TRACE_LOG } else { 0 };
        // Loading writes the control global's section into its map: with the pinned record's
        // own contents, a filter that is running goes on reading what it read.
        let control = match &opts.map_pins {
            Some(dir) => pinned_control(dir)?.unwrap_or_default(),
            None => Control::default(),
        };
        let log_level: u8 = if opts.kernel_log {
            aya_log::Level::Debug as u8
        } else {
            0
        };
        let mut loader = EbpfLoader::new();
        loader
            .override_global(globals::LINK_TYPE, &link, true)
            .override_global(globals::KERNEL_LOG_LEVEL, &log_level, true)
            .override_global(globals::TRACE_FLAGS, &trace, true)
            .override_global(globals::CONTROL, &control, true);
        let paths: Vec<(&str, PathBuf)> = match &opts.map_pins {
            Some(dir) => names::PINNED.iter().map(|n| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(names::in_object(name), path.as_path());
        }
        loader.map_max_entries(names::DOMAINS, 2 * opts.domain_buckets);
        loader.map_max_entries(names::FLOWS, opts.tls_flows.max(1));
        let mut ebpf = loader
            .load(FILTER_OBJECT)
            .context("loading the filter object")?;
        let mut verified_all = Vec::new();
        for name in [
            DNS_PROGRAM,
            TLS_PROGRAM,
            DNS_TCP_PROGRAM,
            DNS_MSG_PROGRAM,
            HTTP_PROGRAM,
            FILTER_PROGRAM,
        ] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("the object has no program {name}"))?
                .try_into()?;
            prog.load().map_err(|e| rejected(name, e))?;
            let verified = prog
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count());
            tracing::debug!(program = name, verified, "program loaded");
            verified_all.push((name, verified));
        }
        let fd_of = |ebpf: &Ebpf, name: &str| -> anyhow::Result<_> {
            let prog: &Xdp = ebpf
                .program(name)
                .ok_or_else(|| anyhow!("the object has no program {name}"))?
                .try_into()?;
            Ok(prog.fd()?.try_clone()?)
        };
        let dns_fd = fd_of(&ebpf, DNS_PROGRAM)?;
        let tls_fd = fd_of(&ebpf, TLS_PROGRAM)?;
        let dns_tcp_fd = fd_of(&ebpf, DNS_TCP_PROGRAM)?;
        let dns_msg_fd = fd_of(&ebpf, DNS_MSG_PROGRAM)?;
        let http_fd = fd_of(&ebpf, HTTP_PROGRAM)?;
        let mut progs = aya::maps::ProgramArray::try_from(
            ebpf.map_mut(PROGS_MAP)
                .ok_or_else(|| anyhow!("the object has no map {PROGS_MAP}"))?,
        )?;
        progs.set(PROG_DNS, &dns_fd, 0)?;
        progs.set(PROG_TLS, &tls_fd, 0)?;
        progs.set(PROG_DNS_TCP, &dns_tcp_fd, 0)?;
        progs.set(PROG_DNS_MSG, &dns_msg_fd, 0)?;
        progs.set(PROG_HTTP, &http_fd, 0)?;
        Ok(Self {
            ebpf,
            link: opts.link,
            verified: verified_all,
        })
    }

    /// Pins this instance's program array (its DNS and TLS programs) at `path`.
    ///
    /// The kernel empties a program array when no file descriptor or pin refers to it any
    /// more: without a pin, the daemon's exit would leave the attached filter with nothing to
    /// tail-call, passing DNS queries and ClientHellos unjudged until the next start.
    pub fn pin_tail_calls(&self, path: &Path) -> anyhow::Result<()> {
        self.ebpf
            .map(PROGS_MAP)
            .ok_or_else(|| anyhow!("the object has no map {PROGS_MAP}"))?
            .pin(path)
            .with_context(|| format!("pinning the program array at {}", path.display()))
    }

    /// The loaded XDP program.
    pub fn program(&mut self) -> anyhow::Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(FILTER_PROGRAM)
            .ok_or_else(|| anyhow!("the object has no program {FILTER_PROGRAM}"))?
            .try_into()?)
    }

    /// Takes typed handles on the maps out of this instance (the program keeps using them).
    pub fn take_maps(&mut self) -> anyhow::Result<Maps> {
        Maps::from_source(|name| {
            self.ebpf
                .take_map(names::in_object(name))
                .ok_or_else(|| anyhow!("the object has no map {name}"))
        })
    }

    /// Takes the `TRACE` map (only meaningful when loaded with `trace`).
    pub fn take_trace(&mut self) -> anyhow::Result<Array<MapData, Trace>> {
        let map = self
            .ebpf
            .take_map(names::TRACE)
            .ok_or_else(|| anyhow!("the object has no map TRACE"))?;
        Ok(Array::try_from(map)?)
    }
}

/// The control record pinned in `dir`, if there is one.
fn pinned_control(dir: &Path) -> anyhow::Result<Option<Control>> {
    let path = dir.join(names::CONTROL);
    if !path.exists() {
        return Ok(None);
    }
    let read = || -> anyhow::Result<Control> {
        let map: Array<MapData, Control> =
            Array::try_from(Map::from_map_data(MapData::from_pin(&path)?)?)?;
        Ok(map.get(&0, 0)?)
    };
    read()
        .map(Some)
        .with_context(|| format!("reading the pinned control record {}", path.display()))
}

/// Loads the empty XDP program.
pub fn load_empty() -> anyhow::Result<Ebpf> {
    let mut ebpf = Ebpf::load(EMPTY_OBJECT).context("loading the empty object")?;
    let prog: &mut Xdp = ebpf
        .program_mut(EMPTY_PROGRAM)
        .ok_or_else(|| anyhow!("the object has no program {EMPTY_PROGRAM}"))?
        .try_into()?;
    prog.load().map_err(|e| rejected(EMPTY_PROGRAM, e))?;
    Ok(ebpf)
}

/// Lines of the verifier's log a rejection shows (the full log goes to a file).
const LOG_TAIL: usize = 25;

/// The error for program `name` that the kernel would not load. On a kernel that passed
/// `probe::require` a verifier rejection is a bug of the filter: the error names the program and
/// the kernel, shows the last lines of the verifier's log (where it says why), and writes the
/// full log to a file it names.
fn rejected(name: &str, e: aya::programs::ProgramError) -> anyhow::Error {
    let aya::programs::ProgramError::LoadError {
        io_error,
        verifier_log,
    } = e
    else {
        return anyhow::Error::new(e).context(format!("loading program {name}"));
    };
    let log = verifier_log.to_string();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n");
    let path = std::env::temp_dir().join(format!(
        "gateway-verifier-{name}-{}.log",
        std::process::id()
    ));
    let saved = match std::fs::write(&path, &log) {
        Ok(()) => format!(
            "the full verifier log ({} lines): {}",
            lines.len(),
            path.display()
        ),
        Err(err) => format!(
            "the full verifier log could not be written to {}: {err}",
            path.display()
        ),
    };
    anyhow!(
        "program {name}: kernel {} rejected it ({io_error}); this is a bug of the filter, please report it with the log\n{tail}\n{saved}",
        probe::release()
    )
}

/// Checks that the pinned maps in `dir` have the layout this build expects. Returns the names of
/// those that do not (they must be replaced; their counters are lost).
pub fn incompatible_pins(
    dir: &Path,
    domain_buckets: u32,
    tls_flows: u32,
) -> anyhow::Result<Vec<String>> {
    let object = aya_obj::Object::parse(FILTER_OBJECT)
        .map_err(|e| anyhow!("parsing the filter object: {e}"))?;
    let mut bad = Vec::new();
    for name in names::PINNED {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let def = object
            .maps
            .get(names::in_object(name))
            .ok_or_else(|| anyhow!("the object has no map {name}"))?;
        let compatible = match MapData::from_pin(&path).and_then(|m| m.info()) {
            Ok(info) => {
                info.key_size() == def.key_size()
                    && info.value_size() == def.value_size()
                    && info.max_entries()
                        == match *name {
                            names::DOMAINS => 2 * domain_buckets,
                            names::FLOWS => tls_flows.max(1),
                            _ => def.max_entries(),
                        }
                    && info.map_flags() == def.map_flags()
            }
            Err(_) => false,
        };
        if !compatible {
            bad.push((*name).to_string());
        }
    }
    if bad.is_empty() && dir.join(names::META).exists() {
        let meta: Array<MapData, Meta> = Array::try_from(Map::from_map_data(MapData::from_pin(
            dir.join(names::META),
        )?)?)?;
        let m = meta.get(&0, 0)?;
        if m.abi_version != gateway_common::maps::ABI_VERSION {
            // Same sizes, different meaning: replace the whole set.
            bad = names::PINNED
                .iter()
                .filter(|n| dir.join(n).exists())
                .map(|n| (*n).to_string())
                .collect();
        }
    }
    Ok(bad)
}
