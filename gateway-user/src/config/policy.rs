//! A policy as validated: its rules, answers and settings, and its schedule windows.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::{DEFAULT_BLOCK_TTL, Mode};

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
    /// The resolvers plain DNS may go to (IPv6 or IPv4-mapped bytes; the policy's own
    /// `dns_resolvers`, else the gateway's): DNS to any other address is refused. `None`: any.
    pub dns_resolvers: Option<BTreeSet<[u8; 16]>>,
    /// `safe_search`: the engines (indexes into `Config::safe_search.engines`) whose names are
    /// answered with their enforcement names.
    pub safe_search: Vec<usize>,
    /// `http_block_answer = "drop"`: blocked plain-HTTP requests are dropped, not reset.
    pub http_drop: bool,
    /// `on_unparsed_http = "block"`.
    pub unparsed_http_block: bool,
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
pub(super) fn parse_days(s: &str) -> Result<u8, String> {
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
pub(super) fn parse_time(s: &str) -> Result<u16, String> {
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
            dns_resolvers: None,
            safe_search: Vec::new(),
            http_drop: false,
            unparsed_http_block: false,
            schedule: Vec::new(),
        }
    }
}
