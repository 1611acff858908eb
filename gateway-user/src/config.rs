//! `gateway.toml`: typed, validated, with every error located (file, line, column).
//!
//! Parsing is two steps. `serde` turns the text into the `Raw*` structs (syntax, types, unknown
//! keys: located by the TOML parser). `validate` then checks what types cannot say (names that
//! must exist, addresses that must parse and be unique) and builds a `Config`; each of those
//! errors is located with the span `toml` recorded for the offending value. All errors are
//! reported, not just the first.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use gateway_common::maps::{
    DeviceName, MAX_CIDR_IDS, MAX_DEVICES, MAX_IP_IDS, MAX_MAC_IDS, MAX_POLICIES,
};
use serde::Deserialize;
use toml::Spanned;

use crate::{
    BadInput,
    lists::{self, Domains, ListStats},
};

/// Where `gateway` looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/gateway/gateway.toml";
/// The configuration used when there is no file: no devices, every device gets the allow-all
/// `default` policy. Filtering starts once devices and policies are configured.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");
/// Where pins live unless `[gateway] bpffs` says otherwise.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/gateway";
/// The policy name devices in no inventory get unless `[gateway] unknown_devices` says otherwise.
pub const DEFAULT_POLICY: &str = "default";

/// One located problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found in a configuration; it is rejected as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// `enforce` or `monitor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

/// `link` of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkSetting {
    /// Detect from the interface's ARPHRD type.
    #[default]
    Auto,
    Ethernet,
    RawIp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    gateway: RawGateway,
    #[serde(default, rename = "interface")]
    interfaces: Vec<RawInterface>,
    #[serde(default, rename = "category")]
    categories: Vec<RawCategory>,
    #[serde(default, rename = "policy")]
    policies: Vec<RawPolicy>,
    #[serde(default, rename = "device")]
    devices: Vec<RawDevice>,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    history: RawHistory,
    #[serde(default)]
    lifecycle: RawLifecycle,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifecycle {
    hold_checked_in: Option<bool>,
    overdue: Option<Overdue>,
}

/// What happens to a device whose checkout is past due (`[lifecycle] overdue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overdue {
    /// Shown as overdue (API, `gateway devices`), traffic unchanged.
    #[default]
    Flag,
    /// Suspended until checked in (or the due date moves).
    Suspend,
}

/// `[lifecycle]`: checkouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifecycle {
    /// A checked-in device stays suspended until it is checked out again or resumed.
    pub hold_checked_in: bool,
    pub overdue: Overdue,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<Spanned<String>>,
    device_labels: Option<DeviceLabels>,
    token_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHistory {
    enabled: Option<bool>,
    retention_days: Option<Spanned<i64>>,
    max_rows: Option<Spanned<i64>>,
    max_megabytes: Option<Spanned<i64>>,
    pseudonymize: Option<bool>,
}

/// How devices appear in `/metrics` (`[api] device_labels`): aggregates carry no device names
/// unless the operator says so (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceLabels {
    /// A keyed hash of the device name (the history's pseudonym): per-device series, no names.
    #[default]
    Pseudonym,
    /// The device name.
    Name,
    /// No per-device series.
    None,
}

/// `[api]`: the daemon's HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Api {
    pub listen: std::net::SocketAddr,
    pub device_labels: DeviceLabels,
    /// The bearer token of `/api/v1/` (created, mode 0600, if missing).
    pub token_file: PathBuf,
}

/// `[history]`: the decision history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// Whether decision events are stored at all.
    pub enabled: bool,
    /// Rows older than this many days are deleted.
    pub retention_days: u32,
    /// At most this many rows are kept (the oldest deleted first).
    pub max_rows: u64,
    /// The rows take at most this many bytes of the database (the oldest deleted first).
    pub max_bytes: u64,
    /// Store a keyed hash instead of the device name.
    pub pseudonymize: bool,
}

/// The API token file in the state directory unless `[api] token_file` says otherwise.
pub const DEFAULT_TOKEN_FILE: &str = "api.token";
/// Where the daemon's HTTP listener is unless `[api] listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";
/// Where the history and the pseudonymisation key live unless `[gateway] state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gateway";
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
pub const DEFAULT_MAX_ROWS: u64 = 5_000_000;
pub const DEFAULT_MAX_MEGABYTES: u64 = 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    #[serde(default)]
    mode: Mode,
    unknown_devices: Option<Spanned<String>>,
    bpffs: Option<Spanned<PathBuf>>,
    max_domains: Option<Spanned<u32>>,
    max_tls_flows: Option<Spanned<u32>>,
    tls_ports: Option<Spanned<Vec<Spanned<i64>>>>,
    #[serde(default)]
    inventories: Vec<Spanned<PathBuf>>,
    timezone: Option<Spanned<String>>,
    state_dir: Option<Spanned<PathBuf>>,
}

/// One `schedule` window of a policy, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    days: Spanned<String>,
    from: Spanned<String>,
    to: Spanned<String>,
    policy: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCategory {
    name: Spanned<String>,
    #[serde(default)]
    lists: Vec<Spanned<PathBuf>>,
    #[serde(default)]
    domains: Vec<Spanned<String>>,
}

/// `allow` or `block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowBlock {
    Allow,
    Block,
}

/// `log`: which decisions of a policy leave a decision event (history, logs). Counters count
/// every decision whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    #[default]
    All,
    Blocked,
    None,
}

/// `tls_block_answer`: how a blocked ClientHello is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsBlockAnswer {
    /// A TCP reset to the device, built in the kernel; the segment dropped.
    Rst,
    /// The segment dropped.
    Drop,
}

/// A transport port a policy blocks (`block_ports = ["853/tcp"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockedPort {
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    pub port: u16,
}

impl std::str::FromStr for BlockedPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (port, proto) = s
            .split_once('/')
            .ok_or_else(|| "expected PORT/tcp or PORT/udp".to_string())?;
        let proto = match proto {
            "tcp" => gateway_common::packet::IPPROTO_TCP,
            "udp" => gateway_common::packet::IPPROTO_UDP,
            other => {
                return Err(format!(
                    "unknown transport \"{other}\" (expected tcp or udp)"
                ));
            }
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("\"{port}\" is not a port (1-65535)"))?;
        Ok(Self { proto, port })
    }
}

/// `https_records`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpsRecords {
    Allow,
    Empty,
}

/// `dns_block_answer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsBlockAnswer {
    Nxdomain,
    Refused,
    Sinkhole,
    Drop,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Spanned<String>,
    #[serde(default)]
    link: LinkSetting,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Spanned<String>,
    mode: Option<Mode>,
    #[serde(default)]
    block_categories: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    block: Vec<Spanned<String>>,
    #[serde(default)]
    allow_lists: Vec<Spanned<PathBuf>>,
    #[serde(default)]
    block_lists: Vec<Spanned<PathBuf>>,
    default: Option<AllowBlock>,
    https_records: Option<HttpsRecords>,
    dns_block_answer: Option<DnsBlockAnswer>,
    on_parse_error: Option<AllowBlock>,
    tls_block_answer: Option<TlsBlockAnswer>,
    log: Option<LogLevel>,
    #[serde(default)]
    schedule: Vec<Spanned<RawWindow>>,
    on_unparsed_tls: Option<AllowBlock>,
    quic: Option<AllowBlock>,
    #[serde(default)]
    block_ports: Vec<Spanned<String>>,
    sinkhole_ipv4: Option<Spanned<String>>,
    sinkhole_ipv6: Option<Spanned<String>>,
    block_ttl: Option<u32>,
}

/// A string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<&str> {
        match self {
            Self::One(s) => vec![s.as_str()],
            Self::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: Spanned<String>,
    mac: Option<Spanned<OneOrMany>>,
    ip: Option<Spanned<OneOrMany>>,
    cidr: Option<Spanned<OneOrMany>>,
    policy: Spanned<String>,
    #[serde(default)]
    suspended: bool,
    imei: Option<String>,
    mdn: Option<String>,
    iccid: Option<String>,
    nickname: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    notes: Option<String>,
}

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
    /// The time zone of schedules (`[gateway] timezone`; the system's if not given).
    pub timezone: jiff::tz::TimeZone,
    /// The files it was read from: itself, its inventories and list files.
    pub files: Vec<PathBuf>,
    /// Id of the policy for devices in no inventory.
    pub unknown_policy: usize,
    pub devices: Vec<Device>,
    /// Where the history database and the pseudonymisation key live (`[gateway] state_dir`).
    pub state_dir: PathBuf,
    pub api: Api,
    pub history: History,
    pub lifecycle: Lifecycle,
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
}

impl Category {
    /// A category of exactly `domains` (no list files).
    pub fn with_domains(name: &str, domains: Domains) -> Self {
        Self {
            name: name.to_string(),
            sources: vec![Arc::new(domains)],
            lists: Vec::new(),
        }
    }

    /// Whether some source blocks `domain`.
    pub fn blocks(&self, domain: &str) -> bool {
        self.sources.iter().any(|s| s.block.contains(domain))
    }

    /// Whether some source excepts `domain` (`@@||domain^`).
    pub fn allows(&self, domain: &str) -> bool {
        self.sources.iter().any(|s| s.allow.contains(domain))
    }

    /// Distinct domains blocked, and distinct exceptions.
    pub fn counts(&self) -> (usize, usize) {
        let distinct = |pick: fn(&Domains) -> &BTreeSet<String>| match self.sources.as_slice() {
            [one] => pick(one).len(),
            many => many
                .iter()
                .flat_map(|s| pick(s).iter())
                .collect::<std::collections::HashSet<_>>()
                .len(),
        };
        (distinct(|d| &d.block), distinct(|d| &d.allow))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    /// The effective mode (the policy's own, else the gateway's).
    pub mode: Mode,
    /// Bit = category id.
    pub block_categories: u64,
    /// Explicit allow and block entries (inline and from `allow_lists`/`block_lists`).
    pub allow: BTreeSet<String>,
    pub block: BTreeSet<String>,
    pub default_block: bool,
    pub https_empty: bool,
    pub dns_answer: DnsBlockAnswer,
    pub parse_error_block: bool,
    pub tls_drop: bool,
    pub log: LogLevel,
    pub unparsed_tls_block: bool,
    pub quic_block: bool,
    pub block_ports: BTreeSet<BlockedPort>,
    pub sinkhole_v4: [u8; 4],
    pub sinkhole_v6: [u8; 16],
    pub block_ttl: u32,
    /// Windows during which another policy applies to this policy's devices; the first that
    /// contains the local time wins.
    pub schedule: Vec<Window>,
}

/// A `schedule` window: on `days` (bit 0 Monday … bit 6 Sunday), from `from` to `to` (minutes
/// after local midnight; a window with `to <= from` runs over midnight into the next day),
/// policy `policy` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub days: u8,
    pub from: u16,
    pub to: u16,
    pub policy: usize,
}

impl Window {
    /// Whether local `time` (weekday 0 = Monday, minute of the day) is inside the window.
    pub fn contains(&self, weekday: u8, minute: u16) -> bool {
        let on = |d: u8| self.days & (1 << (d % 7)) != 0;
        if self.from < self.to {
            on(weekday) && self.from <= minute && minute < self.to
        } else {
            // Over midnight: the evening of a listed day, or the morning after one.
            (on(weekday) && minute >= self.from) || (on(weekday + 6) && minute < self.to)
        }
    }
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `mon-fri`, `sat,sun`, `mon,wed-fri`, `daily`: the day bits.
fn parse_days(s: &str) -> Result<u8, String> {
    let day = |d: &str| {
        WEEKDAYS
            .iter()
            .position(|w| w.eq_ignore_ascii_case(d.trim()))
            .ok_or_else(|| {
                format!(
                    "\"{}\" is not a day (expected mon, tue, wed, thu, fri, sat, sun)",
                    d.trim()
                )
            })
    };
    if s.trim().eq_ignore_ascii_case("daily") {
        return Ok(0x7f);
    }
    let mut bits = 0u8;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    bits |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => bits |= 1 << day(part)?,
        }
    }
    Ok(bits)
}

/// `HH:MM` (00:00 to 24:00) as minutes after midnight.
fn parse_time(s: &str) -> Result<u16, String> {
    let bad = || format!("\"{s}\" is not a time of day (expected HH:MM, 00:00 to 24:00)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl Policy {
    /// A policy with no rules: allows everything.
    pub fn allow_all(name: &str, mode: Mode) -> Self {
        Self {
            name: name.to_string(),
            mode,
            block_categories: 0,
            allow: BTreeSet::new(),
            block: BTreeSet::new(),
            default_block: false,
            https_empty: false,
            dns_answer: DnsBlockAnswer::Nxdomain,
            parse_error_block: false,
            tls_drop: false,
            log: LogLevel::All,
            unparsed_tls_block: false,
            quic_block: false,
            block_ports: BTreeSet::new(),
            sinkhole_v4: [0; 4],
            sinkhole_v6: [0; 16],
            block_ttl: DEFAULT_BLOCK_TTL,
            schedule: Vec::new(),
        }
    }
}

/// The TCP port whose ClientHellos are inspected unless `[gateway] tls_ports` says otherwise.
pub const DEFAULT_TLS_PORT: u16 = 443;

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
                    })
            })
            .collect();
        reused
    }
}

/// An inventory in TOML: `[[device]]` tables, as in gateway.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default, rename = "device")]
    devices: Vec<RawDevice>,
}

/// The columns an inventory in CSV may have (a header row names them, in any order).
const CSV_COLUMNS: &[&str] = &[
    "name",
    "mac",
    "ip",
    "cidr",
    "policy",
    "suspended",
    "imei",
    "mdn",
    "iccid",
    "nickname",
    "type",
    "notes",
];

/// The devices of an inventory file: CSV (by its `.csv` extension) or TOML.
fn inventory_devices(text: &str, loc: &Locator<'_>) -> Result<Vec<RawDevice>, Vec<ConfigError>> {
    let is_csv = loc
        .file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if !is_csv {
        let raw: RawInventory = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            vec![loc.error(at, e.message().to_string())]
        })?;
        return Ok(raw.devices);
    }
    csv_devices(text, loc)
}

/// Byte offsets, within `line`, where each comma-separated field starts (quotes respected).
fn field_starts(line: &str) -> Vec<usize> {
    let mut starts = vec![0];
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => starts.push(i + 1),
            _ => {}
        }
    }
    starts
}

/// The devices of a CSV inventory: a header row naming the columns, then a device per row.
/// Several MACs, addresses or CIDRs in one cell are separated by spaces or `;`.
fn csv_devices(text: &str, loc: &Locator<'_>) -> Result<Vec<RawDevice>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let header_line = text.lines().next().unwrap_or("");
    let header_starts = field_starts(header_line);
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => return Err(vec![loc.error(0, format!("not CSV: {e}"))]),
    };
    let mut column: HashMap<&str, usize> = HashMap::new();
    for (i, h) in headers.iter().enumerate() {
        let at = header_starts.get(i).copied().unwrap_or(0);
        let h = h.trim();
        match CSV_COLUMNS.iter().find(|c| c.eq_ignore_ascii_case(h)) {
            Some(c) => {
                if column.insert(c, i).is_some() {
                    errors.push(loc.error(at, format!("column \"{h}\" appears twice")));
                }
            }
            None => errors.push(loc.error(
                at,
                format!(
                    "unknown column \"{h}\", expected one of {}",
                    CSV_COLUMNS.join(", ")
                ),
            )),
        }
    }
    for required in ["name", "policy"] {
        if !column.contains_key(required) {
            errors.push(loc.error(0, format!("the header row has no \"{required}\" column")));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut devices = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let at = e.position().map_or(0, |p| p.byte() as usize);
                errors.push(loc.error(at, format!("bad row: {e}")));
                continue;
            }
        };
        let Some(position) = record.position() else {
            continue;
        };
        let row_at = position.byte() as usize;
        let line = text
            .get(row_at..)
            .and_then(|t| t.lines().next())
            .unwrap_or("");
        let starts = field_starts(line);
        // The cell of `name` with its span in the file.
        let cell = |name: &str| -> Option<Spanned<String>> {
            let i = *column.get(name)?;
            let value = record.get(i)?.trim();
            if value.is_empty() {
                return None;
            }
            let at = row_at + starts.get(i).copied().unwrap_or(0);
            Some(Spanned::new(at..at + value.len(), value.to_string()))
        };
        let many = |name: &str| -> Option<Spanned<OneOrMany>> {
            let c = cell(name)?;
            let span = c.span();
            let items = c
                .get_ref()
                .split(|ch: char| ch == ';' || ch.is_whitespace())
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect();
            Some(Spanned::new(span, OneOrMany::Many(items)))
        };
        let Some(name) = cell("name") else {
            errors.push(loc.error(row_at, "a row without a name".to_string()));
            continue;
        };
        let Some(policy) = cell("policy") else {
            errors.push(loc.at(&name, format!("device \"{}\": no policy", name.get_ref())));
            continue;
        };
        let suspended = match cell("suspended") {
            None => false,
            Some(v) => match v.get_ref().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => true,
                "false" | "no" | "0" => false,
                other => {
                    errors.push(loc.at(
                        &v,
                        format!(
                            "device \"{}\": suspended \"{other}\" (expected true or false)",
                            name.get_ref()
                        ),
                    ));
                    continue;
                }
            },
        };
        let text_of = |n: &str| cell(n).map(Spanned::into_inner);
        devices.push(RawDevice {
            name,
            mac: many("mac"),
            ip: many("ip"),
            cidr: many("cidr"),
            policy,
            suspended,
            imei: text_of("imei"),
            mdn: text_of("mdn"),
            iccid: text_of("iccid"),
            nickname: text_of("nickname"),
            kind: text_of("type"),
            notes: text_of("notes"),
        });
    }
    if errors.is_empty() {
        Ok(devices)
    } else {
        Err(errors)
    }
}

/// Turns byte offsets into 1-based line and column.
struct Locator<'a> {
    text: &'a str,
    file: PathBuf,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str, file: &Path) -> Self {
        Self {
            text,
            file: file.to_path_buf(),
        }
    }

    fn error(&self, offset: usize, message: String) -> ConfigError {
        let before = self.text.get(..offset.min(self.text.len())).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            message,
        }
    }

    fn at<T>(&self, spanned: &Spanned<T>, message: String) -> ConfigError {
        self.error(spanned.span().start, message)
    }
}

/// The devices read so far (from gateway.toml and the inventories), and which device owns each
/// name, MAC, address and CIDR.
#[derive(Default)]
struct DeviceIndex {
    devices: Vec<Device>,
    names: HashMap<String, usize>,
    macs: HashMap<[u8; 6], String>,
    ips: HashMap<[u8; 16], String>,
    cidrs: HashMap<Cidr, String>,
    /// Where each CIDR was given.
    cidr_at: HashMap<Cidr, ConfigError>,
}

impl DeviceIndex {
    /// Validates one device (`loc` locates it in its file) and adds it, or records why not.
    fn add(
        &mut self,
        d: &RawDevice,
        loc: &Locator<'_>,
        policies: &[Policy],
        errors: &mut Vec<ConfigError>,
    ) {
        let Self {
            devices,
            names,
            macs,
            ips,
            cidrs,
            cidr_at,
        } = self;
        let name = d.name.get_ref();
        if let Err(why) = check_name(name) {
            errors.push(loc.at(&d.name, format!("device name \"{name}\" {why}")));
            return;
        }
        if names.insert(name.clone(), devices.len()).is_some() {
            errors.push(loc.at(&d.name, format!("device \"{name}\" is defined twice")));
            return;
        }
        let policy = match policies.iter().position(|p| &p.name == d.policy.get_ref()) {
            Some(id) => id,
            None => {
                errors.push(loc.at(
                    &d.policy,
                    format!(
                        "device \"{name}\": no policy named \"{}\" (defined: {})",
                        d.policy.get_ref(),
                        list_names(policies)
                    ),
                ));
                0
            }
        };
        let mut dev = Device {
            name: name.clone(),
            macs: Vec::new(),
            ips: Vec::new(),
            cidrs: Vec::new(),
            policy,
            suspended: d.suspended,
            metadata: BTreeMap::new(),
        };
        if let Some(list) = &d.mac {
            for (i, s) in list.get_ref().items().into_iter().enumerate() {
                match parse_mac(s) {
                    Ok(mac) => match macs.get(&mac) {
                        Some(other) => errors.push(loc.at(
                            list,
                            format!(
                                "device \"{name}\": mac[{i}] {s} is already device \"{other}\"'s"
                            ),
                        )),
                        None => {
                            macs.insert(mac, name.clone());
                            dev.macs.push(mac);
                        }
                    },
                    Err(why) => errors
                        .push(loc.at(list, format!("device \"{name}\": mac[{i}] \"{s}\": {why}"))),
                }
            }
        }
        if let Some(list) = &d.ip {
            for (i, s) in list.get_ref().items().into_iter().enumerate() {
                match s.parse::<IpAddr>() {
                    Ok(ip) if ip.is_unspecified() || ip.is_multicast() => errors.push(loc.at(
                        list,
                        format!(
                            "device \"{name}\": ip[{i}] {s} cannot be a device's source address"
                        ),
                    )),
                    Ok(ip) => {
                        let addr = mapped(ip);
                        match ips.get(&addr) {
                            Some(other) => errors.push(loc.at(
                                list,
                                format!(
                                    "device \"{name}\": ip[{i}] {s} is already device \"{other}\"'s"
                                ),
                            )),
                            None => {
                                ips.insert(addr, name.clone());
                                dev.ips.push(addr);
                            }
                        }
                    }
                    Err(_) => errors.push(loc.at(
                        list,
                        format!(
                            "device \"{name}\": ip[{i}] \"{s}\" is not an IPv4 or IPv6 address"
                        ),
                    )),
                }
            }
        }
        if let Some(list) = &d.cidr {
            for (i, s) in list.get_ref().items().into_iter().enumerate() {
                match parse_cidr(s) {
                    Ok(c) => match cidrs.get(&c) {
                        Some(other) => errors.push(loc.at(
                            list,
                            format!(
                                "device \"{name}\": cidr[{i}] {s} is already device \"{other}\"'s"
                            ),
                        )),
                        None => {
                            cidrs.insert(c, name.clone());
                            cidr_at.insert(c, loc.at(list, String::new()));
                            dev.cidrs.push(c);
                        }
                    },
                    Err(why) => errors
                        .push(loc.at(list, format!("device \"{name}\": cidr[{i}] \"{s}\": {why}"))),
                }
            }
        }
        if dev.macs.is_empty()
            && dev.ips.is_empty()
            && dev.cidrs.is_empty()
            && d.mac.is_none()
            && d.ip.is_none()
            && d.cidr.is_none()
        {
            errors.push(loc.at(
                &d.name,
                format!("device \"{name}\" has no identifier: give mac, ip or cidr"),
            ));
        }
        for (key, value) in [
            ("imei", &d.imei),
            ("mdn", &d.mdn),
            ("iccid", &d.iccid),
            ("nickname", &d.nickname),
            ("type", &d.kind),
            ("notes", &d.notes),
        ] {
            if let Some(v) = value {
                dev.metadata.insert(key.to_string(), v.clone());
            }
        }
        devices.push(dev);
    }

    /// Nested CIDRs of devices with different policies: which policy applies to an address in
    /// both would depend on the prefix lengths, which is rarely what the operator meant.
    fn check_overlaps(&self, policies: &[Policy], errors: &mut Vec<ConfigError>) {
        let policy_of: HashMap<&str, usize> = self
            .devices
            .iter()
            .map(|d| (d.name.as_str(), d.policy))
            .collect();
        let mut found = Vec::new();
        for (c, owner) in &self.cidrs {
            for len in (0..c.prefix).rev() {
                let outer = c.truncated(len);
                if let Some(other) = self.cidrs.get(&outer)
                    && policy_of.get(other.as_str()) != policy_of.get(owner.as_str())
                {
                    let at = self.cidr_at.get(c).cloned().unwrap_or(ConfigError {
                        file: PathBuf::new(),
                        line: 0,
                        column: 0,
                        message: String::new(),
                    });
                    found.push((at, format!(
                        "device \"{owner}\": cidr {c} lies inside device \"{other}\"'s {outer}, which has another policy ({} vs {})",
                        policies.get(policy_of[owner.as_str()]).map_or("?", |p| p.name.as_str()),
                        policies.get(policy_of[other.as_str()]).map_or("?", |p| p.name.as_str()),
                    )));
                }
            }
        }
        found.sort_by(|a, b| (a.0.line, a.0.column, &a.1).cmp(&(b.0.line, b.0.column, &b.1)));
        for (at, message) in found {
            errors.push(ConfigError { message, ..at });
        }
    }
}

fn validate(raw: RawConfig, loc: &Locator<'_>) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    // Every file this configuration is made of (watched for changes by the daemon).
    let mut files = vec![loc.file.clone()];

    let bpffs = match &raw.gateway.bpffs {
        Some(p) if !p.get_ref().is_absolute() => {
            errors.push(loc.at(
                p,
                format!(
                    "bpffs: \"{}\" must be an absolute path",
                    p.get_ref().display()
                ),
            ));
            PathBuf::from(DEFAULT_BPFFS)
        }
        Some(p) => p.get_ref().clone(),
        None => PathBuf::from(DEFAULT_BPFFS),
    };

    let mut interfaces: Vec<Interface> = Vec::new();
    for i in &raw.interfaces {
        let name = i.name.get_ref();
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            errors.push(loc.at(&i.name, format!("interface name \"{name}\" is not a valid interface name (1-15 characters, no '/' or spaces)")));
        } else if interfaces.iter().any(|x| &x.name == name) {
            errors.push(loc.at(&i.name, format!("interface \"{name}\" is listed twice")));
        } else {
            interfaces.push(Interface {
                name: name.clone(),
                link: i.link,
            });
        }
    }

    let base = loc.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut categories: Vec<Category> = Vec::new();
    for c in &raw.categories {
        let name = c.name.get_ref();
        if let Err(why) =
            check_new_name("category", name, categories.iter().map(|x| x.name.as_str()))
        {
            errors.push(loc.at(&c.name, why));
            continue;
        }
        let mut cat = Category {
            name: name.clone(),
            sources: Vec::new(),
            lists: Vec::new(),
        };
        for list in &c.lists {
            let path = base.join(list.get_ref());
            files.push(path.clone());
            match lists::read_shared(&path) {
                Ok((domains, stats)) => {
                    cat.sources.push(domains);
                    if stats.invalid > 0 {
                        tracing::warn!(list = %path.display(), invalid = stats.invalid, examples = ?stats.invalid_examples, "list lines that are not domain names were skipped");
                    }
                    cat.lists.push(stats);
                }
                Err(e) => errors.push(loc.at(
                    list,
                    format!("category \"{name}\": list {}: {e}", path.display()),
                )),
            }
        }
        let mut inline = Domains::default();
        for d in &c.domains {
            match lists::normalised(d.get_ref()) {
                Ok(n) => {
                    inline.block.insert(n);
                }
                Err(why) => errors.push(loc.at(
                    d,
                    format!(
                        "category \"{name}\": \"{}\" is not a domain: {why}",
                        d.get_ref()
                    ),
                )),
            }
        }
        if !c.domains.is_empty() {
            cat.sources.push(Arc::new(inline));
        }
        if c.lists.is_empty() && c.domains.is_empty() {
            errors.push(loc.at(
                &c.name,
                format!("category \"{name}\" is empty: give lists or domains"),
            ));
        }
        categories.push(cat);
    }
    if !categories.iter().any(|c| c.name == DNS_BYPASS_CATEGORY) {
        categories.push(Category {
            name: DNS_BYPASS_CATEGORY.into(),
            sources: vec![lists::dns_bypass()],
            lists: Vec::new(),
        });
    }
    if categories.len() > MAX_CATEGORIES {
        errors.push(loc.error(0, format!("{} categories defined (with the built-in dns-bypass); at most {MAX_CATEGORIES} are supported", categories.len())));
    }

    let mut policies: Vec<Policy> = Vec::new();
    for p in &raw.policies {
        let name = p.name.get_ref();
        if let Err(why) = check_new_name("policy", name, policies.iter().map(|x| x.name.as_str())) {
            errors.push(loc.at(&p.name, why));
            continue;
        }
        let mut pol = Policy::allow_all(name, p.mode.unwrap_or(raw.gateway.mode));
        for c in &p.block_categories {
            match categories.iter().position(|x| &x.name == c.get_ref()) {
                Some(id) if id < MAX_CATEGORIES => pol.block_categories |= 1 << id,
                Some(_) => {}
                None => errors.push(loc.at(c, format!("policy \"{name}\": block_categories: no category named \"{}\" (defined: {})", c.get_ref(), categories.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")))),
            }
        }
        for (entries, into, key) in [
            (&p.allow, &mut pol.allow, "allow"),
            (&p.block, &mut pol.block, "block"),
        ] {
            for d in entries {
                match lists::normalised(d.get_ref()) {
                    Ok(n) => {
                        into.insert(n);
                    }
                    Err(why) => errors.push(loc.at(
                        d,
                        format!(
                            "policy \"{name}\": {key}: \"{}\" is not a domain: {why}",
                            d.get_ref()
                        ),
                    )),
                }
            }
        }
        for (list_files, allow, key) in [
            (&p.allow_lists, true, "allow_lists"),
            (&p.block_lists, false, "block_lists"),
        ] {
            for f in list_files {
                let path = base.join(f.get_ref());
                files.push(path.clone());
                let mut d = Domains::default();
                match lists::read(&path, &mut d) {
                    Ok(_) => {
                        // A list's own @@ entries are allows whichever key it is under.
                        pol.allow.extend(d.allow);
                        if allow {
                            pol.allow.extend(d.block)
                        } else {
                            pol.block.extend(d.block)
                        }
                    }
                    Err(e) => errors.push(loc.at(
                        f,
                        format!("policy \"{name}\": {key}: {}: {e}", path.display()),
                    )),
                }
            }
        }
        pol.default_block = p.default == Some(AllowBlock::Block);
        pol.https_empty = p.https_records == Some(HttpsRecords::Empty);
        pol.dns_answer = p.dns_block_answer.unwrap_or(DnsBlockAnswer::Nxdomain);
        pol.parse_error_block = p.on_parse_error == Some(AllowBlock::Block);
        pol.tls_drop = p.tls_block_answer == Some(TlsBlockAnswer::Drop);
        pol.log = p.log.unwrap_or_default();
        pol.unparsed_tls_block = p.on_unparsed_tls == Some(AllowBlock::Block);
        pol.quic_block = p.quic == Some(AllowBlock::Block);
        for bp in &p.block_ports {
            match bp.get_ref().parse::<BlockedPort>() {
                Ok(port) => {
                    pol.block_ports.insert(port);
                }
                Err(why) => errors.push(loc.at(
                    bp,
                    format!(
                        "policy \"{name}\": block_ports: \"{}\": {why}",
                        bp.get_ref()
                    ),
                )),
            }
        }
        if let Some(t) = p.block_ttl {
            pol.block_ttl = t;
        }
        if let Some(a) = &p.sinkhole_ipv4 {
            match a.get_ref().parse::<std::net::Ipv4Addr>() {
                Ok(ip) => pol.sinkhole_v4 = ip.octets(),
                Err(_) => errors.push(loc.at(
                    a,
                    format!(
                        "policy \"{name}\": sinkhole_ipv4 \"{}\" is not an IPv4 address",
                        a.get_ref()
                    ),
                )),
            }
        }
        if let Some(a) = &p.sinkhole_ipv6 {
            match a.get_ref().parse::<std::net::Ipv6Addr>() {
                Ok(ip) => pol.sinkhole_v6 = ip.octets(),
                Err(_) => errors.push(loc.at(
                    a,
                    format!(
                        "policy \"{name}\": sinkhole_ipv6 \"{}\" is not an IPv6 address",
                        a.get_ref()
                    ),
                )),
            }
        }
        policies.push(pol);
    }
    // A `default` policy that allows everything always exists, unless the file defines its own.
    if !policies.iter().any(|p| p.name == DEFAULT_POLICY) {
        policies.push(Policy::allow_all(DEFAULT_POLICY, raw.gateway.mode));
    }
    // Schedules, now that every policy name is known.
    for p in &raw.policies {
        let name = p.name.get_ref();
        let Some(id) = policies.iter().position(|q| &q.name == name) else {
            continue;
        };
        for (i, w) in p.schedule.iter().enumerate() {
            let w = w.get_ref();
            let what = format!("policy \"{name}\": schedule[{i}]");
            let days = parse_days(w.days.get_ref())
                .map_err(|why| errors.push(loc.at(&w.days, format!("{what}: days: {why}"))));
            let from = parse_time(w.from.get_ref())
                .map_err(|why| errors.push(loc.at(&w.from, format!("{what}: from: {why}"))));
            let to = parse_time(w.to.get_ref())
                .map_err(|why| errors.push(loc.at(&w.to, format!("{what}: to: {why}"))));
            let target = policies.iter().position(|q| &q.name == w.policy.get_ref());
            let target = match target {
                None => {
                    errors.push(loc.at(
                        &w.policy,
                        format!(
                            "{what}: no policy named \"{}\" (defined: {})",
                            w.policy.get_ref(),
                            list_names(&policies)
                        ),
                    ));
                    continue;
                }
                Some(t) if t == id => {
                    errors.push(loc.at(
                        &w.policy,
                        format!("{what}: a policy cannot schedule itself"),
                    ));
                    continue;
                }
                Some(t) => t,
            };
            if raw
                .policies
                .iter()
                .any(|q| q.name.get_ref() == w.policy.get_ref() && !q.schedule.is_empty())
            {
                errors.push(loc.at(
                    &w.policy,
                    format!(
                        "{what}: \"{}\" has a schedule of its own (schedules do not chain)",
                        w.policy.get_ref()
                    ),
                ));
                continue;
            }
            if let (Ok(days), Ok(from), Ok(to)) = (days, from, to) {
                if from == to {
                    errors.push(loc.at(&w.to, format!("{what}: an empty window (from = to)")));
                    continue;
                }
                if let Some(pol) = policies.get_mut(id) {
                    pol.schedule.push(Window {
                        days,
                        from: from % (24 * 60),
                        to: to % (24 * 60),
                        policy: target,
                    });
                }
            }
        }
    }
    let timezone = match &raw.gateway.timezone {
        None => jiff::tz::TimeZone::system(),
        Some(tz) => match jiff::tz::TimeZone::get(tz.get_ref()) {
            Ok(z) => z,
            Err(_) => {
                errors.push(loc.at(
                    tz,
                    format!(
                        "timezone: \"{}\" is not a time zone (expected an IANA name like Europe/Berlin)",
                        tz.get_ref()
                    ),
                ));
                jiff::tz::TimeZone::UTC
            }
        },
    };
    let unknown_policy = match &raw.gateway.unknown_devices {
        Some(s) => match policies.iter().position(|p| &p.name == s.get_ref()) {
            Some(id) => id,
            None => {
                errors.push(loc.at(
                    s,
                    format!(
                        "unknown_devices: no policy named \"{}\" (defined: {})",
                        s.get_ref(),
                        list_names(&policies)
                    ),
                ));
                0
            }
        },
        None => policies
            .iter()
            .position(|p| p.name == DEFAULT_POLICY)
            .unwrap_or(0),
    };
    if policies.len() > MAX_POLICIES as usize {
        errors.push(loc.error(
            0,
            format!(
                "{} policies defined; at most {MAX_POLICIES} are supported",
                policies.len()
            ),
        ));
    }

    let mut index = DeviceIndex::default();
    for d in &raw.devices {
        index.add(d, loc, &policies, &mut errors);
    }
    for inv in &raw.gateway.inventories {
        let path = base.join(inv.get_ref());
        files.push(path.clone());
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let inv_loc = Locator::new(&text, &path);
                match inventory_devices(&text, &inv_loc) {
                    Ok(list) => {
                        for d in &list {
                            index.add(d, &inv_loc, &policies, &mut errors);
                        }
                    }
                    Err(e) => errors.extend(e),
                }
            }
            Err(e) => errors.push(loc.at(
                inv,
                format!("inventories: {}: cannot read: {e}", path.display()),
            )),
        }
    }
    index.check_overlaps(&policies, &mut errors);
    let DeviceIndex {
        devices,
        macs,
        ips,
        cidrs,
        ..
    } = index;
    if devices.len() > MAX_DEVICES as usize {
        errors.push(loc.error(
            0,
            format!(
                "{} devices defined; at most {MAX_DEVICES} are supported",
                devices.len()
            ),
        ));
    }

    for (what, n, max) in [
        ("MAC addresses", macs.len(), MAX_MAC_IDS),
        ("device addresses", ips.len(), MAX_IP_IDS),
        ("CIDRs", cidrs.len(), MAX_CIDR_IDS),
    ] {
        if n > max as usize {
            errors.push(loc.error(
                0,
                format!("{n} {what} configured; at most {max} are supported"),
            ));
        }
    }

    if let Some(m) = &raw.gateway.max_tls_flows
        && *m.get_ref() == 0
    {
        errors.push(loc.at(m, "max_tls_flows: must be at least 1".to_string()));
    }
    let mut tls_ports = BTreeSet::new();
    match &raw.gateway.tls_ports {
        None => {
            tls_ports.insert(DEFAULT_TLS_PORT);
        }
        Some(list) => {
            if list.get_ref().is_empty() {
                errors.push(loc.at(
                    list,
                    "tls_ports: empty (expected at least one port, e.g. [443])".to_string(),
                ));
            }
            for p in list.get_ref() {
                match u16::try_from(*p.get_ref()) {
                    Ok(port) if port != 0 => {
                        tls_ports.insert(port);
                    }
                    _ => errors.push(loc.at(
                        p,
                        format!("tls_ports: {} is not a port (1-65535)", p.get_ref()),
                    )),
                }
            }
        }
    }

    let base = loc.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let state_dir = raw.gateway.state_dir.as_ref().map_or_else(
        || PathBuf::from(DEFAULT_STATE_DIR),
        |p| base.join(p.get_ref()),
    );
    let listen = match &raw.api.listen {
        None => DEFAULT_LISTEN.parse().ok(),
        Some(l) => match l.get_ref().parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(loc.at(
                    l,
                    format!(
                        "api.listen: \"{}\" is not an address and port (expected e.g. {DEFAULT_LISTEN} or [::1]:9477)",
                        l.get_ref()
                    ),
                ));
                None
            }
        },
    };
    let mut bounded = |v: &Option<Spanned<i64>>,
                       key: &str,
                       range: std::ops::RangeInclusive<i64>,
                       default: u64|
     -> u64 {
        match v {
            None => default,
            Some(n) if range.contains(n.get_ref()) => *n.get_ref() as u64,
            Some(n) => {
                errors.push(loc.at(
                    n,
                    format!(
                        "history.{key}: {} is out of range (expected {} to {})",
                        n.get_ref(),
                        range.start(),
                        range.end()
                    ),
                ));
                default
            }
        }
    };
    let history = History {
        enabled: raw.history.enabled.unwrap_or(true),
        retention_days: bounded(
            &raw.history.retention_days,
            "retention_days",
            1..=3650,
            u64::from(DEFAULT_RETENTION_DAYS),
        ) as u32,
        max_rows: bounded(
            &raw.history.max_rows,
            "max_rows",
            1000..=1_000_000_000,
            DEFAULT_MAX_ROWS,
        ),
        max_bytes: bounded(
            &raw.history.max_megabytes,
            "max_megabytes",
            1..=1_000_000,
            DEFAULT_MAX_MEGABYTES,
        ) << 20,
        pseudonymize: raw.history.pseudonymize.unwrap_or(false),
    };

    if let (true, Some(listen)) = (errors.is_empty(), listen) {
        Ok(Config {
            source: loc.file.clone(),
            mode: raw.gateway.mode,
            bpffs,
            interfaces,
            categories,
            policies,
            max_domains: raw
                .gateway
                .max_domains
                .map_or(DEFAULT_MAX_DOMAINS, |m| *m.get_ref()),
            max_tls_flows: raw
                .gateway
                .max_tls_flows
                .map_or(gateway_common::maps::DEFAULT_TLS_FLOWS, |m| *m.get_ref()),
            tls_ports,
            timezone,
            files,
            unknown_policy,
            devices,
            state_dir: state_dir.clone(),
            api: Api {
                listen,
                device_labels: raw.api.device_labels.unwrap_or_default(),
                token_file: raw.api.token_file.as_ref().map_or_else(
                    || state_dir.join(DEFAULT_TOKEN_FILE),
                    |p| base.join(p.get_ref()),
                ),
            },
            history,
            lifecycle: Lifecycle {
                hold_checked_in: raw.lifecycle.hold_checked_in.unwrap_or(false),
                overdue: raw.lifecycle.overdue.unwrap_or_default(),
            },
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

fn list_names(policies: &[Policy]) -> String {
    if policies.is_empty() {
        return "none".to_string();
    }
    policies
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A category or policy name: valid (`check_name`) and not among those already defined.
fn check_new_name<'a>(
    kind: &str,
    name: &str,
    mut defined: impl Iterator<Item = &'a str>,
) -> Result<(), String> {
    if let Err(why) = check_name(name) {
        return Err(format!("{kind} name \"{name}\" {why}"));
    }
    if defined.any(|x| x == name) {
        return Err(format!("{kind} \"{name}\" is defined twice"));
    }
    Ok(())
}

/// Device and policy names: 1 to 60 bytes, printable, no whitespace.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > DeviceName::MAX_LEN {
        return Err("is longer than 60 bytes");
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("contains whitespace or control characters");
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`, any case.
pub fn parse_mac(s: &str) -> Result<[u8; 6], &'static str> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err("expected six hex octets like 02:00:00:00:00:17");
    }
    let mut mac = [0u8; 6];
    for (out, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return Err("expected six hex octets like 02:00:00:00:00:17");
        }
        *out = u8::from_str_radix(part, 16)
            .map_err(|_| "expected six hex octets like 02:00:00:00:00:17")?;
    }
    if mac == [0; 6] || mac[0] & 1 == 1 {
        return Err("not a unicast device address");
    }
    Ok(mac)
}

/// `10.0.1.0/24` or `fd00::/64`; host bits must be zero.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or("expected ADDRESS/PREFIX, like 10.0.1.0/24")?;
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("\"{addr}\" is not an IPv4 or IPv6 address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("prefix \"{len}\" is not a number"))?;
    let (max, offset) = if ip.is_ipv4() { (32, 96) } else { (128, 0) };
    if len > max {
        return Err(format!("prefix /{len} is longer than /{max}"));
    }
    let prefix = len + offset;
    let addr = mapped(ip);
    let masked = mask(&addr, prefix);
    if masked != addr {
        let net = match ip {
            IpAddr::V4(_) => IpAddr::from([masked[12], masked[13], masked[14], masked[15]]),
            IpAddr::V6(_) => IpAddr::from(masked),
        };
        return Err(format!("host bits are set; the network is {net}/{len}"));
    }
    Ok(Cidr { addr, prefix })
}

/// IPv4 as IPv4-mapped IPv6; IPv6 as is.
pub fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn mask(addr: &[u8; 16], prefix: u8) -> [u8; 16] {
    let mut out = *addr;
    for (i, b) in out.iter_mut().enumerate() {
        let bits = (prefix as usize).saturating_sub(i * 8).min(8);
        *b &= if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
    out
}

/// Renders an IPv4-mapped or IPv6 address the way people write it.
pub fn display_addr(addr: &[u8; 16]) -> String {
    let v6 = std::net::Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => v6.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, Path::new("t.toml"))
    }

    fn first_error(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.0[0].to_string(),
        }
    }

    fn numbering_config(categories: &[&str], p1: &[&str], p2: &[&str]) -> Config {
        let mut text = String::new();
        for c in categories {
            text += &format!("[[category]]\nname = \"{c}\"\ndomains = [\"{c}.example\"]\n\n");
        }
        let list = |v: &[&str]| {
            v.iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        text += &format!(
            "[[policy]]\nname = \"p1\"\nblock_categories = [{}]\n\n[[policy]]\nname = \"p2\"\nblock_categories = [{}]\n",
            list(p1),
            list(p2)
        );
        parse(&text).expect("valid")
    }

    fn category_names(c: &Config) -> Vec<&str> {
        c.categories.iter().map(|c| c.name.as_str()).collect()
    }

    /// The names policy `name` blocks, from its bits.
    fn blocked(c: &Config, name: &str) -> Vec<String> {
        let p = &c.policies[c.policy_id(name).expect("policy")];
        c.categories
            .iter()
            .enumerate()
            .filter(|(i, _)| p.block_categories & (1 << i) != 0)
            .map(|(_, c)| c.name.clone())
            .collect()
    }

    #[test]
    fn categories_keep_their_numbers() {
        // No numbering before: the file's.
        let mut c = numbering_config(&["a", "b", "c"], &["b", "c"], &["a"]);
        let file = c.clone();
        assert!(c.keep_category_numbers(&[]).is_empty());
        assert_eq!(c, file);
        assert_eq!(category_names(&c), ["a", "b", "c", "dns-bypass"]);

        // c and a stay, b is gone, d is new and listed first.
        let mut c = numbering_config(&["d", "c", "a"], &["c", "d"], &["a"]);
        let previous: Vec<String> = ["a", "b", "c", "dns-bypass"].map(String::from).into();
        assert!(c.keep_category_numbers(&previous).is_empty());
        assert_eq!(category_names(&c), ["a", "b", "c", "dns-bypass", "d"]);
        assert!(
            c.categories[1].sources.is_empty(),
            "b keeps its number, empty"
        );
        assert_eq!(c.categories[2].sources[0].block.len(), 1);
        assert!(c.categories[2].sources[0].block.contains("c.example"));
        assert!(c.categories[4].sources[0].block.contains("d.example"));
        assert_eq!(blocked(&c, "p1"), ["c", "d"]);
        assert_eq!(blocked(&c, "p2"), ["a"]);
        assert_eq!(c.policies[0].block_categories, 0b10100);

        // b comes back: its old number.
        let mut again = numbering_config(&["b", "d"], &["b"], &[]);
        let previous = c.category_names();
        assert!(again.keep_category_numbers(&previous).is_empty());
        assert_eq!(category_names(&again), ["a", "b", "c", "dns-bypass", "d"]);
        assert!(again.categories[0].sources.is_empty());
        assert!(!again.categories[1].sources.is_empty());
        assert_eq!(blocked(&again, "p1"), ["b"]);

        // A numbering that is not one (a name twice): the file's.
        let mut c = numbering_config(&["a", "b"], &["b"], &[]);
        let file = c.clone();
        assert!(
            c.keep_category_numbers(&["b".into(), "b".into()])
                .is_empty()
        );
        assert_eq!(c, file);

        // More than 64 numbers with the gone ones: x takes the last free number, y and
        // dns-bypass the first gone ones', and say so; nothing else moves.
        let mut c = numbering_config(&["x", "y"], &["y"], &["x", "y"]);
        let gone: Vec<String> = (0..63).map(|i| format!("gone-{i}")).collect();
        let reused = c.keep_category_numbers(&gone);
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(reused, [pair("gone-0", "y"), pair("gone-1", "dns-bypass")]);
        assert_eq!(c.categories.len(), MAX_CATEGORIES);
        let names = category_names(&c);
        assert_eq!(names[..3], ["y", "dns-bypass", "gone-2"]);
        assert_eq!(names[62..], ["gone-62", "x"]);
        assert_eq!(c.policies[0].block_categories, 1);
        assert_eq!(c.policies[1].block_categories, 1 | 1 << 63);
        assert_eq!(blocked(&c, "p2"), ["y", "x"]);
    }

    proptest::proptest! {
        /// Over any sequence of configurations: every category of the file is numbered once,
        /// with its domains; policies block the same categories by name; a category that stays
        /// keeps its number; a number whose category is gone keeps its name, empty, unless
        /// the numbers run out (from `old` gone categories at the start), when a new category
        /// takes it and says so.
        #[test]
        fn category_numbers_hold_over_reloads(
            old in 0..=MAX_CATEGORIES,
            steps in proptest::collection::vec(
                (proptest::sample::subsequence((0..10).collect::<Vec<u8>>(), 0..=10),
                 proptest::collection::vec(proptest::bool::ANY, 10),
                 proptest::bool::ANY),
                1..12,
            )
        ) {
            let mut in_force: Vec<String> = (0..old).map(|k| format!("old-{k}")).collect();
            for (chosen, blocks, reverse) in steps {
                let mut names: Vec<String> = chosen.iter().map(|i| format!("c{i}")).collect();
                if reverse {
                    names.reverse();
                }
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let blocked_in_file: Vec<&str> = refs
                    .iter()
                    .zip(&blocks)
                    .filter(|(_, b)| **b)
                    .map(|(n, _)| *n)
                    .collect();
                let mut c = numbering_config(&refs, &blocked_in_file, &[]);
                let reused = c.keep_category_numbers(&in_force);
                proptest::prop_assert!(c.categories.len() <= MAX_CATEGORIES);
                for (gone, new) in &reused {
                    let at = c.categories.iter().position(|x| &x.name == new);
                    proptest::prop_assert_eq!(at.and_then(|i| in_force.get(i)), Some(gone));
                    proptest::prop_assert!(!refs.contains(&gone.as_str()));
                    proptest::prop_assert!(!in_force.contains(new));
                }
                if in_force.len() + refs.len() < MAX_CATEGORIES {
                    proptest::prop_assert!(reused.is_empty());
                }
                for n in refs.iter().chain(std::iter::once(&DNS_BYPASS_CATEGORY)) {
                    let at: Vec<usize> = c
                        .categories
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| x.name == *n)
                        .map(|(i, _)| i)
                        .collect();
                    proptest::prop_assert_eq!(at.len(), 1, "{} in {:?}", n, category_names(&c));
                    proptest::prop_assert!(!c.categories[at[0]].sources.is_empty());
                    if let Some(before) = in_force.iter().position(|x| x == n) {
                        proptest::prop_assert_eq!(before, at[0], "{} moved", n);
                    }
                }
                for (i, x) in c.categories.iter().enumerate() {
                    if !refs.contains(&x.name.as_str()) && x.name != DNS_BYPASS_CATEGORY {
                        proptest::prop_assert!(x.sources.is_empty());
                        proptest::prop_assert_eq!(in_force.get(i), Some(&x.name));
                    }
                }
                let mut want: Vec<String> = blocked_in_file.iter().map(|n| n.to_string()).collect();
                want.sort();
                let mut got = blocked(&c, "p1");
                got.sort();
                proptest::prop_assert_eq!(got, want);
                in_force = c.categories.iter().map(|x| x.name.clone()).collect();
            }
        }
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded().expect("valid");
        assert_eq!(c.policies[c.unknown_policy].name, "default");
        assert!(c.devices.is_empty());
        assert_eq!(c.bpffs, PathBuf::from(DEFAULT_BPFFS));
    }

    #[test]
    fn full_foundation_config() {
        let c = parse(
            r#"
[gateway]
mode = "monitor"
unknown_devices = "guest"
bpffs = "/sys/fs/bpf/gw-test"

[[interface]]
name = "veth0"
link = "raw-ip"

[[policy]]
name = "guest"

[[policy]]
name = "students"
mode = "enforce"

[[device]]
name = "bus-17"
mac = "02:00:00:00:00:17"
ip = ["10.0.0.17", "fd00::17"]
cidr = ["10.0.1.0/24"]
policy = "students"
imei = "356938035643809"
suspended = true
"#,
        )
        .expect("valid");
        assert_eq!(c.mode, Mode::Monitor);
        assert_eq!(
            c.interfaces,
            vec![Interface {
                name: "veth0".into(),
                link: LinkSetting::RawIp
            }]
        );
        assert_eq!(c.policies[c.unknown_policy].name, "guest");
        assert_eq!(c.policies[0].mode, Mode::Monitor);
        assert_eq!(c.policies[1].mode, Mode::Enforce);
        let d = &c.devices[0];
        assert_eq!(d.macs, vec![[2, 0, 0, 0, 0, 0x17]]);
        assert_eq!(display_addr(&d.ips[0]), "10.0.0.17");
        assert_eq!(display_addr(&d.ips[1]), "fd00::17");
        assert_eq!(d.cidrs[0].prefix, 96 + 24);
        assert!(d.suspended);
        assert_eq!(
            d.metadata.get("imei").map(String::as_str),
            Some("356938035643809")
        );
        assert_eq!(c.policies[d.policy].name, "students");
    }

    #[test]
    fn errors_are_located_and_specific() {
        let cases: &[(&str, &str)] = &[
            (
                "[gateway]\nmode = \"loud\"\n",
                "t.toml:2:8: unknown variant `loud`, expected `enforce` or `monitor`",
            ),
            (
                "[gateway]\nfoo = 1\n",
                "t.toml:2:1: unknown field `foo`, expected one of `mode`, `unknown_devices`, `bpffs`, `max_domains`, `max_tls_flows`, `tls_ports`, `inventories`, `timezone`, `state_dir`",
            ),
            (
                "[[policy]]\nname = \"a\"\nlog = \"some\"\n",
                "t.toml:3:7: unknown variant `some`, expected one of `all`, `blocked`, `none`",
            ),
            (
                "[gateway]\ntls_ports = [443, 70000]\n",
                "t.toml:2:19: tls_ports: 70000 is not a port (1-65535)",
            ),
            (
                "[gateway]\ntls_ports = []\n",
                "t.toml:2:13: tls_ports: empty (expected at least one port, e.g. [443])",
            ),
            (
                "[gateway]\nmax_tls_flows = 0\n",
                "t.toml:2:17: max_tls_flows: must be at least 1",
            ),
            (
                "[[policy]]\nname = \"a\"\nblock_ports = [\"853/sctp\"]\n",
                "t.toml:3:16: policy \"a\": block_ports: \"853/sctp\": unknown transport \"sctp\" (expected tcp or udp)",
            ),
            (
                "[[policy]]\nname = \"a\"\nblock_ports = [\"0/tcp\"]\n",
                "t.toml:3:16: policy \"a\": block_ports: \"0/tcp\": \"0\" is not a port (1-65535)",
            ),
            (
                "[[policy]]\nname = \"a\"\ntls_block_answer = \"reset\"\n",
                "t.toml:3:20: unknown variant `reset`, expected `rst` or `drop`",
            ),
            (
                "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\nip = \"10.0.0.1\"\npolicy = \"b\"\n",
                "t.toml:6:10: device \"d\": no policy named \"b\" (defined: a, default)",
            ),
            (
                "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\nmac = \"02:00:00:00:00\"\npolicy = \"a\"\n",
                "t.toml:5:7: device \"d\": mac[0] \"02:00:00:00:00\": expected six hex octets like 02:00:00:00:00:17",
            ),
            (
                "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\nmac = \"03:00:00:00:00:01\"\npolicy = \"a\"\n",
                "t.toml:5:7: device \"d\": mac[0] \"03:00:00:00:00:01\": not a unicast device address",
            ),
            (
                "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\nip = [\"10.0.0.1\", \"10.0.0.300\"]\npolicy = \"a\"\n",
                "t.toml:5:6: device \"d\": ip[1] \"10.0.0.300\" is not an IPv4 or IPv6 address",
            ),
            (
                "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\ncidr = \"10.0.1.5/24\"\npolicy = \"a\"\n",
                "t.toml:5:8: device \"d\": cidr[0] \"10.0.1.5/24\": host bits are set; the network is 10.0.1.0/24",
            ),
            (
                "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\ncidr = \"10.0.1.0/33\"\npolicy = \"a\"\n",
                "t.toml:5:8: device \"d\": cidr[0] \"10.0.1.0/33\": prefix /33 is longer than /32",
            ),
            (
                "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\nip = \"10.0.0.1\"\npolicy = \"a\"\n[[device]]\nname = \"e\"\nip = \"10.0.0.1\"\npolicy = \"a\"\n",
                "t.toml:9:6: device \"e\": ip[0] 10.0.0.1 is already device \"d\"'s",
            ),
            (
                "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\nip = \"10.0.0.1\"\npolicy = \"a\"\n[[device]]\nname = \"d\"\nip = \"10.0.0.2\"\npolicy = \"a\"\n",
                "t.toml:8:8: device \"d\" is defined twice",
            ),
            (
                "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\npolicy = \"a\"\n",
                "t.toml:4:8: device \"d\" has no identifier: give mac, ip or cidr",
            ),
            (
                "[[policy]]\nname = \"a\"\n[[policy]]\nname = \"a\"\n",
                "t.toml:4:8: policy \"a\" is defined twice",
            ),
            (
                "[gateway]\nunknown_devices = \"nope\"\n",
                "t.toml:2:19: unknown_devices: no policy named \"nope\" (defined: default)",
            ),
            (
                "[[interface]]\nname = \"a-very-long-interface\"\n",
                "t.toml:2:8: interface name \"a-very-long-interface\" is not a valid interface name (1-15 characters, no '/' or spaces)",
            ),
            (
                "[gateway]\nbpffs = \"relative/dir\"\n",
                "t.toml:2:9: bpffs: \"relative/dir\" must be an absolute path",
            ),
            (
                "[[device]]\nname = \"d\"\nip = \"10.0.0.1\"\n",
                "t.toml:1:1: missing field `policy`",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&first_error(text), want, "for config:\n{text}");
        }
    }

    /// Writes `gateway.toml` and inventory files into a fresh directory and loads it.
    fn load_with(files: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gw-inv-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write");
        }
        let text = std::fs::read_to_string(dir.join("gateway.toml")).expect("gateway.toml");
        let r = Config::parse(&text, &dir.join("gateway.toml"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
        r.map_err(|e| {
            e.0.iter()
                .map(|e| {
                    // Paths relative to the directory, for stable messages.
                    let file = e
                        .file
                        .file_name()
                        .map_or(String::new(), |f| f.to_string_lossy().into_owned());
                    format!("{file}:{}:{}: {}", e.line, e.column, e.message)
                })
                .collect()
        })
    }

    const INVENTORY_HEAD: &str = "[gateway]\ninventories = [\"devices.csv\", \"more.toml\"]\n[[policy]]\nname = \"kids\"\n[[policy]]\nname = \"staff\"\n";

    #[test]
    fn inventories_in_csv_and_toml() {
        let c = load_with(&[
            ("gateway.toml", INVENTORY_HEAD),
            (
                "devices.csv",
                "name,mac,ip,policy,imei,type,suspended\nbus-1,02:00:00:00:00:01,10.0.0.1,kids,356938035643809,bus,\n\"bus-2\",,10.0.0.2;10.0.0.3 fd00::2,staff,,,yes\n",
            ),
            (
                "more.toml",
                "[[device]]\nname = \"cam\"\ncidr = \"10.1.0.0/24\"\npolicy = \"kids\"\n",
            ),
        ])
        .expect("valid");
        assert_eq!(c.devices.len(), 3);
        let bus2 = &c.devices[1];
        assert_eq!(
            (bus2.name.as_str(), bus2.ips.len(), bus2.suspended),
            ("bus-2", 3, true)
        );
        assert_eq!(
            c.devices[0].metadata.get("imei").map(String::as_str),
            Some("356938035643809")
        );
        assert_eq!(c.devices[2].cidrs.len(), 1);
    }

    #[test]
    fn inventory_errors_are_located() {
        let csv = |body: &str| {
            load_with(&[
                ("gateway.toml", INVENTORY_HEAD),
                ("devices.csv", body),
                ("more.toml", ""),
            ])
            .expect_err("invalid")
        };
        let cases: &[(&str, &str)] = &[
            (
                "name,mac,colour,policy\nbus,02:00:00:00:00:01,red,kids\n",
                "devices.csv:1:10: unknown column \"colour\", expected one of name, mac, ip, cidr, policy, suspended, imei, mdn, iccid, nickname, type, notes",
            ),
            (
                "name,ip\nbus,10.0.0.1\n",
                "devices.csv:1:1: the header row has no \"policy\" column",
            ),
            (
                "name,ip,policy\nbus,10.0.0.x,kids\n",
                "devices.csv:2:5: device \"bus\": ip[0] \"10.0.0.x\" is not an IPv4 or IPv6 address",
            ),
            (
                "name,ip,policy\nbus,10.0.0.1,teachers\n",
                "devices.csv:2:14: device \"bus\": no policy named \"teachers\" (defined: kids, staff, default)",
            ),
            (
                "name,ip,policy\nbus,10.0.0.1,kids\nbus,10.0.0.2,kids\n",
                "devices.csv:3:1: device \"bus\" is defined twice",
            ),
            (
                "name,ip,policy\na,10.0.0.1,kids\nb,10.0.0.1,kids\n",
                "devices.csv:3:3: device \"b\": ip[0] 10.0.0.1 is already device \"a\"'s",
            ),
            (
                "name,ip,policy,suspended\nbus,10.0.0.1,kids,maybe\n",
                "devices.csv:2:19: device \"bus\": suspended \"maybe\" (expected true or false)",
            ),
            (
                "name,ip,policy\nbus,10.0.0.1\n",
                "devices.csv:2:1: bad row: CSV error: record 1 (line: 2, byte: 15): found record with 2 fields, but the previous record has 3 fields",
            ),
            (
                "name,ip,policy\nbus,,kids\n",
                "devices.csv:2:1: device \"bus\" has no identifier: give mac, ip or cidr",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(&csv(body)[0], want, "for devices.csv:\n{body}");
        }
        // TOML inventories: located in their own file; nested CIDRs with different policies.
        let e = load_with(&[
            ("gateway.toml", INVENTORY_HEAD),
            ("devices.csv", "name,cidr,policy\nnet,10.1.0.0/16,kids\n"),
            (
                "more.toml",
                "[[device]]\nname = \"cam\"\ncidr = \"10.1.2.0/24\"\npolicy = \"staff\"\n",
            ),
        ])
        .expect_err("overlap");
        assert_eq!(
            e,
            vec![
                "more.toml:3:8: device \"cam\": cidr 10.1.2.0/24 lies inside device \"net\"'s 10.1.0.0/16, which has another policy (staff vs kids)"
            ]
        );
        let e = load_with(&[
            ("gateway.toml", INVENTORY_HEAD),
            ("devices.csv", "name,policy\n"),
            ("more.toml", "[[device]]\nname = \"cam\"\nkind = \"x\"\n"),
        ])
        .expect_err("unknown key");
        assert!(
            e[0].starts_with("more.toml:3:1: unknown field `kind`"),
            "{e:?}"
        );
        let e = load_with(&[
            ("gateway.toml", INVENTORY_HEAD),
            ("devices.csv", "name,policy\n"),
        ])
        .expect_err("missing file");
        assert!(
            e[0].starts_with("gateway.toml:2:31: inventories: ")
                && e[0].ends_with("cannot read: No such file or directory (os error 2)"),
            "{e:?}"
        );
    }

    const SCHEDULED: &str = r#"
[gateway]
timezone = "America/New_York"

[[policy]]
name = "students"
schedule = [
  { days = "mon-fri", from = "08:00", to = "15:00", policy = "class" },
  { days = "fri,sat", from = "22:00", to = "06:00", policy = "night" },
]

[[policy]]
name = "class"

[[policy]]
name = "night"

[[device]]
name = "tablet"
ip = "10.0.0.1"
policy = "students"
"#;

    /// The policy in force for the tablet at a local time in New York.
    fn in_force(c: &Config, local: &str) -> String {
        let t = jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M", local)
            .expect("time")
            .to_zoned(jiff::tz::TimeZone::get("America/New_York").expect("tz"))
            .expect("zoned")
            .timestamp();
        c.policies[c.effective_policy(c.devices[0].policy, t)]
            .name
            .clone()
    }

    #[test]
    fn schedules_switch_at_their_boundaries() {
        let c = parse(SCHEDULED).expect("valid");
        // 2026-11-23 is a Monday; 2026-11-27 a Friday.
        for (at, want) in [
            ("2026-11-23 07:59", "students"),
            ("2026-11-23 08:00", "class"),
            ("2026-11-23 14:59", "class"),
            ("2026-11-23 15:00", "students"),
            // Days of week: not on Saturday or Sunday.
            ("2026-11-28 09:00", "students"),
            ("2026-11-29 09:00", "students"),
            // Over midnight: Friday 22:00 to Saturday 06:00, Saturday 22:00 to Sunday 06:00.
            ("2026-11-27 21:59", "students"),
            ("2026-11-27 22:00", "night"),
            ("2026-11-28 05:59", "night"),
            ("2026-11-28 06:00", "students"),
            ("2026-11-28 23:30", "night"),
            ("2026-11-29 05:00", "night"),
            // Thursday night is not a listed evening; Friday morning is not the morning after one.
            ("2026-11-26 23:00", "students"),
            ("2026-11-27 05:00", "students"),
        ] {
            assert_eq!(in_force(&c, at), want, "at {at}");
        }
        // The same instant is another local time elsewhere: the configured zone decides.
        let utc = parse(&SCHEDULED.replace("America/New_York", "UTC")).expect("valid");
        let t: jiff::Timestamp = "2026-11-23T13:30:00Z".parse().expect("instant");
        assert_eq!(utc.policies[utc.effective_policy(0, t)].name, "class");
        assert_eq!(c.policies[c.effective_policy(0, t)].name, "class");
        let t: jiff::Timestamp = "2026-11-23T19:30:00Z".parse().expect("instant");
        assert_eq!(utc.policies[utc.effective_policy(0, t)].name, "students");
        assert_eq!(c.policies[c.effective_policy(0, t)].name, "class");
    }

    #[test]
    fn schedule_errors_are_located() {
        let with = |window: &str| {
            first_error(&format!(
                "[[policy]]\nname = \"a\"\nschedule = [{window}]\n[[policy]]\nname = \"b\"\n"
            ))
        };
        for (window, want) in [
            (
                r#"{ days = "mon-fru", from = "08:00", to = "15:00", policy = "b" }"#,
                "t.toml:3:22: policy \"a\": schedule[0]: days: \"fru\" is not a day (expected mon, tue, wed, thu, fri, sat, sun)",
            ),
            (
                r#"{ days = "mon", from = "8:00", to = "15:00", policy = "b" }"#,
                "t.toml:3:36: policy \"a\": schedule[0]: from: \"8:00\" is not a time of day (expected HH:MM, 00:00 to 24:00)",
            ),
            (
                r#"{ days = "mon", from = "08:00", to = "25:00", policy = "b" }"#,
                "t.toml:3:50: policy \"a\": schedule[0]: to: \"25:00\" is not a time of day (expected HH:MM, 00:00 to 24:00)",
            ),
            (
                r#"{ days = "mon", from = "08:00", to = "08:00", policy = "b" }"#,
                "t.toml:3:50: policy \"a\": schedule[0]: an empty window (from = to)",
            ),
            (
                r#"{ days = "mon", from = "08:00", to = "09:00", policy = "c" }"#,
                "t.toml:3:68: policy \"a\": schedule[0]: no policy named \"c\" (defined: a, b, default)",
            ),
            (
                r#"{ days = "mon", from = "08:00", to = "09:00", policy = "a" }"#,
                "t.toml:3:68: policy \"a\": schedule[0]: a policy cannot schedule itself",
            ),
            (
                r#"{ days = "mon", from = "08:00", to = "09:00", policy = "b", colour = 1 }"#,
                "t.toml:3:73: unknown field `colour`, expected one of `days`, `from`, `to`, `policy`",
            ),
        ] {
            assert_eq!(with(window), want, "{window}");
        }
        assert_eq!(
            first_error("[gateway]\ntimezone = \"Mars/Olympus\"\n"),
            "t.toml:2:12: timezone: \"Mars/Olympus\" is not a time zone (expected an IANA name like Europe/Berlin)"
        );
        assert_eq!(
            first_error(
                "[[policy]]\nname = \"a\"\nschedule = [{ days = \"mon\", from = \"08:00\", to = \"09:00\", policy = \"b\" }]\n[[policy]]\nname = \"b\"\nschedule = [{ days = \"mon\", from = \"08:00\", to = \"09:00\", policy = \"a\" }]\n"
            ),
            "t.toml:3:68: policy \"a\": schedule[0]: \"b\" has a schedule of its own (schedules do not chain)"
        );
    }

    #[test]
    fn api_and_history_settings() {
        let c = parse("").expect("defaults");
        assert_eq!(c.api.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.api.device_labels, DeviceLabels::Pseudonym);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(
            (
                c.history.enabled,
                c.history.retention_days,
                c.history.max_rows,
                c.history.pseudonymize
            ),
            (true, DEFAULT_RETENTION_DAYS, DEFAULT_MAX_ROWS, false)
        );
        let c = parse("[gateway]\nstate_dir = \"state\"\n[api]\nlisten = \"[::1]:9000\"\ndevice_labels = \"name\"\n[history]\nretention_days = 7\nmax_rows = 5000\npseudonymize = true\n").expect("valid");
        assert_eq!(c.state_dir, PathBuf::from("state"));
        assert_eq!(c.api.listen.to_string(), "[::1]:9000");
        assert_eq!(c.api.device_labels, DeviceLabels::Name);
        assert_eq!(
            (
                c.history.retention_days,
                c.history.max_rows,
                c.history.pseudonymize
            ),
            (7, 5000, true)
        );
        for (text, want) in [
            (
                "[api]\nlisten = \"localhost\"\n",
                "t.toml:2:10: api.listen: \"localhost\" is not an address and port (expected e.g. 127.0.0.1:9477 or [::1]:9477)",
            ),
            (
                "[api]\ndevice_labels = \"mac\"\n",
                "t.toml:2:17: unknown variant `mac`, expected one of `pseudonym`, `name`, `none`",
            ),
            (
                "[history]\nretention_days = 0\n",
                "t.toml:2:18: history.retention_days: 0 is out of range (expected 1 to 3650)",
            ),
            (
                "[history]\nmax_rows = 10\n",
                "t.toml:2:12: history.max_rows: 10 is out of range (expected 1000 to 1000000000)",
            ),
            (
                "[history]\nmax_megabytes = 0\n",
                "t.toml:2:17: history.max_megabytes: 0 is out of range (expected 1 to 1000000)",
            ),
            (
                "[history]\npseudonymise = true\n",
                "t.toml:2:1: unknown field `pseudonymise`, expected one of `enabled`, `retention_days`, `max_rows`, `max_megabytes`, `pseudonymize`",
            ),
        ] {
            assert_eq!(first_error(text), want, "{text}");
        }
    }

    #[test]
    fn all_errors_are_reported() {
        let e = parse(
            "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\nip = \"x\"\npolicy = \"b\"\n",
        )
        .expect_err("invalid");
        assert_eq!(e.0.len(), 2);
    }

    #[test]
    fn bpffs_is_found_even_in_a_config_that_does_not_validate() {
        let dir = std::env::temp_dir().join(format!("gw-bpffs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("broken.toml");
        std::fs::write(
            &f,
            "[gateway]\nbpffs = \"/sys/fs/bpf/x\"\n[[device]]\nname = 1\n",
        )
        .expect("write");
        assert!(Config::load(&f).is_err());
        assert_eq!(
            Config::bpffs_of(Some(&f)).expect("lenient"),
            PathBuf::from("/sys/fs/bpf/x")
        );
        std::fs::write(&f, "[gateway\n").expect("write");
        let e = Config::bpffs_of(Some(&f)).expect_err("not TOML");
        assert!(e.to_string().contains("broken.toml:1:"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn cidr_masks() {
        assert_eq!(parse_cidr("10.0.0.0/8").map(|c| c.prefix), Ok(104));
        assert_eq!(parse_cidr("fd00::/64").map(|c| c.prefix), Ok(64));
        assert!(parse_cidr("fd00::1/64").is_err());
        assert_eq!(parse_cidr("0.0.0.0/0").map(|c| c.prefix), Ok(96));
        assert!(parse_cidr("10.0.0.0").is_err());
    }
}
