//! The gateway's XDP filter.
//!
//! One entry point, one exit: `gateway` calls `judge`, which returns the outcome (verdict,
//! reason, device), and `finish` counts it and turns it into the XDP action. `judge` never
//! returns `XDP_ABORTED`: every failure to parse is an outcome with its own reason.
#![no_std]
#![no_main]
// Inline asm (the verifier-shaped bounds check in `packet_bytes`) is unstable on the BPF target.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod device;
mod maps;
mod packet_bytes;

use aya_ebpf::{Global, bindings::xdp_action, macros::xdp, programs::XdpContext};
use gateway_common::{
    enums::{Action, Global as GlobalCounter, LinkType, Proto, Reason, Verdict, stats_index},
    maps::{DecisionKey, NO_CATEGORY, Trace, UNKNOWN_SLOT},
    packet::{
        ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Fragment, is_suspend_exempt, parse_l2, parse_l3, parse_l4,
    },
};

use crate::{device::Device, packet_bytes::PacketBytes};

/// `LinkType` of the interface this instance is attached to. Set at load time; the verifier
/// prunes the other link type's code.
#[unsafe(no_mangle)]
static LINK_TYPE: Global<u32> = Global::new(LinkType::Ethernet as u32);

/// Non-zero: record every outcome in `TRACE` (replay and fixtures only).
#[unsafe(no_mangle)]
static TRACE_ENABLED: Global<u32> = Global::new(0);

/// What happens to a frame, and why.
#[derive(Clone, Copy)]
struct Outcome {
    verdict: Verdict,
    reason: Reason,
    slot: u32,
    policy: u32,
}

impl Outcome {
    #[inline(always)]
    fn new(dev: &Device, verdict: Verdict, reason: Reason) -> Self {
        Self {
            verdict,
            reason,
            slot: dev.slot,
            policy: dev.policy,
        }
    }
}

#[xdp]
pub fn gateway(ctx: XdpContext) -> u32 {
    let out = judge(&ctx);
    finish(&ctx, &out)
}

#[inline(always)]
fn judge(ctx: &XdpContext) -> Outcome {
    let pkt = PacketBytes::new(ctx);
    let Some((generation, settings)) = maps::active() else {
        return Outcome {
            verdict: Verdict::Pass,
            reason: Reason::Uninspected,
            slot: UNKNOWN_SLOT,
            policy: 0,
        };
    };
    let link = if LINK_TYPE.load() == LinkType::RawIp as u32 {
        LinkType::RawIp
    } else {
        LinkType::Ethernet
    };
    let mut dev = Device::unknown(settings);

    let l2 = match parse_l2(&pkt, link) {
        Ok(l2) => l2,
        Err(e) => {
            if let Some(mac) = e.src_mac {
                dev.by_mac(generation, settings, &mac);
                if dev.suspended() {
                    return suspended(&dev);
                }
            }
            return Outcome::new(&dev, Verdict::Pass, e.reason);
        }
    };
    if link == LinkType::Ethernet {
        dev.by_mac(generation, settings, &l2.src_mac);
    }
    if l2.ethertype != ETH_P_IP && l2.ethertype != ETH_P_IPV6 {
        if dev.suspended() {
            return if l2.ethertype == ETH_P_ARP {
                Outcome::new(&dev, Verdict::Pass, Reason::SuspendedExempt)
            } else {
                suspended(&dev)
            };
        }
        return Outcome::new(&dev, Verdict::Pass, Reason::NonIp);
    }

    let l3 = match parse_l3(&pkt, &l2) {
        Ok(l3) => l3,
        Err(e) => {
            if let Some(src) = e.src {
                dev.by_address(generation, settings, &src);
            }
            if dev.suspended() {
                return suspended(&dev);
            }
            return Outcome::new(&dev, Verdict::Pass, e.reason);
        }
    };
    dev.by_address(generation, settings, &l3.src);

    if dev.suspended() {
        if l3.fragment != Fragment::Later
            && let Ok(l4) = parse_l4(&pkt, &l3)
            && is_suspend_exempt(&l3, &l4)
        {
            return Outcome::new(&dev, Verdict::Pass, Reason::SuspendedExempt);
        }
        return suspended(&dev);
    }
    if l3.fragment == Fragment::Later {
        return Outcome::new(&dev, Verdict::Pass, Reason::Fragment);
    }
    if let Err(reason) = parse_l4(&pkt, &l3) {
        return Outcome::new(&dev, Verdict::Pass, reason);
    }
    Outcome::new(&dev, Verdict::Pass, Reason::Uninspected)
}

/// A suspended device's frame: dropped, and counted as a decision on the device.
#[inline(always)]
fn suspended(dev: &Device) -> Outcome {
    let key = DecisionKey {
        slot: dev.slot,
        proto: Proto::Suspended as u8,
        action: Action::Block as u8,
        reason: Reason::Suspended as u8,
        category: NO_CATEGORY,
    };
    if !maps::count_decision(&key) {
        maps::count_global(GlobalCounter::DecisionMapFull);
    }
    Outcome::new(dev, Verdict::Drop, Reason::Suspended)
}

/// The one exit: counts the outcome and returns its XDP action.
#[inline(always)]
fn finish(ctx: &XdpContext, out: &Outcome) -> u32 {
    let bytes = ctx.data_end().wrapping_sub(ctx.data()) as u64;
    maps::count_stats(stats_index(out.reason, out.verdict), bytes);
    maps::count_device(out.slot, bytes, out.verdict != Verdict::Pass);
    if TRACE_ENABLED.load() != 0 {
        maps::trace(&Trace {
            seq: 0,
            verdict: out.verdict as u32,
            reason: out.reason as u32,
            slot: out.slot,
            policy: out.policy,
            _pad: 0,
        });
    }
    match out.verdict {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Tx => xdp_action::XDP_TX,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
