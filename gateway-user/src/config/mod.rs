//! The configuration: `gateway.toml`, its inventories and lists, typed and validated with every
//! error located (file, line, column), and compiled into what a generation of the kernel maps
//! must hold. Imports only the leaves (`crate::BadInput`, `crate::secret`) and gateway-common.
//!
//! Parsing is two steps. `serde` turns the text into the `Raw*` structs (`raw`: syntax, types,
//! unknown keys, located by the TOML parser). `validate` then checks what types cannot say
//! (names that must exist, addresses that must parse and be unique) and builds a `Config`;
//! each of those errors is located with the span `toml` recorded for the offending value. All
//! errors are reported, not just the first.

pub mod bundle;
mod compile;
mod devices;
pub mod fleet;
mod images;
mod inventory;
pub mod lists;
mod locate;
mod policy;
mod raw;
pub mod remote;
pub mod safe_search;
mod sections;
pub mod telemetry;
#[cfg(test)]
mod tests;
mod validate;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::BadInput;

pub use crate::errors::{ConfigError, ConfigErrors};
pub use compile::{Changed, Desired, DomainRules, domain_buckets};
pub use devices::{display_addr, mapped, parse_cidr, parse_mac};
pub use images::{Images, Previous, build_images};
pub use lists::{Domains, ListStats, parse_text as parse_list};
pub use policy::{
    AllowBlock, BlockedPort, DnsBlockAnswer, HttpsRecords, LogLevel, Policy, TlsBlockAnswer, Window,
};
pub use sections::*;

use devices::mask;
use locate::Locator;
use raw::RawConfig;
use validate::validate;

/// Where `gateway` looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/gateway/gateway.toml";
/// The configuration used when there is no file: no devices, every device gets the allow-all
/// `default` policy. Filtering starts once devices and policies are configured.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");
/// Where pins live unless `[gateway] bpffs` says otherwise.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/gateway";
/// The policy name devices in no inventory get unless `[gateway] unknown_devices` says otherwise.
pub const DEFAULT_POLICY: &str = "default";

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from (`<embedded default>` for the built-in one).
    pub source: PathBuf,
    pub mode: Mode,
    pub bpffs: PathBuf,
    pub interfaces: Vec<Interface>,
    /// Categories; a category's id is its index (at most 64).
    pub categories: Vec<Category>,
    /// Policies; a policy's id is its index. The `unknown_devices` policy always exists.
    pub policies: Vec<Policy>,
    /// Domain-table capacity per generation (`[gateway] max_domains`).
    pub max_domains: u32,
    /// Capacity of the TLS flow table (`[gateway] max_tls_flows`).
    pub max_tls_flows: u32,
    /// TCP ports whose ClientHellos are inspected (`[gateway] tls_ports`, default 443).
    pub tls_ports: BTreeSet<u16>,
    /// TCP ports whose requests are read as plain HTTP (`[gateway] http_ports`, default 80;
    /// empty: none).
    pub http_ports: BTreeSet<u16>,
    /// `[safe_search]`: the engines policies may switch on, and the resolver of their
    /// enforcement names.
    pub safe_search: safe_search::SafeSearch,
    /// The time zone of schedules (`[gateway] timezone`; the system's if not given).
    pub timezone: jiff::tz::TimeZone,
    /// The files it was read from: itself, its inventories and list files (for a list by URL,
    /// its cached copy).
    pub files: Vec<PathBuf>,
    /// Lists by URL, each once: what the daemon downloads.
    pub remote_lists: Vec<remote::RemoteList>,
    /// Id of the policy for devices in no inventory.
    pub unknown_policy: usize,
    pub devices: Vec<Device>,
    /// Where the history database and the pseudonymisation key live (`[gateway] state_dir`).
    pub state_dir: PathBuf,
    pub api: Api,
    pub history: History,
    pub lifecycle: Lifecycle,
    /// `[fleet]`: the policy comes from a signed bundle (`bundle`).
    pub fleet: Option<fleet::Fleet>,
    /// `[telemetry]`: metrics pushed by remote-write.
    pub telemetry: Option<telemetry::Telemetry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub link: LinkSetting,
}

/// A named domain set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Category {
    pub name: String,
    /// What each list file holds, in order, then the inline domains. Shared: a list file that
    /// did not change since the last load is the same `Arc`, which lets `apply` skip it.
    pub sources: Vec<Arc<Domains>>,
    /// One entry per list file.
    pub lists: Vec<ListStats>,
    /// The list files as read, when `$badfilter` or `$important` rules of one list changed
    /// another (`lists::across`): kept so that the parsed files stay shared across reloads.
    pub as_read: Vec<Arc<Domains>>,
}

impl Category {
    /// A category of exactly `domains` (no list files).
    pub fn with_domains(name: &str, domains: Domains) -> Self {
        Self {
            name: name.to_string(),
            sources: vec![Arc::new(domains)],
            lists: Vec::new(),
            as_read: Vec::new(),
        }
    }

    /// Whether some source blocks the name `domain` itself.
    pub fn blocks(&self, domain: &str) -> bool {
        self.sources.iter().any(|s| s.rules_of(domain)[0].0)
    }

    /// Whether some source excepts the name `domain` itself (`@@||domain^`).
    pub fn allows(&self, domain: &str) -> bool {
        self.sources.iter().any(|s| s.rules_of(domain)[0].1)
    }

    /// Distinct names blocked, and distinct names excepted (whatever the scope).
    pub fn counts(&self) -> (usize, usize) {
        let distinct = |pick: fn(&Domains) -> [&BTreeSet<String>; 3]| match self.sources.as_slice()
        {
            [one] => pick(one).iter().map(|s| s.len()).sum(),
            many => many
                .iter()
                .flat_map(|s| pick(s).into_iter().flatten())
                .collect::<std::collections::HashSet<_>>()
                .len(),
        };
        (
            distinct(|d| [&d.block, &d.exact.block, &d.below.block]),
            distinct(|d| [&d.allow, &d.exact.allow, &d.below.allow]),
        )
    }
}

/// The TCP port whose ClientHellos are inspected unless `[gateway] tls_ports` says otherwise.
pub const DEFAULT_TLS_PORT: u16 = 443;
/// The TCP port whose requests are read as plain HTTP unless `[gateway] http_ports` says
/// otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 80;

/// Domain-table capacity unless `[gateway] max_domains` says otherwise.
pub const DEFAULT_MAX_DOMAINS: u32 = 262_144;

/// TTL of sinkhole answers unless `block_ttl` says otherwise.
pub const DEFAULT_BLOCK_TTL: u32 = 300;
/// The built-in category of DoH endpoints.
pub const DNS_BYPASS_CATEGORY: &str = "dns-bypass";
/// Most categories (bits of a u64).
pub const MAX_CATEGORIES: usize = 64;

/// An address range: an IPv4-mapped or IPv6 network address and its prefix length in IPv6 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: [u8; 16],
    pub prefix: u8,
}

impl Cidr {
    /// The network of the first `prefix` bits.
    fn truncated(&self, prefix: u8) -> Self {
        Self {
            addr: mask(&self.addr, prefix),
            prefix,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = std::net::Ipv6Addr::from(self.addr);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.prefix >= 96 => write!(f, "{v4}/{}", self.prefix - 96),
            _ => write!(f, "{v6}/{}", self.prefix),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub macs: Vec<[u8; 6]>,
    /// IPv4 addresses are IPv4-mapped.
    pub ips: Vec<[u8; 16]>,
    pub cidrs: Vec<Cidr>,
    pub policy: usize,
    pub suspended: bool,
    /// Free metadata (imei, mdn, iccid, nickname, type, notes) for finding the device.
    pub metadata: BTreeMap<String, String>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BadInput(format!("{}: cannot read: {e}", path.display())))?;
        Ok(Self::parse(&text, path)?)
    }

    /// The embedded default configuration.
    pub fn embedded() -> Result<Self, ConfigErrors> {
        Self::parse(EMBEDDED_DEFAULT, Path::new("<embedded default>"))
    }

    /// `path` if given; else the default path if that file exists; else the embedded default.
    pub fn resolve(path: Option<&Path>) -> anyhow::Result<Self> {
        match path {
            Some(p) => Self::load(p),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::load(Path::new(DEFAULT_CONFIG_PATH))
            }
            None => {
                tracing::info!(
                    "no --config and no {DEFAULT_CONFIG_PATH}: using the embedded default"
                );
                Ok(Self::embedded()?)
            }
        }
    }

    /// Only the bpffs directory of the configuration at `path` (or of the embedded default):
    /// what `detach` and `stats` need. Deliberately lenient: a configuration that fails
    /// validation must not stop an operator from inspecting or removing the filter. Only a file
    /// that is not TOML at all (so the directory cannot be known) is an error.
    pub fn bpffs_of(path: Option<&Path>) -> anyhow::Result<PathBuf> {
        let (text, file) = match path {
            Some(p) => (
                std::fs::read_to_string(p)
                    .map_err(|e| BadInput(format!("{}: cannot read: {e}", p.display())))?,
                p.to_path_buf(),
            ),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                (
                    std::fs::read_to_string(p)
                        .map_err(|e| BadInput(format!("{}: cannot read: {e}", p.display())))?,
                    p.to_path_buf(),
                )
            }
            None => return Ok(PathBuf::from(DEFAULT_BPFFS)),
        };
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            ConfigErrors(vec![
                Locator::new(&text, &file).error(at, e.message().to_string()),
            ])
        })?;
        match table.get("gateway").and_then(|g| g.get("bpffs")) {
            Some(toml::Value::String(s)) if Path::new(s).is_absolute() => Ok(PathBuf::from(s)),
            Some(other) => Err(BadInput(format!(
                "{}: [gateway] bpffs = {other} is not an absolute path",
                file.display()
            ))
            .into()),
            None => Ok(PathBuf::from(DEFAULT_BPFFS)),
        }
    }

    /// Validates `text`, reporting errors against `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigErrors> {
        let locate = Locator::new(text, file);
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            ConfigErrors(vec![locate.error(at, e.message().to_string())])
        })?;
        validate(raw, &locate)
    }

    /// The policy in force for a device of policy `policy` at `now`: the first of its schedule's
    /// windows that contains the local time, else its own.
    pub fn effective_policy(&self, policy: usize, now: jiff::Timestamp) -> usize {
        self.policy_at(policy, self.local_time(now))
    }

    /// The policy in force for every device at `now`, in device order.
    pub fn effective_policies(&self, now: jiff::Timestamp) -> Vec<usize> {
        let own: Vec<usize> = self.devices.iter().map(|d| d.policy).collect();
        self.policies_in_force(&own, now)
    }

    /// The policy in force at `now` for each of `policies` (schedules), the local time
    /// computed once.
    pub fn policies_in_force(&self, policies: &[usize], now: jiff::Timestamp) -> Vec<usize> {
        let at = self.local_time(now);
        policies.iter().map(|p| self.policy_at(*p, at)).collect()
    }

    /// Weekday (0 = Monday) and minute of the day at `now` in the configured time zone.
    fn local_time(&self, now: jiff::Timestamp) -> (u8, u16) {
        let local = now.to_zoned(self.timezone.clone()).datetime();
        (
            local.weekday().to_monday_zero_offset() as u8,
            local.hour() as u16 * 60 + local.minute() as u16,
        )
    }

    fn policy_at(&self, policy: usize, (weekday, minute): (u8, u16)) -> usize {
        self.policies
            .get(policy)
            .and_then(|p| p.schedule.iter().find(|w| w.contains(weekday, minute)))
            .map_or(policy, |w| w.policy)
    }

    /// The id of the policy called `name`.
    pub fn policy_id(&self, name: &str) -> Option<usize> {
        self.policies.iter().position(|p| p.name == name)
    }

    /// The categories' names, in the order that numbers them in the kernel.
    pub fn category_names(&self) -> Vec<String> {
        self.categories.iter().map(|c| c.name.clone()).collect()
    }

    /// The policies' names, in the order that numbers them in the kernel.
    pub fn policy_names(&self) -> Vec<String> {
        self.policies.iter().map(|p| p.name.clone()).collect()
    }

    /// Numbers the categories as `previous` (the names in force, by number) did, so that the
    /// kernel's decision counters, which keep a category's number, keep its name across a
    /// reload or a restart: a category keeps its number; a new one takes the next number after
    /// all of them; a number whose category is gone keeps that name, with no domains (no
    /// policy refers to it), for the counts made under it. Policies' category bits follow.
    /// Only when the numbers would pass `MAX_CATEGORIES` does a new category take a gone one's
    /// number: those are returned, (gone, new), for the counts made under the gone one are
    /// now shown under the new one.
    pub fn keep_category_numbers(&mut self, previous: &[String]) -> Vec<(String, String)> {
        let mut reused = Vec::new();
        let distinct: BTreeSet<&String> = previous.iter().collect();
        if distinct.len() != previous.len()
            || previous.iter().any(String::is_empty)
            || previous.len() > MAX_CATEGORIES
        {
            // Not a numbering this daemon wrote: nothing to keep.
            return reused;
        }
        // Number -> the category's index in the file (`None`: gone, named in `previous`).
        let mut slots: Vec<Option<usize>> = previous
            .iter()
            .map(|name| self.categories.iter().position(|c| &c.name == name))
            .collect();
        for (i, c) in self.categories.iter().enumerate() {
            if slots.contains(&Some(i)) {
                continue;
            }
            // A gone category's number, only when there is no other (the file itself has at
            // most MAX_CATEGORIES categories, so one is found).
            let gone = if slots.len() >= MAX_CATEGORIES {
                slots.iter().position(Option::is_none)
            } else {
                None
            };
            match gone {
                Some(n) => {
                    reused.push((previous.get(n).cloned().unwrap_or_default(), c.name.clone()));
                    slots[n] = Some(i);
                }
                None => slots.push(Some(i)),
            }
        }
        // File index -> number; policies' bits follow.
        let mut number = vec![0usize; self.categories.len()];
        for (n, slot) in slots.iter().enumerate() {
            if let Some(to) = slot.and_then(|i| number.get_mut(i)) {
                *to = n;
            }
        }
        for p in &mut self.policies {
            let bits = p.block_categories;
            p.block_categories = number
                .iter()
                .enumerate()
                .filter(|(i, _)| bits & (1u64 << (i & 63)) != 0)
                .fold(0, |acc, (_, n)| acc | 1u64 << (n & 63));
        }
        let mut file: Vec<Option<Category>> = std::mem::take(&mut self.categories)
            .into_iter()
            .map(Some)
            .collect();
        self.categories = slots
            .iter()
            .enumerate()
            .map(|(n, slot)| {
                slot.and_then(|i| file.get_mut(i)?.take())
                    .unwrap_or_else(|| Category {
                        name: previous.get(n).cloned().unwrap_or_default(),
                        sources: Vec::new(),
                        lists: Vec::new(),
                        as_read: Vec::new(),
                    })
            })
            .collect();
        reused
    }
}
