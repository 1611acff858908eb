//! Following TLS ClientHellos through a capture on the host, with the kernel's walk
//! (`gateway_common::tls`) and the kernel's rules for segments: a flow's walk starts at a payload
//! that starts a ClientHello, continues with the in-order next segment, restarts on a
//! retransmitted first segment, and ends on anything out of order.

use std::collections::HashMap;

use gateway_common::{
    enums::LinkType,
    packet::{Addr, Fragment, IPPROTO_TCP, parse_l2, parse_l3, parse_l4, tcp_seq_ack},
    tls::{Hello, HelloWalk, NameBuf, may_start_hello, walk_segment},
};

/// A TCP flow, client to server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
}

/// How a flow's ClientHello walk ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The first host name of server_name.
    Sni(String),
    /// A complete ClientHello without one.
    NoSni,
    /// Given up: malformed, over a cap, or a segment out of order.
    Unparsed,
}

struct Walking {
    walk: HelloWalk,
    name: NameBuf,
    first_seq: u32,
    next_seq: u32,
}

/// The walks in progress, by flow.
#[derive(Default)]
pub struct Follower {
    flows: HashMap<FlowKey, Walking>,
}

/// A TCP segment's flow, sequence number and payload.
pub fn tcp_segment(data: &[u8], link: LinkType) -> Option<(FlowKey, u32, &[u8])> {
    let l2 = parse_l2(data, link).ok()?;
    let l3 = parse_l3(data, &l2).ok()?;
    if l3.proto != IPPROTO_TCP || l3.fragment == Fragment::Later {
        return None;
    }
    let l4 = parse_l4(data, &l3).ok()?;
    let payload = data.get(l4.payload_off..l3.end(data.len()))?;
    Some((
        FlowKey {
            src: l3.src,
            dst: l3.dst(data)?,
            sport: l4.src_port(),
            dport: l4.dst_port(),
        },
        tcp_seq_ack(data, l3.l4_off)?.0,
        payload,
    ))
}

impl Follower {
    /// Feeds one frame. Returns the flow and the outcome when this frame ends a walk.
    pub fn feed(&mut self, data: &[u8], link: LinkType) -> Option<(FlowKey, Outcome)> {
        let (key, seq, payload) = tcp_segment(data, link)?;
        if payload.is_empty() {
            return None;
        }
        let starts = may_start_hello(payload[0]);
        let restart = match self.flows.get(&key) {
            Some(w) => starts && seq == w.first_seq,
            None => starts,
        };
        if restart {
            self.flows.insert(
                key,
                Walking {
                    walk: HelloWalk::new(),
                    name: NameBuf::default(),
                    first_seq: seq,
                    next_seq: seq,
                },
            );
        }
        let w = self.flows.get_mut(&key)?;
        if seq != w.next_seq {
            self.flows.remove(&key);
            return Some((key, Outcome::Unparsed));
        }
        w.next_seq = seq.wrapping_add(payload.len() as u32);
        let outcome = match walk_segment(&mut w.walk, 0, payload, &mut w.name) {
            Hello::NeedMore => return None,
            Hello::NotHello => {
                self.flows.remove(&key);
                return None;
            }
            Hello::More | Hello::Unparsed => Outcome::Unparsed,
            Hello::NoSni => Outcome::NoSni,
            Hello::Sni => Outcome::Sni(
                String::from_utf8_lossy(w.name.text.get(..usize::from(w.walk.name_len))?)
                    .into_owned(),
            ),
        };
        self.flows.remove(&key);
        Some((key, outcome))
    }
}
