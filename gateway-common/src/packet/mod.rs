//! Link, network and transport headers: the first parser every frame goes through.
//!
//! Three stages, so the kernel can identify the device (which needs L2 and L3) before it decides
//! how much of L4 it needs. Every offset is derived from a header length that is masked or
//! bounded, and every loop has a constant bound, so the verifier can follow each read.

use crate::{bytes::Bytes, enums::LinkType, enums::Reason};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const VLAN_HLEN: usize = 4;
/// VLAN tags followed (802.1ad outer + 802.1Q inner).
pub const MAX_VLAN_TAGS: usize = 2;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 extension headers followed before giving up.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
pub const TCP_HLEN: usize = 20;

/// What the link layer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2 {
    /// Offset of the network header.
    pub l3_off: usize,
    /// Ethertype after the VLAN tags (`ETH_P_IP`/`ETH_P_IPV6` for raw IP).
    pub ethertype: u16,
    /// VLAN tags skipped.
    pub vlan_tags: u8,
    /// Source MAC as the device table keys it (`table::mac_key`: byte 0 lowest, 48 bits; zero
    /// on raw-IP links). Read with one word load.
    pub src_mac: u64,
}

/// Fragment position of an IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented.
    None,
    /// First fragment: carries the transport header.
    First,
    /// Later fragment: no transport header.
    Later,
}

/// What the network layer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L3 {
    /// 4 or 6.
    pub version: u8,
    /// Transport protocol (after IPv6 extension headers).
    pub proto: u8,
    pub fragment: Fragment,
    /// Offset of the transport header.
    pub l4_off: usize,
    /// End of the IP packet as its header declares it (total length). May lie past the frame
    /// (a truncated packet) and before it (link padding): `end` clamps it to the frame.
    pub ip_end: usize,
    /// Source address; IPv4 is IPv4-mapped (`::ffff:a.b.c.d`).
    pub src: Addr,
    /// Offset of the destination address (4 bytes for IPv4, 16 for IPv6). Read by `dst` where
    /// a path needs it: most frames never do, and carrying the address costs every frame.
    pub dst_off: usize,
}

impl L3 {
    /// End of the IP packet within the frame of `size` bytes: link padding is not payload.
    #[inline(always)]
    pub fn end(&self, size: usize) -> usize {
        if self.ip_end < size {
            self.ip_end
        } else {
            size
        }
    }

    /// Destination address (IPv4-mapped for IPv4). `None` only if the header is not in `b`,
    /// which `parse_l3` has checked.
    #[inline(always)]
    pub fn dst<B: Bytes + ?Sized>(&self, b: &B) -> Option<Addr> {
        if self.version == 4 {
            b.read::<4>(self.dst_off).map(Addr::from_v4)
        } else {
            b.read::<16>(self.dst_off).map(Addr::from_bytes)
        }
    }
}

/// An IPv6 or IPv4-mapped address as two `u64` holding its 16 network-order bytes in
/// little-endian order: the form the address table keys on. Built from word loads, and compared
/// and hashed as two words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Addr(pub [u64; 2]);

impl Addr {
    /// `::ffff:a.b.c.d`.
    #[inline(always)]
    pub const fn from_v4(v4: [u8; 4]) -> Self {
        Self::from_v4_word(u32::from_le_bytes(v4))
    }

    /// `::ffff:a.b.c.d` from the address's 4 bytes loaded as a little-endian word.
    #[inline(always)]
    pub const fn from_v4_word(w: u32) -> Self {
        Self([0, 0xffff_0000 | (w as u64) << 32])
    }

    /// From the 16 bytes of an IPv6 or IPv4-mapped address.
    #[inline(always)]
    pub const fn from_bytes(a: [u8; 16]) -> Self {
        Self([
            u64::from_le_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
            u64::from_le_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
        ])
    }

    /// The 16 bytes, in network order.
    #[inline(always)]
    pub const fn to_bytes(self) -> [u8; 16] {
        let a = self.0[0].to_le_bytes();
        let b = self.0[1].to_le_bytes();
        [
            a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5],
            b[6], b[7],
        ]
    }

    /// The unspecified address `::`.
    #[inline(always)]
    pub const fn is_unspecified(self) -> bool {
        self.0[0] == 0 && self.0[1] == 0
    }

    /// A multicast or broadcast destination: IPv6 `ff00::/8`, IPv4 `224.0.0.0/4` and
    /// `255.255.255.255`.
    #[inline(always)]
    pub const fn is_multicast(self) -> bool {
        if self.0[0] as u8 == 0xff {
            return true;
        }
        if self.0[0] != 0 || self.0[1] as u32 != 0xffff_0000 {
            return false;
        }
        let first = (self.0[1] >> 32) as u8;
        first & 0xf0 == 0xe0 || self.0[1] >> 32 == 0xffff_ffff
    }
}

/// What the transport layer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct L4 {
    /// Source port (high 16 bits) and destination port (low 16), as the header's first 4 bytes
    /// read big-endian: one value to carry, and the form `flow_slot` hashes.
    pub ports: u32,
    /// Offset of the transport payload.
    pub payload_off: usize,
    /// TCP flags (TCP only).
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type (ICMP only).
    pub icmp_type: u8,
}

impl L4 {
    #[inline(always)]
    pub const fn src_port(&self) -> u16 {
        (self.ports >> 16) as u16
    }

    #[inline(always)]
    pub const fn dst_port(&self) -> u16 {
        self.ports as u16
    }
}

/// The sequence and acknowledgement numbers of the TCP header at `l4_off`. Not part of
/// `parse_l4`: only the DNS and TLS paths need them, and carrying them costs every TCP frame.
#[inline(always)]
pub fn tcp_seq_ack<B: Bytes + ?Sized>(b: &B, l4_off: usize) -> Option<(u32, u32)> {
    let h = b.read::<8>(l4_off + 4)?;
    Some((
        u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
        u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
    ))
}

/// TCP flag bits.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A link layer that could not be followed. The source MAC is kept when the Ethernet header
/// itself was complete, so the frame is still attributed to its device (a suspended device must
/// not get frames through by malforming their VLAN tags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2Error {
    pub reason: Reason,
    /// As `L2::src_mac`.
    pub src_mac: Option<u64>,
}

impl L2Error {
    const fn new(reason: Reason, src_mac: Option<u64>) -> Self {
        Self { reason, src_mac }
    }
}

/// Parses the link layer. On Ethernet, follows up to `MAX_VLAN_TAGS` tags.
#[inline(always)]
pub fn parse_l2<B: Bytes + ?Sized>(b: &B, link: LinkType) -> Result<L2, L2Error> {
    match link {
        LinkType::RawIp => {
            let first = b.u8_at(0).ok_or(L2Error::new(Reason::TruncatedL3, None))?;
            let ethertype = match first >> 4 {
                4 => ETH_P_IP,
                6 => ETH_P_IPV6,
                _ => return Err(L2Error::new(Reason::BadL3, None)),
            };
            Ok(L2 {
                l3_off: 0,
                ethertype,
                vlan_tags: 0,
                src_mac: 0,
            })
        }
        LinkType::Ethernet => {
            // Source MAC and ethertype, the end of the header: one word (the destination MAC
            // is not needed).
            let tail = u64::from_le_bytes(
                b.read::<8>(ETH_HLEN - 8)
                    .ok_or(L2Error::new(Reason::TruncatedL2, None))?,
            );
            let src_mac = tail & 0xffff_ffff_ffff;
            let mut ethertype = ((tail >> 48) as u16).swap_bytes();
            let mut off = ETH_HLEN;
            let mut vlan_tags = 0u8;
            // Constant bound: the verifier sees at most MAX_VLAN_TAGS iterations.
            for _ in 0..MAX_VLAN_TAGS {
                if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
                    break;
                }
                // The tag is TCI (2 bytes) then the encapsulated ethertype (2 bytes).
                ethertype = b
                    .be16_at(off + 2)
                    .ok_or(L2Error::new(Reason::TruncatedL2, Some(src_mac)))?;
                off += VLAN_HLEN;
                vlan_tags += 1;
            }
            if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
                return Err(L2Error::new(Reason::VlanLimit, Some(src_mac)));
            }
            Ok(L2 {
                l3_off: off,
                ethertype,
                vlan_tags,
                src_mac,
            })
        }
    }
}

/// A network header that could not be followed. The source address is kept when the fixed
/// header was complete, so the packet is still attributed to its device (a suspended device must
/// not get packets through by piling up extension headers or malforming options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L3Error {
    pub reason: Reason,
    pub src: Option<Addr>,
}

impl L3Error {
    const fn new(reason: Reason, src: Option<Addr>) -> Self {
        Self { reason, src }
    }
}

/// Parses the IPv4 or IPv6 header at `l2.l3_off`. Call only when `l2.ethertype` is IP.
#[inline(always)]
pub fn parse_l3<B: Bytes + ?Sized>(b: &B, l2: &L2) -> Result<L3, L3Error> {
    if l2.ethertype == ETH_P_IP {
        parse_ipv4(b, l2.l3_off)
    } else {
        parse_ipv6(b, l2.l3_off)
    }
}

#[inline(always)]
fn parse_ipv4<B: Bytes + ?Sized>(b: &B, off: usize) -> Result<L3, L3Error> {
    let h = b
        .read::<IPV4_HLEN>(off)
        .ok_or(L3Error::new(Reason::TruncatedL3, None))?;
    // Fields taken from two words, not byte by byte: the kernel then loads two words.
    let [w0, w1] = head_words(&h);
    let first = w0 as u8;
    if first >> 4 != 4 {
        return Err(L3Error::new(Reason::BadL3, None));
    }
    let src = Addr::from_v4_word((w1 >> 32) as u32);
    let fail = |reason| L3Error::new(reason, Some(src));
    // IHL is 4 bits: the header is at most 60 bytes, which bounds every later offset.
    let hlen = ((first & 0x0f) as usize) * 4;
    if hlen < IPV4_HLEN {
        return Err(fail(Reason::BadL3));
    }
    let total = ((w0 >> 16) as u16).swap_bytes() as usize;
    if total < hlen {
        return Err(fail(Reason::BadL3));
    }
    // Options must be present in the frame.
    if hlen > IPV4_HLEN {
        b.u8_at(off + hlen - 1).ok_or(fail(Reason::TruncatedL3))?;
    }
    // Flags and fragment offset, bytes 6-7, tested in the word's byte order: offset bits
    // 0xff1f, more-fragments 0x0020 (0x1fff and 0x2000 in network order).
    let frag = (w0 >> 48) as u16;
    let fragment = if frag & 0xff1f != 0 {
        Fragment::Later
    } else if frag & 0x0020 != 0 {
        Fragment::First
    } else {
        Fragment::None
    };
    Ok(L3 {
        version: 4,
        proto: (w1 >> 8) as u8,
        fragment,
        l4_off: off + hlen,
        ip_end: off + total,
        src,
        dst_off: off + 16,
    })
}

/// The first 16 bytes of a header as two little-endian words. Parsers take fields from these
/// rather than from single bytes, so the kernel reads two words instead of one byte per field.
#[inline(always)]
fn head_words<const N: usize>(h: &[u8; N]) -> [u64; 2] {
    match h.split_first_chunk::<8>() {
        Some((a, rest)) => match rest.first_chunk::<8>() {
            Some(b) => [u64::from_le_bytes(*a), u64::from_le_bytes(*b)],
            None => [u64::from_le_bytes(*a), 0],
        },
        None => [0, 0],
    }
}

/// The 8 bytes of `h` at `at` (a constant offset within the IPv6 header).
#[inline(always)]
fn word(h: &[u8; IPV6_HLEN], at: usize) -> [u8; 8] {
    let mut w = [0u8; 8];
    let mut i = 0;
    while i < 8 {
        if let Some(b) = h.get(at + i) {
            w[i] = *b;
        }
        i += 1;
    }
    w
}

#[inline(always)]
fn parse_ipv6<B: Bytes + ?Sized>(b: &B, off: usize) -> Result<L3, L3Error> {
    let h = b
        .read::<IPV6_HLEN>(off)
        .ok_or(L3Error::new(Reason::TruncatedL3, None))?;
    if h[0] >> 4 != 6 {
        return Err(L3Error::new(Reason::BadL3, None));
    }
    let src = Addr([
        u64::from_le_bytes(word(&h, 8)),
        u64::from_le_bytes(word(&h, 16)),
    ]);
    let fail = |reason| L3Error::new(reason, Some(src));
    let payload = u16::from_be_bytes([h[4], h[5]]) as usize;
    let end = off + IPV6_HLEN + payload;
    let mut proto = h[6];
    let mut l4_off = off + IPV6_HLEN;
    let mut fragment = Fragment::None;
    let mut done = false;
    // Constant bound on the extension-header walk; each header adds at most 2 KiB to the offset.
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        // Verifier (6.1): the offset masked anew each round (a no-op: it stays below `end`).
        // After some rounds 6.1 keeps it with bounds that contradict themselves (umin 62, umax
        // 54, on a path that cannot happen) and then loses the packet pointer made from it ("R5
        // invalid mem access 'scalar'"); the mask rebuilds consistent bounds. `opaque` keeps
        // LLVM from dropping it.
        l4_off = crate::bytes::opaque(l4_off) & 0x1_ffff;
        let start = l4_off;
        match proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let e = b.read::<2>(l4_off).ok_or(fail(Reason::TruncatedL3))?;
                proto = e[0];
                l4_off += (e[1] as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let e = b.read::<2>(l4_off).ok_or(fail(Reason::TruncatedL3))?;
                proto = e[0];
                l4_off += (e[1] as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let e = b.read::<4>(l4_off).ok_or(fail(Reason::TruncatedL3))?;
                proto = e[0];
                let offset_flags = u16::from_be_bytes([e[2], e[3]]);
                fragment = if offset_flags & 0xfff8 != 0 {
                    Fragment::Later
                } else if offset_flags & 1 != 0 {
                    Fragment::First
                } else {
                    // An atomic fragment (offset 0, no more fragments) is a whole packet.
                    fragment
                };
                l4_off += 8;
            }
            _ => {
                done = true;
                break;
            }
        }
        // An extension header longer than the IP payload is malformed; one longer than what
        // the frame holds is truncated.
        if l4_off > end {
            return Err(fail(Reason::BadL3));
        }
        if l4_off > start {
            b.u8_at(l4_off - 1).ok_or(fail(Reason::TruncatedL3))?;
        }
    }
    if !done {
        match proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
                return Err(fail(Reason::Ipv6ExtLimit));
            }
            _ => {}
        }
    }
    Ok(L3 {
        version: 6,
        proto,
        fragment,
        l4_off,
        ip_end: end,
        src,
        dst_off: off + 24,
    })
}

/// Parses the transport header. Call only when `l3.fragment != Fragment::Later`. Protocols other
/// than TCP, UDP, ICMP and ICMPv6 return a default `L4` with the payload at the transport offset.
#[inline(always)]
pub fn parse_l4<B: Bytes + ?Sized>(b: &B, l3: &L3) -> Result<L4, Reason> {
    let off = l3.l4_off;
    match l3.proto {
        IPPROTO_UDP => {
            let h = b.read::<UDP_HLEN>(off).ok_or(Reason::TruncatedL4)?;
            Ok(L4 {
                ports: u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
                payload_off: off + UDP_HLEN,
                ..L4::default()
            })
        }
        IPPROTO_TCP => {
            let h = b.read::<TCP_HLEN>(off).ok_or(Reason::TruncatedL4)?;
            let [w0, w1] = head_words(&h);
            // Data offset is 4 bits: the header is at most 60 bytes.
            let hlen = (((w1 >> 32) as u8 >> 4) as usize) * 4;
            if hlen < TCP_HLEN {
                return Err(Reason::TruncatedL4);
            }
            if hlen > TCP_HLEN {
                b.u8_at(off + hlen - 1).ok_or(Reason::TruncatedL4)?;
            }
            Ok(L4 {
                ports: (w0 as u32).swap_bytes(),
                payload_off: off + hlen,
                tcp_flags: (w1 >> 40) as u8,
                icmp_type: 0,
            })
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let h = b.read::<4>(off).ok_or(Reason::TruncatedL4)?;
            Ok(L4 {
                payload_off: off + 4,
                icmp_type: h[0],
                ..L4::default()
            })
        }
        _ => Ok(L4 {
            payload_off: off,
            ..L4::default()
        }),
    }
}

/// DHCP, DHCPv6 and NDP: what a suspended device may still send, so it keeps its address and
/// can be resumed without a reconnect. (ARP is decided from the ethertype.)
#[inline(always)]
pub fn is_suspend_exempt(l3: &L3, l4: &L4) -> bool {
    match l3.proto {
        // DHCP client -> server; DHCPv6 client -> server.
        IPPROTO_UDP => l4.ports == 68 << 16 | 67 || l4.ports == 546 << 16 | 547,
        // Router/neighbour solicitation and advertisement, redirect (133..=137).
        IPPROTO_ICMPV6 => l4.icmp_type >= 133 && l4.icmp_type <= 137,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
