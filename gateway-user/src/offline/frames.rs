//! Well-formed frames for benchmarks, fixtures and the demo, built with `etherparse` (valid
//! lengths and checksums).

use etherparse::{PacketBuilder, PacketBuilderStep, TcpHeader, UdpHeader, VlanId};
use gateway_common::enums::LinkType;

/// Link layer of a built frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2 {
    Ethernet {
        src: [u8; 6],
        dst: [u8; 6],
    },
    /// One 802.1Q tag.
    Vlan {
        src: [u8; 6],
        dst: [u8; 6],
        vid: u16,
    },
    /// 802.1ad outer tag and 802.1Q inner tag.
    DoubleVlan {
        src: [u8; 6],
        dst: [u8; 6],
        outer: u16,
        inner: u16,
    },
    RawIp,
}

impl L2 {
    pub const fn link_type(self) -> LinkType {
        match self {
            L2::RawIp => LinkType::RawIp,
            _ => LinkType::Ethernet,
        }
    }
}

/// Network layer of a built frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

/// Transport layer of a built frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Udp {
        sport: u16,
        dport: u16,
    },
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        flags: TcpFlags,
    },
    /// ICMP echo request (ICMPv6 on IPv6).
    Echo {
        id: u16,
        seq: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: Option<u32>,
    pub psh: bool,
    pub rst: bool,
    pub fin: bool,
}

fn vlan(vid: u16) -> VlanId {
    VlanId::try_new(vid & 0x0fff).unwrap_or(VlanId::ZERO)
}

fn ip_step<T>(step: PacketBuilderStep<T>, l3: L3) -> PacketBuilderStep<etherparse::IpHeaders>
where
    PacketBuilderStep<T>: IpNext,
{
    match l3 {
        L3::V4 { src, dst } => step.v4(src, dst),
        L3::V6 { src, dst } => step.v6(src, dst),
    }
}

/// Builder steps after which an IP header can follow.
pub trait IpNext {
    fn v4(self, src: [u8; 4], dst: [u8; 4]) -> PacketBuilderStep<etherparse::IpHeaders>;
    fn v6(self, src: [u8; 16], dst: [u8; 16]) -> PacketBuilderStep<etherparse::IpHeaders>;
}

impl IpNext for PacketBuilderStep<etherparse::Ethernet2Header> {
    fn v4(self, src: [u8; 4], dst: [u8; 4]) -> PacketBuilderStep<etherparse::IpHeaders> {
        self.ipv4(src, dst, 64)
    }
    fn v6(self, src: [u8; 16], dst: [u8; 16]) -> PacketBuilderStep<etherparse::IpHeaders> {
        self.ipv6(src, dst, 64)
    }
}

impl IpNext for PacketBuilderStep<etherparse::VlanHeader> {
    fn v4(self, src: [u8; 4], dst: [u8; 4]) -> PacketBuilderStep<etherparse::IpHeaders> {
        self.ipv4(src, dst, 64)
    }
    fn v6(self, src: [u8; 16], dst: [u8; 16]) -> PacketBuilderStep<etherparse::IpHeaders> {
        self.ipv6(src, dst, 64)
    }
}

/// A complete frame with `payload` as the transport payload.
pub fn build(l2: L2, l3: L3, l4: L4, payload: &[u8]) -> Vec<u8> {
    let ip = match l2 {
        L2::Ethernet { src, dst } => ip_step(PacketBuilder::ethernet2(src, dst), l3),
        L2::Vlan { src, dst, vid } => ip_step(
            PacketBuilder::ethernet2(src, dst).single_vlan(vlan(vid)),
            l3,
        ),
        L2::DoubleVlan {
            src,
            dst,
            outer,
            inner,
        } => ip_step(
            PacketBuilder::ethernet2(src, dst).double_vlan(vlan(outer), vlan(inner)),
            l3,
        ),
        L2::RawIp => match l3 {
            L3::V4 { src, dst } => PacketBuilder::ipv4(src, dst, 64),
            L3::V6 { src, dst } => PacketBuilder::ipv6(src, dst, 64),
        },
    };
    let mut out = Vec::new();
    let written = match (l4, l3) {
        (L4::Udp { sport, dport }, _) => {
            let b = ip.udp(sport, dport);
            out.reserve(b.size(payload.len()));
            b.write(&mut out, payload)
        }
        (
            L4::Tcp {
                sport,
                dport,
                seq,
                flags,
            },
            _,
        ) => {
            let mut b = ip.tcp(sport, dport, seq, 64240);
            if flags.syn {
                b = b.syn();
            }
            if let Some(ack) = flags.ack {
                b = b.ack(ack);
            }
            if flags.psh {
                b = b.psh();
            }
            if flags.rst {
                b = b.rst();
            }
            if flags.fin {
                b = b.fin();
            }
            out.reserve(b.size(payload.len()));
            b.write(&mut out, payload)
        }
        (L4::Echo { id, seq }, L3::V4 { .. }) => {
            ip.icmpv4_echo_request(id, seq).write(&mut out, payload)
        }
        (L4::Echo { id, seq }, L3::V6 { .. }) => {
            ip.icmpv6_echo_request(id, seq).write(&mut out, payload)
        }
    };
    // Writing into a Vec cannot fail for the lengths used here; an error would be a bug in the
    // caller's sizes, and the frame is returned as far as it got.
    if let Err(e) = written {
        tracing::error!(error = %e, "building a frame failed");
    }
    out
}

/// Length of the UDP/TCP header a builder emits (for callers that compute offsets).
pub const UDP_HEADER_LEN: usize = UdpHeader::LEN;
/// Length of a TCP header without options.
pub const TCP_HEADER_LEN: usize = TcpHeader::MIN_LEN;

/// A DNS query message for `name`, type A, class IN, recursion desired, ID 0x1234, no EDNS
/// (the UDP payload; the DNS tests build richer ones with hickory-proto).
pub fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A frame padded (with zero payload) to exactly `len` bytes.
pub fn sized(l2: L2, l3: L3, l4: L4, len: usize) -> Vec<u8> {
    let empty = build(l2, l3, l4, &[]);
    let pad = len.saturating_sub(empty.len());
    build(l2, l3, l4, &vec![0u8; pad])
}

/// A TLS 1.3 ClientHello record shaped like a current browser's: 16 extensions around
/// server_name (`sni`), one of them a 1,216-byte key share (X25519MLKEM768), about 1,900 bytes
/// in all — more than one segment. `sni_after` extensions come before server_name.
pub fn client_hello(sni: &str, sni_after: usize) -> Vec<u8> {
    let mut exts = Vec::new();
    let mut ext = |t: u16, body: &[u8]| {
        exts.extend_from_slice(&t.to_be_bytes());
        exts.extend_from_slice(&(body.len() as u16).to_be_bytes());
        exts.extend_from_slice(body);
    };
    // (type, body length) of the other extensions, in a browser-like order.
    let others: [(u16, usize); 15] = [
        (0x000a, 12),
        (0x000b, 2),
        (0x000d, 18),
        (0x0010, 14),
        (0x0017, 0),
        (0x001b, 3),
        (0x0023, 0),
        (0x002b, 7),
        (0x002d, 2),
        (0x0033, 1263),
        (0x4469, 5),
        (0xfe0d, 186),
        (0xff01, 1),
        (0x0005, 5),
        (0x0012, 0),
    ];
    let name = sni.as_bytes();
    let mut server_name = Vec::new();
    server_name.extend_from_slice(&(name.len() as u16 + 3).to_be_bytes());
    server_name.push(0);
    server_name.extend_from_slice(&(name.len() as u16).to_be_bytes());
    server_name.extend_from_slice(name);
    for (i, (t, len)) in others.iter().enumerate() {
        if i == sni_after {
            ext(0, &server_name);
        }
        ext(*t, &vec![0x5a; *len]);
    }
    if sni_after >= others.len() {
        ext(0, &server_name);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x42; 32]);
    body.push(32);
    body.extend_from_slice(&[0x24; 32]);
    body.extend_from_slice(&[0, 6, 0x13, 1, 0x13, 2, 0x13, 3, 1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut record = vec![22, 3, 1];
    record.extend_from_slice(&(body.len() as u16 + 4).to_be_bytes());
    record.push(1);
    record.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    record.extend_from_slice(&body);
    record
}
