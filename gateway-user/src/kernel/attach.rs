//! Attaching the filter to interfaces, pinning everything, adopting what a previous daemon
//! pinned, and removing it all.
//!
//! Layout under the bpffs directory:
//! ```text
//! maps/<NAME>              every shared map (counters, identities, policies)
//! programs/<link>          the filter loaded for each link type in use
//! programs/<link>-progs    its program array: the DNS and TLS programs it tail-calls
//! links/<interface>        the XDP link of each interface
//! ```
//! Links are bpf_links: they stay attached as long as their pin exists, whatever happens to the
//! daemon. A new daemon replaces the program inside an existing link atomically
//! (`bpf_link_update`), so there is no moment without a filter. The program arrays are pinned
//! because the kernel empties one when nothing refers to it from user space: unpinned, the
//! filter would stop judging DNS and TLS when the daemon exits. A new daemon pins its arrays
//! beside the running ones (`<link>-progs-<boot ns>`; bpffs refuses dots in names) before it
//! attaches, and renames them over the old ones after, so neither filter is ever without its
//! array; what a start that failed half-way left is removed once a later start has attached.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use aya::programs::{
    XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use gateway_common::{
    enums::{AttachMode, LinkType},
    maps::{ABI_VERSION, IfaceInfo, MAX_IFACES, Meta},
};

use super::{Applied, Applier, Filter, LoadOptions, Maps, counters, incompatible_pins, sys};
use crate::config::{Config, Interface, LinkSetting};

/// Paths under the bpffs directory.
#[derive(Debug, Clone)]
pub struct Pins {
    pub root: PathBuf,
}

impl Pins {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    pub fn link(&self, iface: &str) -> PathBuf {
        self.links().join(iface)
    }
    pub fn programs(&self) -> PathBuf {
        self.root.join("programs")
    }
    pub fn program(&self, link: LinkType) -> PathBuf {
        self.programs().join(link.label())
    }
    /// The program array of `program(link)`.
    pub fn tail_calls(&self, link: LinkType) -> PathBuf {
        self.programs().join(format!("{}-progs", link.label()))
    }
    /// Where a daemon starting at `stamp` (boot-clock ns) pins its program array until its
    /// filter is attached: a name of its own, since a link may still run the filter of a start
    /// that failed after attaching.
    fn tail_calls_staged(&self, link: LinkType, stamp: u64) -> PathBuf {
        self.programs()
            .join(format!("{}-progs-{stamp}", link.label()))
    }
    /// Program arrays of `link` pinned by starts that failed before renaming theirs.
    fn tail_calls_left_over(&self, link: LinkType) -> Vec<PathBuf> {
        let prefix = format!("{}-progs-", link.label());
        std::fs::read_dir(self.programs())
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }
    /// Interfaces that have a pinned link.
    pub fn linked_interfaces(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.links())
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

/// One interface the filter runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub link: LinkType,
    pub mode: AttachMode,
    /// The link existed (pinned by an earlier daemon) and got the new program atomically.
    pub adopted: bool,
}

/// The filter, loaded and attached: what a running daemon holds.
pub struct Running {
    pub pins: Pins,
    pub maps: Maps,
    pub filters: BTreeMap<LinkType, Filter>,
    pub attachments: Vec<Attachment>,
    pub applied: Applied,
    /// Writes configurations into `maps`, each as the difference to the last.
    pub applier: Applier,
    /// The device slots the pinned maps recorded before this start applied its configuration
    /// (slot -> name; empty for new maps): the filter's decisions before the start carry them.
    pub previous_slots: BTreeMap<u32, String>,
}

/// The link type an interface is parsed as.
pub fn link_type(iface: &Interface) -> anyhow::Result<LinkType> {
    match iface.link {
        LinkSetting::Ethernet => Ok(LinkType::Ethernet),
        LinkSetting::RawIp => Ok(LinkType::RawIp),
        LinkSetting::Auto => sys::detect_link(&iface.name),
    }
}

/// Loads (or adopts) the pinned filter, writes `config` into it, and attaches it to
/// `interfaces`. Interfaces that a previous run attached to but that are no longer listed are
/// detached.
pub fn start(
    config: &Config,
    interfaces: &[Interface],
    kernel_log: bool,
) -> anyhow::Result<Running> {
    if interfaces.is_empty() {
        bail!(
            "no interfaces to attach to: give --iface NAME or [[interface]] in the configuration"
        );
    }
    let pins = Pins::new(&config.bpffs);
    sys::ensure_bpffs(&pins.root)?;
    for dir in [pins.maps(), pins.links(), pins.programs()] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let domain_buckets = crate::config::domain_buckets(config.max_domains);
    for name in incompatible_pins(&pins.maps(), domain_buckets, config.max_tls_flows)? {
        tracing::warn!(map = %name, "pinned map has another layout (older version?); replacing it, its contents are lost");
        std::fs::remove_file(pins.maps().join(&name))
            .with_context(|| format!("removing stale pin {name}"))?;
    }

    let mut wanted: Vec<(Interface, LinkType)> = Vec::new();
    for iface in interfaces {
        sys::ifindex(&iface.name)?;
        wanted.push((iface.clone(), link_type(iface)?));
    }
    let mut filters: BTreeMap<LinkType, Filter> = BTreeMap::new();
    for (_, link) in &wanted {
        if !filters.contains_key(link) {
            let opts = LoadOptions {
                link: *link,
                map_pins: Some(pins.maps()),
                trace: false,
                kernel_log,
                domain_buckets,
                tls_flows: config.max_tls_flows,
            };
            filters.insert(*link, Filter::load(&opts)?);
        }
    }
    let mut maps = match filters.values_mut().next() {
        Some(f) => f.take_maps()?,
        None => bail!("no filter loaded"),
    };
    let meta = maps.meta.get(&0, 0)?;
    if meta.abi_version == 0 {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        maps.meta.set(
            0,
            Meta {
                abi_version: ABI_VERSION,
                created,
            },
            0,
        )?;
        tracing::info!(dir = %pins.maps().display(), "created the pinned maps");
    } else {
        tracing::info!(dir = %pins.maps().display(), "adopted the pinned maps; counters continue");
    }

    let previous_slots = counters::device_slots(&maps)?;
    let mut applier = Applier::default();
    let applied = applier.apply(&mut maps, config)?;

    // Pinned before attaching: from the moment a link runs this filter, its array outlives us.
    let stamp = sys::boot_ns();
    for (link, filter) in &filters {
        filter.pin_tail_calls(&pins.tail_calls_staged(*link, stamp))?;
    }
    let mut attachments = Vec::new();
    for (iface, link) in &wanted {
        let filter = filters.get_mut(link).context("filter for link type")?;
        let a = attach_one(filter, &pins, iface, &maps)?;
        attachments.push(a);
    }
    for (link, filter) in &mut filters {
        let path = pins.program(*link);
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing old program pin {}", path.display()))?;
        }
        filter
            .program()?
            .pin(&path)
            .with_context(|| format!("pinning program {}", path.display()))?;
        // Replaces the previous filter's array, which no attached program uses any more, and
        // drops any that failed starts left.
        let (staged, tail_calls) = (pins.tail_calls_staged(*link, stamp), pins.tail_calls(*link));
        std::fs::rename(&staged, &tail_calls).with_context(|| {
            format!("renaming {} to {}", staged.display(), tail_calls.display())
        })?;
        for left in pins.tail_calls_left_over(*link) {
            std::fs::remove_file(&left).with_context(|| format!("removing {}", left.display()))?;
            tracing::info!(pin = %left.display(), "removed the program array of an earlier failed start");
        }
    }
    record_interfaces(&mut maps, &attachments)?;

    for stale in pins.linked_interfaces() {
        if !attachments.iter().any(|a| a.iface == stale) {
            sys::force_detach_link(&pins.link(&stale))?;
            tracing::info!(iface = %stale, "detached: no longer configured");
        }
    }
    Ok(Running {
        pins,
        maps,
        filters,
        attachments,
        applied,
        applier,
        previous_slots,
    })
}

fn attach_one(
    filter: &mut Filter,
    pins: &Pins,
    iface: &Interface,
    maps: &Maps,
) -> anyhow::Result<Attachment> {
    let link = filter.link;
    let ifindex = sys::ifindex(&iface.name)?;
    let pin = pins.link(&iface.name);
    let prog = filter.program()?;

    if pin.exists() {
        let adopted = PinnedLink::from_pin(&pin)
            .map_err(anyhow::Error::from)
            .and_then(|p| Ok(XdpLink::try_from(FdLink::from(p))?))
            .and_then(|l| Ok(prog.attach_to_link(l)?));
        match adopted {
            Ok(id) => {
                // The pin keeps the link; drop our handle without detaching.
                drop(prog.take_link(id)?);
                let mode = recorded_mode(maps, ifindex).unwrap_or(AttachMode::Unknown);
                tracing::info!(iface = %iface.name, link = link.label(), mode = mode.label(), "replaced the program of the pinned link");
                return Ok(Attachment {
                    iface: iface.name.clone(),
                    ifindex,
                    link,
                    mode,
                    adopted: true,
                });
            }
            Err(e) => {
                tracing::warn!(iface = %iface.name, error = %e, "pinned link is unusable (interface recreated?); attaching anew");
                std::fs::remove_file(&pin)
                    .with_context(|| format!("removing {}", pin.display()))?;
            }
        }
    }

    let (id, mode) = match prog.attach(&iface.name, XdpMode::Driver) {
        Ok(id) => (id, AttachMode::Native),
        Err(native) => {
            let id = prog.attach(&iface.name, XdpMode::Skb).with_context(|| {
                format!(
                    "attaching to {} (native mode failed first: {native})",
                    iface.name
                )
            })?;
            tracing::warn!(iface = %iface.name, reason = %native, "native XDP unavailable; using generic (skb) mode");
            (id, AttachMode::Generic)
        }
    };
    let fd_link = FdLink::try_from(prog.take_link(id)?).context("XDP link is not a bpf_link")?;
    fd_link
        .pin(&pin)
        .with_context(|| format!("pinning link {}", pin.display()))?;
    tracing::info!(iface = %iface.name, link = link.label(), mode = mode.label(), "attached");
    Ok(Attachment {
        iface: iface.name.clone(),
        ifindex,
        link,
        mode,
        adopted: false,
    })
}

fn recorded_mode(maps: &Maps, ifindex: u32) -> Option<AttachMode> {
    (0..MAX_IFACES)
        .filter_map(|i| maps.ifaces.get(&i, 0).ok())
        .find(|info| info.ifindex == ifindex)
        .and_then(|info| AttachMode::from_u32(info.mode))
}

fn record_interfaces(maps: &mut Maps, attachments: &[Attachment]) -> anyhow::Result<()> {
    for i in 0..MAX_IFACES {
        let info = match attachments.get(i as usize) {
            Some(a) => {
                let mut name = [0u8; 16];
                let bytes = a.iface.as_bytes();
                let n = bytes.len().min(15);
                name[..n].copy_from_slice(&bytes[..n]);
                IfaceInfo {
                    ifindex: a.ifindex,
                    link: a.link as u32,
                    mode: a.mode as u32,
                    _pad: 0,
                    name,
                }
            }
            None => IfaceInfo::default(),
        };
        maps.ifaces.set(i, info, 0)?;
    }
    Ok(())
}

/// What `detach_all` removed.
#[derive(Debug, Default, serde::Serialize)]
pub struct DetachReport {
    pub links: Vec<String>,
    pub pins_removed: usize,
}

/// Detaches every interface and removes every pin under `root` (and `root` itself).
pub fn detach_all(root: &Path) -> anyhow::Result<DetachReport> {
    let pins = Pins::new(root);
    let mut report = DetachReport::default();
    if !root.exists() {
        return Ok(report);
    }
    for iface in pins.linked_interfaces() {
        sys::force_detach_link(&pins.link(&iface))?;
        report.links.push(iface);
    }
    for dir in [pins.links(), pins.programs(), pins.maps()] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for entry in rd.filter_map(Result::ok) {
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
                report.pins_removed += 1;
            }
        }
        if dir.exists() {
            std::fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    std::fs::remove_dir(root).with_context(|| {
        format!(
            "removing {} (does it hold files gateway did not create?)",
            root.display()
        )
    })?;
    Ok(report)
}
