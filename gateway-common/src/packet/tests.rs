//! Unit tests of the L2-L4 parser: every header, every truncation point.

use super::*;
use std::vec::Vec;

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = std::vec![0xff; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0, 0x17]);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4(proto: u8, ihl: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let hlen = ihl as usize * 4;
    let total = (hlen + payload.len()) as u16;
    let mut h = std::vec![0u8; hlen];
    h[0] = 0x40 | ihl;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&[10, 0, 0, 17]);
    h[16..20].copy_from_slice(&[10, 0, 0, 1]);
    h.extend_from_slice(payload);
    h
}

fn ipv6(next: u8, ext: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut h = std::vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&((ext.len() + payload.len()) as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8] = 0xfd;
    h[23] = 0x17;
    h[24] = 0xfd;
    h[39] = 1;
    h.extend_from_slice(ext);
    h.extend_from_slice(payload);
    h
}

fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(data);
    h
}

fn tcp(sport: u16, dport: u16, doff: u8, flags: u8) -> Vec<u8> {
    let mut h = std::vec![0u8; doff as usize * 4];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = doff << 4;
    h[13] = flags;
    h
}

fn all(frame: &[u8], link: LinkType) -> Result<(L2, L3, L4), Reason> {
    let l2 = parse_l2(frame, link).map_err(|e| e.reason)?;
    let l3 = parse_l3(frame, &l2).map_err(|e| e.reason)?;
    let l4 = parse_l4(frame, &l3)?;
    Ok((l2, l3, l4))
}

#[test]
fn ethernet_ipv4_udp() {
    let mut f = eth(ETH_P_IP);
    f.extend(ipv4(IPPROTO_UDP, 5, 0, &udp(5353, 53, b"hello")));
    let (l2, l3, l4) = all(&f, LinkType::Ethernet).expect("parses");
    assert_eq!(l2.src_mac, crate::table::mac_key(&[2, 0, 0, 0, 0, 0x17]));
    assert_eq!(l2.l3_off, 14);
    assert_eq!(l3.src, Addr::from_v4([10, 0, 0, 17]));
    assert_eq!(
        l3.src.to_bytes(),
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 17]
    );
    assert_eq!(l3.l4_off, 34);
    assert_eq!(l3.end(f.len()), f.len());
    assert_eq!(l3.dst(f.as_slice()), Some(Addr::from_v4([10, 0, 0, 1])));
    assert_eq!(
        (l4.src_port(), l4.dst_port(), l4.payload_off),
        (5353, 53, 42)
    );
}

#[test]
fn link_padding_is_not_payload() {
    let mut f = eth(ETH_P_IP);
    f.extend(ipv4(IPPROTO_UDP, 5, 0, &udp(1, 2, b"")));
    let real_end = f.len();
    f.resize(60, 0);
    let (_, l3, _) = all(&f, LinkType::Ethernet).expect("parses");
    assert_eq!(l3.end(f.len()), real_end);
}

/// Ethernet header with one TPID+TCI per entry of `tpids`, then `inner` as the ethertype.
fn tagged(tpids: &[u16], inner: u16) -> Vec<u8> {
    let mut f = eth(0);
    f.truncate(12);
    for (i, tpid) in tpids.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    f.extend_from_slice(&inner.to_be_bytes());
    f
}

#[test]
fn vlan_tags_one_two_and_too_many() {
    for tpids in [
        &[ETH_P_8021Q][..],
        &[ETH_P_8021AD, ETH_P_8021Q],
        &[ETH_P_8021Q, ETH_P_8021Q],
    ] {
        let mut f = tagged(tpids, ETH_P_IP);
        f.extend(ipv4(IPPROTO_UDP, 5, 0, &udp(1, 53, b"")));
        let (l2, l3, l4) = all(&f, LinkType::Ethernet).expect("parses");
        assert_eq!(l2.vlan_tags as usize, tpids.len());
        assert_eq!(l2.l3_off, 14 + 4 * tpids.len());
        assert_eq!(l3.version, 4);
        assert_eq!(l4.dst_port(), 53);
    }
    let mac = Some(crate::table::mac_key(&[2, 0, 0, 0, 0, 0x17]));
    let f = tagged(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q], ETH_P_IP);
    assert_eq!(
        parse_l2(&f[..], LinkType::Ethernet),
        Err(L2Error::new(Reason::VlanLimit, mac))
    );
    // A tag cut in half: still attributed to its sender.
    let f = tagged(&[ETH_P_8021Q], ETH_P_IP);
    assert_eq!(
        parse_l2(&f[..16], LinkType::Ethernet),
        Err(L2Error::new(Reason::TruncatedL2, mac))
    );
    assert_eq!(
        parse_l2(&f[..13], LinkType::Ethernet),
        Err(L2Error::new(Reason::TruncatedL2, None))
    );
}

#[test]
fn raw_ip_frames_start_at_the_ip_header() {
    let f = ipv4(IPPROTO_TCP, 5, 0, &tcp(40000, 443, 5, 0x02));
    let (l2, l3, l4) = all(&f, LinkType::RawIp).expect("parses");
    assert_eq!(l2.l3_off, 0);
    assert_eq!(l3.l4_off, 20);
    assert_eq!(l4.tcp_flags, 0x02);
    let f6 = ipv6(IPPROTO_UDP, &[], &udp(1, 53, b"x"));
    let (l2, l3, l4) = all(&f6, LinkType::RawIp).expect("parses");
    assert_eq!(l2.ethertype, ETH_P_IPV6);
    assert_eq!(l3.src.to_bytes()[0], 0xfd);
    assert_eq!(l3.src.to_bytes()[15], 0x17);
    assert_eq!(Addr::from_bytes(l3.src.to_bytes()), l3.src);
    let dst = l3.dst(f6.as_slice()).expect("in the frame").to_bytes();
    assert_eq!((dst[0], dst[15]), (0xfd, 1));
    assert_eq!(l4.payload_off, 48);
    assert_eq!(
        parse_l2(&[0x50u8][..], LinkType::RawIp).map_err(|e| e.reason),
        Err(Reason::BadL3)
    );
    assert_eq!(
        parse_l2(&[][..], LinkType::RawIp).map_err(|e| e.reason),
        Err(Reason::TruncatedL3)
    );
}

#[test]
fn ipv4_options_and_bad_headers() {
    let f = ipv4(IPPROTO_UDP, 8, 0, &udp(1, 53, b""));
    let (_, l3, l4) = all(&f, LinkType::RawIp).expect("parses");
    assert_eq!(l3.l4_off, 32);
    assert_eq!(l4.dst_port(), 53);
    let mut bad = f.clone();
    bad[0] = 0x44; // IHL 4 < 5
    assert_eq!(all(&bad, LinkType::RawIp).map(|_| ()), Err(Reason::BadL3));
    let mut bad = f.clone();
    bad[2..4].copy_from_slice(&10u16.to_be_bytes()); // total < header
    assert_eq!(all(&bad, LinkType::RawIp).map(|_| ()), Err(Reason::BadL3));
    // Options cut off.
    assert_eq!(
        all(&f[..25], LinkType::RawIp).map(|_| ()),
        Err(Reason::TruncatedL3)
    );
}

#[test]
fn ipv4_fragments() {
    let first = ipv4(IPPROTO_UDP, 5, 0x2000, &udp(1, 53, b""));
    assert_eq!(
        parse_l3(
            &first[..],
            &parse_l2(&first[..], LinkType::RawIp).expect("l2")
        )
        .map(|l| l.fragment),
        Ok(Fragment::First)
    );
    let later = ipv4(IPPROTO_UDP, 5, 0x0010, b"rest-of-datagram");
    let l3 = parse_l3(
        &later[..],
        &parse_l2(&later[..], LinkType::RawIp).expect("l2"),
    )
    .expect("l3");
    assert_eq!(l3.fragment, Fragment::Later);
    let df = ipv4(IPPROTO_UDP, 5, 0x4000, &udp(1, 53, b""));
    let l3 = parse_l3(&df[..], &parse_l2(&df[..], LinkType::RawIp).expect("l2")).expect("l3");
    assert_eq!(l3.fragment, Fragment::None);
}

#[test]
fn ipv6_extension_headers() {
    // Hop-by-hop (8 bytes) then fragment (first) then UDP.
    let mut ext = std::vec![IPPROTO_FRAGMENT, 0, 0, 0, 0, 0, 0, 0];
    ext.extend_from_slice(&[IPPROTO_UDP, 0, 0x00, 0x01, 0, 0, 0, 1]);
    let f = ipv6(IPPROTO_HOPOPTS, &ext, &udp(1, 53, b"q"));
    let (_, l3, l4) = all(&f, LinkType::RawIp).expect("parses");
    assert_eq!(l3.proto, IPPROTO_UDP);
    assert_eq!(l3.fragment, Fragment::First);
    assert_eq!(l3.l4_off, 56);
    assert_eq!(l4.dst_port(), 53);
    // Later fragment.
    let ext = [IPPROTO_UDP, 0, 0x05, 0x00, 0, 0, 0, 1];
    let f = ipv6(IPPROTO_FRAGMENT, &ext, b"data");
    let l3 = parse_l3(&f[..], &parse_l2(&f[..], LinkType::RawIp).expect("l2")).expect("l3");
    assert_eq!(l3.fragment, Fragment::Later);
    // Seven destination-options headers: more than the walk follows.
    let mut ext = Vec::new();
    for i in 0..7 {
        ext.extend_from_slice(&[
            if i == 6 { IPPROTO_UDP } else { IPPROTO_DSTOPTS },
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ]);
    }
    let f = ipv6(IPPROTO_DSTOPTS, &ext, &udp(1, 53, b""));
    let r = parse_l3(&f[..], &parse_l2(&f[..], LinkType::RawIp).expect("l2"));
    let src = parse_l3(
        &ipv6(IPPROTO_UDP, &[], &udp(1, 53, b""))[..],
        &parse_l2(&f[..], LinkType::RawIp).expect("l2"),
    )
    .expect("plain")
    .src;
    // The sender is still known: the packet is attributed to its device.
    assert_eq!(r, Err(L3Error::new(Reason::Ipv6ExtLimit, Some(src))));
    // An extension header cut short: the header, not the transport, is truncated.
    let ext = [IPPROTO_UDP, 0, 0, 0, 0, 0, 0, 0];
    let f = ipv6(IPPROTO_HOPOPTS, &ext, &udp(1, 53, b""));
    for cut in 42..48 {
        let r = parse_l3(
            &f[..cut],
            &parse_l2(&f[..cut], LinkType::RawIp).expect("l2"),
        );
        assert_eq!(
            r.map(|_| ()).map_err(|e| e.reason),
            Err(Reason::TruncatedL3),
            "cut at {cut}"
        );
    }
    // An extension header claiming more than the payload.
    let ext = [IPPROTO_UDP, 200, 0, 0, 0, 0, 0, 0];
    let f = ipv6(IPPROTO_HOPOPTS, &ext, &udp(1, 53, b""));
    let r = parse_l3(&f[..], &parse_l2(&f[..], LinkType::RawIp).expect("l2"));
    assert_eq!(r.map(|_| ()).map_err(|e| e.reason), Err(Reason::BadL3));
    // A truncated fixed header: no sender.
    assert_eq!(
        parse_l3(&f[..30], &parse_l2(&f[..30], LinkType::RawIp).expect("l2")),
        Err(L3Error::new(Reason::TruncatedL3, None))
    );
}

#[test]
fn tcp_header_length() {
    let mut t = tcp(1, 443, 8, 0x18);
    t[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    t[8..12].copy_from_slice(&0xa0b0_c0d0u32.to_be_bytes());
    let f = ipv4(IPPROTO_TCP, 5, 0, &t);
    let (_, l3, l4) = all(&f, LinkType::RawIp).expect("parses");
    assert_eq!(l4.payload_off, 20 + 32);
    assert_eq!(
        tcp_seq_ack(f.as_slice(), l3.l4_off),
        Some((0x0102_0304, 0xa0b0_c0d0))
    );
    let mut bad = f.clone();
    bad[20 + 12] = 4 << 4;
    assert_eq!(
        all(&bad, LinkType::RawIp).map(|_| ()),
        Err(Reason::TruncatedL4)
    );
    assert_eq!(
        all(&f[..45], LinkType::RawIp).map(|_| ()),
        Err(Reason::TruncatedL4)
    );
}

#[test]
fn every_truncation_is_an_error_never_a_panic() {
    let mut v4 = eth(ETH_P_IP);
    v4.extend(ipv4(IPPROTO_TCP, 6, 0, &tcp(1, 443, 6, 0x10)));
    let mut v6 = eth(ETH_P_IPV6);
    v6.extend(ipv6(
        IPPROTO_HOPOPTS,
        &[IPPROTO_UDP, 0, 0, 0, 0, 0, 0, 0],
        &udp(1, 53, b""),
    ));
    for f in [&v4, &v6] {
        assert!(all(f, LinkType::Ethernet).is_ok());
        for cut in 0..f.len() {
            let r = all(&f[..cut], LinkType::Ethernet);
            assert!(r.is_err(), "cut at {cut} parsed");
        }
    }
}

#[test]
fn suspend_exemptions() {
    let l3 = |proto| L3 {
        version: 4,
        proto,
        fragment: Fragment::None,
        l4_off: 0,
        ip_end: 0,
        src: Addr::default(),
        dst_off: 0,
    };
    let udp = |s: u16, d: u16| L4 {
        ports: u32::from(s) << 16 | u32::from(d),
        ..L4::default()
    };
    assert!(is_suspend_exempt(&l3(IPPROTO_UDP), &udp(68, 67)));
    assert!(is_suspend_exempt(&l3(IPPROTO_UDP), &udp(546, 547)));
    assert!(!is_suspend_exempt(&l3(IPPROTO_UDP), &udp(67, 68)));
    assert!(!is_suspend_exempt(&l3(IPPROTO_UDP), &udp(5353, 53)));
    let icmp = |t| L4 {
        icmp_type: t,
        ..L4::default()
    };
    assert!(is_suspend_exempt(&l3(IPPROTO_ICMPV6), &icmp(135)));
    assert!(!is_suspend_exempt(&l3(IPPROTO_ICMPV6), &icmp(128)));
    assert!(!is_suspend_exempt(&l3(IPPROTO_ICMP), &icmp(8)));
}
