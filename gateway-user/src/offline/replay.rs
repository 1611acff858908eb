//! `gateway replay`: every frame of a capture through the real kernel program, with the maps
//! loaded from a configuration, and what it decided.

use std::{collections::BTreeMap, path::Path};

use gateway_common::{
    bytes::Bytes,
    domain::{DNS_HEADER, walk_name},
    enums::{Action, LinkType, Reason},
    packet::{
        ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Fragment, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP, parse_l2, parse_l3, parse_l4,
    },
};
use serde::Serialize;

use crate::{
    BadInput,
    config::Config,
    offline::{
        capture::{self, Frame},
        sni,
        testrun::{MIN_FRAME, TestRunner},
    },
};

/// One frame's decision.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Record {
    pub frame: u64,
    /// Seconds since the epoch, as captured.
    pub time: f64,
    pub device: String,
    pub policy: String,
    /// What was judged: the decision's protocol, else the frame's transport.
    pub proto: &'static str,
    /// `allow`, `block` or `monitor` for decisions; `pass` for traffic nothing judged.
    pub action: &'static str,
    /// The XDP verdict.
    pub verdict: &'static str,
    pub reason: &'static str,
    /// The query name (DNS) or the ClientHello's server name (TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The query type (DNS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qtype: Option<u16>,
    pub bytes: usize,
}

/// Totals over a replay.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    pub frames: u64,
    pub skipped: u64,
    pub by_verdict: BTreeMap<&'static str, u64>,
    pub by_reason: BTreeMap<&'static str, u64>,
}

/// Replays `capture` with `config`, calling `emit` for each frame in order.
pub fn replay(
    config: &Config,
    path: &Path,
    mut emit: impl FnMut(&Record),
) -> anyhow::Result<Summary> {
    let (frames, skipped) = capture::read(path).map_err(|e| BadInput(format!("{e:#}")))?;
    capture::require_frames(path, &frames, &skipped).map_err(|e| BadInput(format!("{e:#}")))?;
    let mut summary = Summary {
        skipped: skipped.len() as u64,
        ..Summary::default()
    };
    for s in &skipped {
        tracing::warn!(frame = s.number, reason = %s.why, "frame skipped");
    }
    let mut runners: BTreeMap<LinkType, TestRunner> = BTreeMap::new();
    // ClientHellos followed across frames with the kernel's walk, for their server names.
    let mut hellos = sni::Follower::default();
    for frame in &frames {
        if frame.data.len() < MIN_FRAME {
            tracing::warn!(
                frame = frame.number,
                bytes = frame.data.len(),
                "frame skipped: shorter than BPF_PROG_TEST_RUN accepts"
            );
            summary.skipped += 1;
            continue;
        }
        let runner = match runners.entry(frame.link) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(TestRunner::new(config, frame.link)?)
            }
        };
        let r = runner.run(&frame.data)?;
        let (mut name, qtype) = dns_question(frame).unzip();
        if let Some((_, sni::Outcome::Sni(sni))) = hellos.feed(&frame.data, frame.link) {
            name = Some(sni);
        }
        let record = Record {
            frame: frame.number,
            time: frame.time.as_secs_f64(),
            device: runner.device_name(r.slot),
            policy: runner.policy_name(r.policy),
            proto: decision_proto(frame, r.action.is_some(), r.reason),
            action: r.action.map_or("pass", Action::label),
            verdict: r.verdict.label(),
            reason: r.reason.label(),
            name,
            qtype,
            bytes: frame.data.len(),
        };
        summary.frames += 1;
        *summary.by_verdict.entry(record.verdict).or_default() += 1;
        *summary.by_reason.entry(record.reason).or_default() += 1;
        emit(&record);
    }
    Ok(summary)
}

/// The question of a DNS query frame, read with the parser the kernel uses.
fn dns_question(frame: &Frame) -> Option<(String, u16)> {
    let b = frame.data.as_slice();
    let l2 = parse_l2(b, frame.link).ok()?;
    let l3 = parse_l3(b, &l2).ok()?;
    if l3.proto != IPPROTO_UDP || l3.fragment == Fragment::Later {
        return None;
    }
    let l4 = parse_l4(b, &l3).ok()?;
    // Port 53, or a DNS-shaped datagram to another port (judged as DNS by the kernel).
    let header = b.read::<DNS_HEADER>(l4.payload_off)?;
    if l4.dst_port() != 53 && !gateway_common::domain::is_query_shaped(&header) {
        return None;
    }
    let name_off = l4.payload_off + DNS_HEADER;
    let mut text = [0u8; 256];
    let (len, wire) = walk_name(b, name_off, &mut text).ok()?;
    let qtype = b.be16_at(name_off + wire)?;
    Some((
        String::from_utf8_lossy(text.get(..len)?).into_owned(),
        qtype,
    ))
}

/// The protocol of a decision (DNS, TLS, QUIC, port), else the frame's transport. A decision on
/// a name is DNS when the frame goes to port 53 or is UDP (DNS-shaped datagrams to other ports
/// are judged as DNS: the kernel's own dispatch rule), TLS otherwise (whichever TLS ports are
/// configured).
fn decision_proto(frame: &Frame, decided: bool, reason: Reason) -> &'static str {
    if !decided || reason == Reason::Suspended {
        return proto_of(frame, reason);
    }
    match reason {
        Reason::BlockedPort => "port",
        Reason::Quic => "quic",
        _ if dst_port(frame) == Some(53) || proto_of(frame, reason) == "udp" => "dns",
        _ => "tls",
    }
}

/// The transport destination port of a frame, read with the shared parser.
fn dst_port(frame: &Frame) -> Option<u16> {
    let b = frame.data.as_slice();
    let l2 = parse_l2(b, frame.link).ok()?;
    let l3 = parse_l3(b, &l2).ok()?;
    Some(parse_l4(b, &l3).ok()?.dst_port())
}

/// The decision's protocol, or the frame's transport described with the shared parser.
fn proto_of(frame: &Frame, reason: Reason) -> &'static str {
    if reason == Reason::Suspended {
        return "suspended";
    }
    let b = frame.data.as_slice();
    let Ok(l2) = parse_l2(b, frame.link) else {
        return "malformed";
    };
    match l2.ethertype {
        ETH_P_ARP => return "arp",
        ETH_P_IP | ETH_P_IPV6 => {}
        _ => return "non-ip",
    }
    let Ok(l3) = parse_l3(b, &l2) else {
        return "malformed";
    };
    if l3.fragment == Fragment::Later {
        return "fragment";
    }
    if parse_l4(b, &l3).is_err() {
        return "malformed";
    }
    match l3.proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        IPPROTO_ICMPV6 => "icmpv6",
        _ => "ip",
    }
}

/// A record as one line for people.
pub fn render(r: &Record) -> String {
    format!(
        "{:>6} {:<20} {:<12} {:<10} {:<7} {:<5} {:<16} {}",
        r.frame,
        r.device,
        r.policy,
        r.proto,
        r.action,
        r.verdict,
        r.reason,
        r.name.as_deref().unwrap_or("")
    )
}

/// The header line for `render`.
pub const HEADER: &str =
    " FRAME DEVICE               POLICY       PROTO      ACTION  VERD  REASON           NAME";
