//! Checks shared by the kernel fixture tests.

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use gateway_common::enums::LinkType;

/// Checks that `reset` is the TCP reset the kernel builds from segment `query` (sent at `seq`,
/// acknowledging `ack`): RST|ACK only, sequence = what the sender acknowledged, acknowledgement
/// past the segment's data, ports, addresses and MACs swapped, no payload, IPv4 header and TCP
/// checksums (IPv4 and IPv6) valid.
pub fn assert_reset(query: &[u8], reset: &[u8], link: LinkType, seq: u32, ack: u32) {
    let (q, a) = match link {
        LinkType::Ethernet => (
            SlicedPacket::from_ethernet(query),
            SlicedPacket::from_ethernet(reset),
        ),
        LinkType::RawIp => (SlicedPacket::from_ip(query), SlicedPacket::from_ip(reset)),
    };
    let (q, a) = (q.expect("query"), a.expect("reset"));
    let (Some(TransportSlice::Tcp(qt)), Some(TransportSlice::Tcp(at))) =
        (&q.transport, &a.transport)
    else {
        panic!("no TCP")
    };
    assert!(
        at.rst() && at.ack() && !at.syn() && !at.fin() && !at.psh(),
        "RST|ACK only"
    );
    assert_eq!(
        at.sequence_number(),
        ack,
        "seq = what the client acknowledged"
    );
    assert_eq!(
        at.acknowledgment_number(),
        seq.wrapping_add(qt.payload().len() as u32),
        "ack = its data"
    );
    assert_eq!(
        (at.source_port(), at.destination_port()),
        (qt.destination_port(), qt.source_port())
    );
    assert!(at.payload().is_empty() && at.data_offset() == 5);
    let th = at.to_header();
    match (&q.net, &a.net) {
        (Some(NetSlice::Ipv4(qi)), Some(NetSlice::Ipv4(ai))) => {
            let h = ai.header().to_header();
            assert_eq!(
                (h.source, h.destination),
                (qi.header().destination(), qi.header().source())
            );
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            assert_eq!(h.total_len as usize, h.header_len() + 20);
            assert_eq!(
                th.checksum,
                th.calc_checksum_ipv4(&h, &[]).expect("sum"),
                "TCP checksum (IPv4)"
            );
        }
        (Some(NetSlice::Ipv6(qi)), Some(NetSlice::Ipv6(ai))) => {
            let h = ai.header().to_header();
            assert_eq!(
                (h.source, h.destination),
                (qi.header().destination(), qi.header().source())
            );
            assert_eq!(h.payload_length, 20);
            assert_eq!(
                th.checksum,
                th.calc_checksum_ipv6(&h, &[]).expect("sum"),
                "TCP checksum (IPv6)"
            );
        }
        _ => panic!("IP version changed"),
    }
    if link == LinkType::Ethernet {
        assert_eq!(&reset[..6], &query[6..12], "back to the sender's MAC");
    }
}
