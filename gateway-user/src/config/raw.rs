//! The configuration as written (`Raw*`): what serde reads from the TOML text, with the spans
//! that locate each value's errors. `validate` turns it into a `Config`.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{
    AllowBlock, DeviceLabels, DnsBlockAnswer, HttpsRecords, LinkSetting, LogLevel, Mode, Overdue,
    TlsBlockAnswer,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) gateway: RawGateway,
    #[serde(default, rename = "interface")]
    pub(super) interfaces: Vec<RawInterface>,
    #[serde(default, rename = "category")]
    pub(super) categories: Vec<RawCategory>,
    #[serde(default, rename = "policy")]
    pub(super) policies: Vec<RawPolicy>,
    #[serde(default, rename = "device")]
    pub(super) devices: Vec<RawDevice>,
    #[serde(default)]
    pub(super) api: RawApi,
    #[serde(default)]
    pub(super) history: RawHistory,
    #[serde(default)]
    pub(super) lifecycle: RawLifecycle,
    pub(super) fleet: Option<super::fleet::RawFleet>,
    pub(super) telemetry: Option<super::telemetry::RawTelemetry>,
    #[serde(default)]
    pub(super) safe_search: super::safe_search::RawSafeSearch,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLifecycle {
    pub(super) hold_checked_in: Option<bool>,
    pub(super) overdue: Option<Overdue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) device_labels: Option<DeviceLabels>,
    pub(super) token_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHistory {
    pub(super) enabled: Option<bool>,
    pub(super) retention_days: Option<Spanned<i64>>,
    pub(super) max_rows: Option<Spanned<i64>>,
    pub(super) max_megabytes: Option<Spanned<i64>>,
    pub(super) pseudonymize: Option<bool>,
    pub(super) ship: Option<Spanned<String>>,
    pub(super) ship_only: Option<Spanned<String>>,
    pub(super) ship_ca_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    #[serde(default)]
    pub(super) mode: Mode,
    pub(super) unknown_devices: Option<Spanned<String>>,
    pub(super) bpffs: Option<Spanned<PathBuf>>,
    pub(super) max_domains: Option<Spanned<u32>>,
    pub(super) max_tls_flows: Option<Spanned<u32>>,
    pub(super) tls_ports: Option<Spanned<Vec<Spanned<i64>>>>,
    pub(super) http_ports: Option<Spanned<Vec<Spanned<i64>>>>,
    pub(super) dns_resolvers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) inventories: Vec<Spanned<PathBuf>>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) state_dir: Option<Spanned<PathBuf>>,
}

/// One `schedule` window of a policy, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWindow {
    pub(super) days: Spanned<String>,
    pub(super) from: Spanned<String>,
    pub(super) to: Spanned<String>,
    pub(super) policy: Spanned<String>,
}

/// A list: its path or URL, or a table `{ path = "…" }` / `{ url = "…", refresh = "…" }` with
/// options (`format`; for a URL `refresh`, `max_shrink`, `min_rules`).
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a path or URL, or a table { path = \"…\" } or { url = \"…\" } with format = \"hosts|domains|wildcard|adblock|dnsmasq|rpz\" (and refresh, max_shrink, min_rules for a url)"
)]
pub(super) enum RawList {
    Path(String),
    Table(RawListTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListTable {
    pub(super) path: Option<String>,
    pub(super) url: Option<String>,
    pub(super) format: Option<String>,
    pub(super) refresh: Option<RawRefresh>,
    pub(super) max_shrink: Option<i64>,
    pub(super) min_rules: Option<i64>,
}

/// `refresh`: seconds or a duration text.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawRefresh {
    Seconds(i64),
    Text(String),
}

impl RawList {
    pub(super) fn format(&self) -> Option<&str> {
        match self {
            RawList::Path(_) => None,
            RawList::Table(t) => t.format.as_deref(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCategory {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) lists: Vec<Spanned<RawList>>,
    #[serde(default)]
    pub(super) domains: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInterface {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) link: LinkSetting,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) name: Spanned<String>,
    pub(super) mode: Option<Mode>,
    #[serde(default)]
    pub(super) block_categories: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) block: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) allow_lists: Vec<Spanned<RawList>>,
    #[serde(default)]
    pub(super) block_lists: Vec<Spanned<RawList>>,
    pub(super) default: Option<AllowBlock>,
    pub(super) https_records: Option<HttpsRecords>,
    pub(super) dns_block_answer: Option<DnsBlockAnswer>,
    pub(super) on_parse_error: Option<AllowBlock>,
    pub(super) tls_block_answer: Option<TlsBlockAnswer>,
    pub(super) log: Option<LogLevel>,
    #[serde(default)]
    pub(super) schedule: Vec<Spanned<RawWindow>>,
    pub(super) on_unparsed_tls: Option<AllowBlock>,
    pub(super) quic: Option<AllowBlock>,
    #[serde(default)]
    pub(super) block_ports: Vec<Spanned<String>>,
    pub(super) sinkhole_ipv4: Option<Spanned<String>>,
    pub(super) sinkhole_ipv6: Option<Spanned<String>>,
    pub(super) block_ttl: Option<u32>,
    pub(super) dns_resolvers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) safe_search: Vec<Spanned<String>>,
    pub(super) on_unparsed_http: Option<AllowBlock>,
    pub(super) http_block_answer: Option<TlsBlockAnswer>,
}

/// A string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn items(&self) -> Vec<&str> {
        match self {
            Self::One(s) => vec![s.as_str()],
            Self::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDevice {
    pub(super) name: Spanned<String>,
    pub(super) mac: Option<Spanned<OneOrMany>>,
    pub(super) ip: Option<Spanned<OneOrMany>>,
    pub(super) cidr: Option<Spanned<OneOrMany>>,
    pub(super) policy: Spanned<String>,
    #[serde(default)]
    pub(super) suspended: bool,
    pub(super) imei: Option<String>,
    pub(super) mdn: Option<String>,
    pub(super) iccid: Option<String>,
    pub(super) nickname: Option<String>,
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) notes: Option<String>,
}

/// An inventory in TOML: `[[device]]` tables, as in gateway.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInventory {
    #[serde(default, rename = "device")]
    pub(super) devices: Vec<RawDevice>,
}
