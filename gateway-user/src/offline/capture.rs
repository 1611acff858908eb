//! Reading pcap and pcapng captures into frames the filter can run on.
//!
//! The filter sees Ethernet frames or raw IP packets. Captures come in more link types; those
//! that carry the same information are converted: Linux cooked captures (SLL, SLL2) become
//! Ethernet frames with the captured source address, BSD loopback (NULL/LOOP) and the raw-IP
//! types become raw IP.

use std::{borrow::Cow, fs::File, io::BufReader, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use gateway_common::enums::LinkType;
use pcap_file::{
    DataLink,
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
};

/// One frame, ready for the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// 1-based position in the capture (as Wireshark numbers frames).
    pub number: u64,
    pub time: Duration,
    pub link: LinkType,
    pub data: Vec<u8>,
}

/// A captured packet the filter cannot be given, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub number: u64,
    pub why: String,
}

/// Every frame of `path`, in order.
pub fn read(path: &Path) -> anyhow::Result<(Vec<Frame>, Vec<Skipped>)> {
    let mut magic = [0u8; 4];
    {
        use std::io::Read as _;
        File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .with_context(|| format!("{}: cannot read", path.display()))?;
    }
    let file = BufReader::new(
        File::open(path).with_context(|| format!("{}: cannot open", path.display()))?,
    );
    let mut frames = Vec::new();
    let mut skipped = Vec::new();
    let mut push = |number: u64, time: Duration, dl: DataLink, data: &[u8]| -> Option<Skipped> {
        match convert(dl, data) {
            Ok((link, data)) => {
                frames.push(Frame {
                    number,
                    time,
                    link,
                    data: data.into_owned(),
                });
                None
            }
            Err(why) => Some(Skipped { number, why }),
        }
    };
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut reader = PcapNgReader::new(file)
            .with_context(|| format!("{}: not a pcapng file", path.display()))?;
        let mut links: Vec<DataLink> = Vec::new();
        let mut number = 0u64;
        while let Some(block) = reader.next_block() {
            let block = block.with_context(|| {
                format!(
                    "{}: corrupt pcapng block after frame {number}",
                    path.display()
                )
            })?;
            match block {
                Block::InterfaceDescription(idb) => links.push(idb.linktype),
                Block::EnhancedPacket(epb) => {
                    number += 1;
                    match links.get(epb.interface_id as usize) {
                        Some(dl) => skipped.extend(push(number, epb.timestamp, *dl, &epb.data)),
                        None => skipped.push(Skipped {
                            number,
                            why: format!("unknown interface {}", epb.interface_id),
                        }),
                    }
                }
                Block::SimplePacket(spb) => {
                    number += 1;
                    match links.first() {
                        Some(dl) => skipped.extend(push(number, Duration::ZERO, *dl, &spb.data)),
                        None => skipped.push(Skipped {
                            number,
                            why: "no interface description".into(),
                        }),
                    }
                }
                _ => {}
            }
        }
    } else {
        let mut reader = PcapReader::new(file)
            .with_context(|| format!("{}: neither pcap nor pcapng", path.display()))?;
        let dl = reader.header().datalink;
        let mut number = 0u64;
        while let Some(pkt) = reader.next_packet() {
            number += 1;
            let pkt =
                pkt.with_context(|| format!("{}: corrupt packet record {number}", path.display()))?;
            skipped.extend(push(number, pkt.timestamp, dl, &pkt.data));
        }
    }
    Ok((frames, skipped))
}

fn convert(dl: DataLink, data: &[u8]) -> Result<(LinkType, Cow<'_, [u8]>), String> {
    match dl {
        DataLink::ETHERNET => Ok((LinkType::Ethernet, Cow::Borrowed(data))),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => {
            Ok((LinkType::RawIp, Cow::Borrowed(data)))
        }
        // 4-byte address family in the capturing host's byte order, then the IP packet.
        DataLink::NULL | DataLink::LOOP => match data.get(4..) {
            Some(ip) => Ok((LinkType::RawIp, Cow::Borrowed(ip))),
            None => Err("loopback header truncated".into()),
        },
        DataLink::LINUX_SLL => {
            // packet type(2) ARPHRD(2) addr len(2) addr(8) protocol(2)
            let h = data.get(..16).ok_or("SLL header truncated")?;
            let halen = u16::from_be_bytes([h[4], h[5]]) as usize;
            let src = if halen == 6 {
                [h[6], h[7], h[8], h[9], h[10], h[11]]
            } else {
                [0; 6]
            };
            Ok((
                LinkType::Ethernet,
                Cow::Owned(ethernet(src, [h[14], h[15]], &data[16..])),
            ))
        }
        DataLink::LINUX_SLL2 => {
            // protocol(2) reserved(2) ifindex(4) ARPHRD(2) packet type(1) addr len(1) addr(8)
            let h = data.get(..20).ok_or("SLL2 header truncated")?;
            let src = if h[11] == 6 {
                [h[12], h[13], h[14], h[15], h[16], h[17]]
            } else {
                [0; 6]
            };
            Ok((
                LinkType::Ethernet,
                Cow::Owned(ethernet(src, [h[0], h[1]], &data[20..])),
            ))
        }
        other => Err(format!(
            "link type {other:?} is not supported (Ethernet, raw IP, loopback and Linux cooked are)"
        )),
    }
}

fn ethernet(src: [u8; 6], ethertype: [u8; 2], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype);
    f.extend_from_slice(payload);
    f
}

/// Refuses captures that hold nothing the filter can run.
pub fn require_frames(path: &Path, frames: &[Frame], skipped: &[Skipped]) -> anyhow::Result<()> {
    if frames.is_empty() && !skipped.is_empty() {
        bail!(
            "{}: no usable frames ({} skipped: {})",
            path.display(),
            skipped.len(),
            skipped[0].why
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooked_captures_become_ethernet() {
        let mut sll = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 0x17, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(&[0x45; 20]);
        let (link, f) = convert(DataLink::LINUX_SLL, &sll).expect("converts");
        assert_eq!(link, LinkType::Ethernet);
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 0, 0x17]);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f.len(), 14 + 20);
        assert!(convert(DataLink::LINUX_SLL, &sll[..10]).is_err());
        let (link, f) = convert(DataLink::NULL, &[2, 0, 0, 0, 0x45]).expect("converts");
        assert_eq!((link, &f[..]), (LinkType::RawIp, &[0x45u8][..]));
        assert!(convert(DataLink::IEEE802_11, &[0; 40]).is_err());
    }
}
