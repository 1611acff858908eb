//! The gateway's XDP filter.
//!
//! One entry point, one exit: `gateway` calls `judge`, which returns the outcome (verdict,
//! reason, device), and `finish` counts it and turns it into the XDP action. `judge` never
//! returns `XDP_ABORTED`: every failure to parse is an outcome with its own reason.
#![no_std]
#![no_main]
// Inline asm (the verifier-shaped bounds check in `packet_bytes`) is unstable on the BPF target.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod answer;
mod device;
mod dns;
mod dns_tcp;
mod http;
mod maps;
mod packet_bytes;
mod programs;
mod safe_search;
mod tls;

use aya_ebpf::{Global, bindings::xdp_action, macros::xdp, programs::XdpContext};
use gateway_common::bytes::Bytes as _;
use gateway_common::{
    domain::{DNS_HEADER, is_query_shaped},
    enums::{Action, Global as GlobalCounter, LinkType, Proto, Reason, Verdict, stats_index},
    maps::{
        DecisionKey, GenSettings, NO_CATEGORY, POLICY_BLOCK_PORTS, POLICY_MONITOR,
        POLICY_QUIC_BLOCK, SETTINGS_HAS_BLOCK_PORTS, SETTINGS_HTTP_PORTS, SETTINGS_TLS_PORTS,
        TRACE_LOG, TRACE_MAP, TRACE_NO_ACTION, Trace, UNKNOWN_SLOT, block_port_key, flow_slot,
    },
    packet::{
        ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Fragment, IPPROTO_TCP, IPPROTO_UDP, L2, L3, L4, TCP_ACK,
        TCP_FIN, TCP_RST, TCP_SYN, is_suspend_exempt, parse_l2, parse_l3, parse_l4,
    },
    tls::may_start_hello,
};

use crate::{device::Device, packet_bytes::PacketBytes};

/// `LinkType` of the interface this instance is attached to. Set at load time; the verifier
/// prunes the other link type's code.
#[unsafe(no_mangle)]
static LINK_TYPE: Global<u32> = Global::new(LinkType::Ethernet as u32);

/// What is recorded of every outcome besides the counters (`TRACE_MAP`, `TRACE_LOG`); 0 in
/// production. Set at load time: the verifier prunes what is off.
#[unsafe(no_mangle)]
static TRACE_FLAGS: Global<u32> = Global::new(0);

/// What happens to a frame, and why.
#[derive(Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) verdict: Verdict,
    pub(crate) reason: Reason,
    pub(crate) slot: u32,
    pub(crate) policy: u32,
    /// `Action` of a decision on a name or device, or `TRACE_NO_ACTION`.
    pub(crate) action: u32,
}

impl Outcome {
    /// Passed before anything about the frame was known (the scratch map missing,
    /// which array maps cannot be): counted as uninspected traffic of unknown devices.
    #[inline(always)]
    pub(crate) const fn unjudged() -> Self {
        Self {
            verdict: Verdict::Pass,
            reason: Reason::Uninspected,
            slot: UNKNOWN_SLOT,
            policy: 0,
            action: TRACE_NO_ACTION,
        }
    }

    #[inline(always)]
    pub(crate) fn new(dev: &Device, verdict: Verdict, reason: Reason) -> Self {
        Self {
            verdict,
            reason,
            slot: dev.slot,
            policy: dev.policy,
            action: TRACE_NO_ACTION,
        }
    }
}

#[xdp]
// Verifier (6.1): inlined into the entry point the macro makes, not called as a subprogram.
// Old verifiers give up on tracing a value's precision across a subprogram call and mark
// every scalar precise, which stops states from being pruned.
#[inline(always)]
pub fn gateway(ctx: XdpContext) -> u32 {
    let out = judge(&ctx);
    finish(&ctx, &out)
}

/// The DNS program: tail-called by `gateway` for UDP to port 53, with its findings in scratch.
#[xdp]
// Verifier (6.1): inlined into the entry point the macro makes, not called as a subprogram.
// Old verifiers give up on tracing a value's precision across a subprogram call and mark
// every scalar precise, which stops states from being pruned.
#[inline(always)]
pub fn gateway_dns(ctx: XdpContext) -> u32 {
    let out = programs::judge_dns(&ctx);
    finish(&ctx, &out)
}

/// The TLS program: tail-called by `gateway` for TCP segments with payload to port 443 that
/// start a record or belong to a flow with state.
#[xdp]
// Verifier (6.1): inlined into the entry point the macro makes, not called as a subprogram.
// Old verifiers give up on tracing a value's precision across a subprogram call and mark
// every scalar precise, which stops states from being pruned.
#[inline(always)]
pub fn gateway_tls(ctx: XdpContext) -> u32 {
    let out = programs::judge_tls(&ctx);
    finish(&ctx, &out)
}

/// The DNS-over-TCP program: tail-called by `gateway` for TCP segments to port 53 that carry
/// data or open a connection, and by itself for the next message of a segment.
#[xdp]
// Verifier (6.1): inlined into the entry point the macro makes, not called as a subprogram.
// Old verifiers give up on tracing a value's precision across a subprogram call and mark
// every scalar precise, which stops states from being pruned.
#[inline(always)]
pub fn gateway_dns_tcp(ctx: XdpContext) -> u32 {
    let out = programs::judge_dns_tcp(&ctx);
    finish(&ctx, &out)
}

/// The DNS message program: tail-called by `gateway_dns_tcp` when a message's start is whole;
/// judges it, and tail-calls `gateway_dns_tcp` again for the rest of the segment.
#[xdp]
// Verifier (6.1): inlined into the entry point the macro makes, not called as a subprogram.
// Old verifiers give up on tracing a value's precision across a subprogram call and mark
// every scalar precise, which stops states from being pruned.
#[inline(always)]
pub fn gateway_dns_msg(ctx: XdpContext) -> u32 {
    let out = programs::judge_dns_msg(&ctx);
    finish(&ctx, &out)
}

/// The plain-HTTP program: tail-called by `gateway` for TCP segments with payload to an HTTP
/// port that may start a request or belong to a blocked flow, and by itself for the next
/// request of a segment.
#[xdp]
// Verifier (6.1): inlined into the entry point the macro makes, not called as a subprogram.
// Old verifiers give up on tracing a value's precision across a subprogram call and mark
// every scalar precise, which stops states from being pruned.
#[inline(always)]
pub fn gateway_http(ctx: XdpContext) -> u32 {
    let out = programs::judge_http(&ctx);
    finish(&ctx, &out)
}

#[inline(always)]
fn judge(ctx: &XdpContext) -> Outcome {
    let pkt = PacketBytes::new(ctx);
    let (generation, settings) = maps::active();
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
                dev.by_mac(generation, settings, mac);
                if dev.suspended() {
                    return suspended(&dev);
                }
            }
            return Outcome::new(&dev, Verdict::Pass, e.reason);
        }
    };
    if link == LinkType::Ethernet {
        dev.by_mac(generation, settings, l2.src_mac);
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
    let l4 = match parse_l4(&pkt, &l3) {
        Ok(l4) => l4,
        // A first fragment that ends inside its transport header (RFC 1858: the TCP flags, or
        // the UDP ports, in the next fragment).
        Err(_) if l3.fragment == Fragment::First => {
            let flags = maps::policy(generation, dev.policy).flags;
            return decided(&dev, Proto::Port, Reason::FragmentTooSmall, flags, true);
        }
        Err(reason) => return Outcome::new(&dev, Verdict::Pass, reason),
    };
    if l3.fragment == Fragment::First
        && let Some(out) = first_fragment(&pkt, &l3, &l4, generation, settings, &dev)
    {
        return out;
    }
    // DNS over UDP: to port 53, or DNS-shaped to another port (two compares for most frames).
    let udp = l3.proto == IPPROTO_UDP;
    if udp && (l4.dst_port() == 53 || is_dns_shaped(&pkt, &l3, &l4)) {
        // Hand over to the DNS program (verified on its own); it counts and returns the verdict.
        hand_over(ctx, &pkt, &l2, &l3, &l4, generation, &dev, maps::PROG_DNS);
        // No DNS program loaded (or scratch missing): the query is passed, and counted so.
        return Outcome::new(&dev, Verdict::Pass, Reason::Uninspected);
    }
    // Most frames go to a port no path looks at: three compares and out.
    if l4.dst_port() != 53
        && l4.dst_port() != DEFAULT_TLS_PORT
        && l4.dst_port() != DEFAULT_HTTP_PORT
        && settings.flags & (SETTINGS_HAS_BLOCK_PORTS | SETTINGS_TLS_PORTS | SETTINGS_HTTP_PORTS)
            == 0
    {
        return Outcome::new(&dev, Verdict::Pass, Reason::Uninspected);
    }
    let tcp = l3.proto == IPPROTO_TCP;
    let has_payload = l4.payload_off < l3.end(pkt.size());
    let syn = l4.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // DNS over TCP: segments that carry data, and SYNs (the stream starts there); the rest of
    // the handshake passes.
    if tcp && l4.dst_port() == 53 && (has_payload || syn) {
        hand_over(
            ctx,
            &pkt,
            &l2,
            &l3,
            &l4,
            generation,
            &dev,
            maps::PROG_DNS_TCP,
        );
        return Outcome::new(&dev, Verdict::Pass, Reason::Uninspected);
    }
    if settings.flags & SETTINGS_HAS_BLOCK_PORTS != 0 {
        let policy = maps::policy(generation, dev.policy);
        if policy.flags & POLICY_BLOCK_PORTS != 0
            && maps::port_blocked(block_port_key(
                generation,
                dev.policy,
                l3.proto,
                l4.dst_port(),
            ))
        {
            return decided(&dev, Proto::Port, Reason::BlockedPort, policy.flags, true);
        }
    }
    // No payload (the frame's own end is checked where the payload is read). A SYN to a TLS
    // port starts the flow's state: its first payload bytes are then taken in order only.
    if l4.payload_off >= l3.ip_end {
        if tcp && syn && is_tls_port(generation, settings, l4.dst_port()) {
            tls::start_flow(&pkt, &l3, &l4);
        } else if tcp
            && syn
            && is_http_port(generation, settings, l4.dst_port())
            && maps::flow_marked(flow_slot(&l3.src, l4.ports))
        {
            http::reopen(&pkt, &l3, &l4);
        } else if tcp
            && l4.tcp_flags & (TCP_RST | TCP_FIN) != 0
            && is_tls_port(generation, settings, l4.dst_port())
            && maps::flow_marked(flow_slot(&l3.src, l4.ports))
        {
            // The device ends a connection that still has state (one that never sent its
            // ClientHello: a scan, the loser of a happy-eyeballs race): the state and its mark
            // go, so marks do not pile up behind states the LRU map would evict.
            tls::end_flow(&pkt, &l3, &l4);
        }
        return Outcome::new(&dev, Verdict::Pass, Reason::Uninspected);
    }
    if tcp {
        // TLS: a segment that may start a ClientHello, or one of a flow with state (a walk
        // that continues, a blocked flow). Data segments of decided flows stop here.
        if is_tls_port(generation, settings, l4.dst_port())
            && (pkt.u8_at(l4.payload_off).is_some_and(may_start_hello)
                || maps::flow_marked(flow_slot(&l3.src, l4.ports)))
        {
            hand_over(ctx, &pkt, &l2, &l3, &l4, generation, &dev, maps::PROG_TLS);
        } else if is_http_port(generation, settings, l4.dst_port())
            && (pkt
                .u8_at(l4.payload_off)
                .is_some_and(http::may_start_request)
                || maps::flow_marked(flow_slot(&l3.src, l4.ports)))
        {
            hand_over(ctx, &pkt, &l2, &l3, &l4, generation, &dev, maps::PROG_HTTP);
        }
    } else if udp && l4.dst_port() == QUIC_PORT && is_quic_initial(&pkt, l4.payload_off) {
        let policy = maps::policy(generation, dev.policy);
        let block = policy.flags & POLICY_QUIC_BLOCK != 0;
        return decided(&dev, Proto::Quic, Reason::Quic, policy.flags, block);
    }
    Outcome::new(&dev, Verdict::Pass, Reason::Uninspected)
}

/// Whether TCP port `port` is a TLS port of `generation`.
#[inline(always)]
fn is_tls_port(generation: u32, settings: &GenSettings, port: u16) -> bool {
    if settings.flags & SETTINGS_TLS_PORTS != 0 {
        maps::tls_port(generation, port)
    } else {
        port == DEFAULT_TLS_PORT
    }
}

/// Whether TCP port `port` is a plain-HTTP port of `generation`.
#[inline(always)]
fn is_http_port(generation: u32, settings: &GenSettings, port: u16) -> bool {
    if settings.flags & SETTINGS_HTTP_PORTS != 0 {
        maps::http_port(generation, port)
    } else {
        port == DEFAULT_HTTP_PORT
    }
}

/// Whether a UDP datagram to a port other than 53 is a DNS query by its shape (a query
/// header, `gateway_common::domain::is_query_shaped`) to a unicast address: judged like one to
/// port 53. Multicast (mDNS, LLMNR) stays on the link and is left alone.
#[inline(always)]
fn is_dns_shaped(pkt: &PacketBytes, l3: &L3, l4: &L4) -> bool {
    let Some(h) = pkt.read::<DNS_HEADER>(l4.payload_off) else {
        return false;
    };
    is_query_shaped(&h) && l3.dst(pkt).is_some_and(|a| !a.is_multicast())
}

/// A first fragment (more follow) that ends before what its port's decision needs is dropped:
/// its later fragments, which the filter cannot attribute to a port, would carry the question
/// or the ClientHello past it (RFC 1858). That is any fragment of a TCP segment to port 53 or a
/// TLS port (TCP stacks never fragment: they size segments to the path), and a UDP first
/// fragment too short for a DNS header. `None`: judged as usual (the DNS program drops a
/// fragment that ends inside the question).
#[inline(always)]
fn first_fragment(
    pkt: &PacketBytes,
    l3: &L3,
    l4: &L4,
    generation: u32,
    settings: &GenSettings,
    dev: &Device,
) -> Option<Outcome> {
    let end = l3.end(pkt.size());
    let proto = if l3.proto == IPPROTO_TCP
        && (l4.dst_port() == 53
            || is_tls_port(generation, settings, l4.dst_port())
            || is_http_port(generation, settings, l4.dst_port()))
    {
        if l4.dst_port() == 53 {
            Proto::Dns
        } else if is_tls_port(generation, settings, l4.dst_port()) {
            Proto::Tls
        } else {
            Proto::Http
        }
    } else if l3.proto == IPPROTO_UDP && l4.payload_off + DNS_HEADER > end {
        if l4.dst_port() == QUIC_PORT {
            Proto::Quic
        } else {
            Proto::Dns
        }
    } else {
        return None;
    };
    let flags = maps::policy(generation, dev.policy).flags;
    Some(decided(dev, proto, Reason::FragmentTooSmall, flags, true))
}

/// Leaves the frame's findings in scratch memory and tail-calls program `prog` of `PROGS`.
/// Returns only if that cannot be done (scratch missing, no program loaded).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn hand_over(
    ctx: &XdpContext,
    pkt: &PacketBytes,
    l2: &L2,
    l3: &L3,
    l4: &L4,
    generation: u32,
    dev: &Device,
    prog: u32,
) {
    if let Some(s) = maps::scratch() {
        let h = &mut s.handoff;
        h.frame.fill(pkt, l2, l3, l4);
        h.generation = generation;
        h.slot = dev.slot;
        h.policy = dev.policy & 63;
        h.off = 0;
        h.last = 0;
        // DNS to a resolver the policy does not list (`dns_resolvers`): refused by the DNS
        // programs.
        h.refused = u32::from(
            prog != maps::PROG_TLS && prog != maps::PROG_HTTP && {
                let mask = maps::policy_resolvers(generation, dev.policy);
                mask != 0 && !maps::resolver_listed(generation, mask, &h.frame.dst)
            },
        );
        // SAFETY: PROGS holds programs of this type; on success this does not return.
        unsafe { maps::PROGS.tail_call(ctx, prog) };
    }
}

/// The TCP port whose ClientHellos are inspected unless `[gateway] tls_ports` says otherwise.
const DEFAULT_TLS_PORT: u16 = 443;
/// The TCP port whose requests are read as plain HTTP unless `[gateway] http_ports` says
/// otherwise.
const DEFAULT_HTTP_PORT: u16 = 80;
/// The UDP port whose QUIC Initials are judged.
const QUIC_PORT: u16 = 443;

/// QUIC versions whose Initial packets are recognised: 1 (RFC 9000), 2 (RFC 9369), and the
/// IETF drafts (0xff0000xx), which number packet types like version 1.
const QUIC_V1: u32 = 1;
const QUIC_V2: u32 = 0x6b33_43cf;

/// Whether the UDP payload at `off` is a QUIC long-header Initial packet.
#[inline(always)]
fn is_quic_initial(pkt: &PacketBytes, off: usize) -> bool {
    let Some(h) = pkt.read::<5>(off) else {
        return false;
    };
    // Long header form and the fixed bit.
    if h[0] & 0xc0 != 0xc0 {
        return false;
    }
    let version = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    let kind = (h[0] >> 4) & 3;
    match version {
        QUIC_V1 => kind == 0,
        QUIC_V2 => kind == 1,
        v => v & 0xffff_ff00 == 0xff00_0000 && kind == 0,
    }
}

/// A decision made by the main program (port, QUIC): counted on the device; blocked frames
/// dropped unless the policy monitors.
#[inline(always)]
fn decided(dev: &Device, proto: Proto, reason: Reason, flags: u32, block: bool) -> Outcome {
    let action = if !block {
        Action::Allow
    } else if flags & POLICY_MONITOR != 0 {
        Action::Monitor
    } else {
        Action::Block
    };
    count_decision(dev, proto, action, reason, NO_CATEGORY);
    let verdict = if action == Action::Block {
        Verdict::Drop
    } else {
        Verdict::Pass
    };
    Outcome {
        action: action as u32,
        ..Outcome::new(dev, verdict, reason)
    }
}

/// Counts a decision on a device.
#[inline(always)]
pub(crate) fn count_decision(
    dev: &Device,
    proto: Proto,
    action: Action,
    reason: Reason,
    category: u8,
) {
    let key = DecisionKey {
        slot: dev.slot,
        proto: proto as u8,
        action: action as u8,
        reason: reason as u8,
        category,
    };
    if !maps::count_decision(&key) {
        maps::count_global(GlobalCounter::DecisionMapFull);
    }
}

/// A suspended device's frame: dropped, and counted as a decision on the device.
#[inline(always)]
fn suspended(dev: &Device) -> Outcome {
    count_decision(
        dev,
        Proto::Suspended,
        Action::Block,
        Reason::Suspended,
        NO_CATEGORY,
    );
    Outcome {
        action: Action::Block as u32,
        ..Outcome::new(dev, Verdict::Drop, Reason::Suspended)
    }
}

/// The one exit: counts the outcome and returns its XDP action.
#[inline(always)]
fn finish(ctx: &XdpContext, out: &Outcome) -> u32 {
    let bytes = ctx.data_end().wrapping_sub(ctx.data()) as u64;
    // Uninspected passes (most frames) are not counted by reason: they are the frames of
    // `DEVICE_TRAFFIC`, where every frame is counted, less those of every other reason, and
    // the daemon derives them so (`stats::reason_counters`). One per-CPU update fewer a frame.
    if out.reason != Reason::Uninspected || out.verdict != Verdict::Pass {
        maps::count_stats(stats_index(out.reason, out.verdict), bytes);
    }
    maps::count_device(out.slot, bytes, out.verdict != Verdict::Pass);
    // Replay and fixtures read the outcome from `TRACE`; `gateway run --trace-kernel` logs why
    // the frame got its verdict. One test of a read-only global when both are off (production):
    // the verifier knows it fails and prunes the rest.
    let flags = TRACE_FLAGS.load();
    if flags != 0 {
        if flags & TRACE_MAP != 0 {
            maps::trace(&Trace {
                seq: 0,
                verdict: out.verdict as u32,
                reason: out.reason as u32,
                slot: out.slot,
                policy: out.policy,
                action: out.action,
            });
        }
        if flags & TRACE_LOG != 0 {
            trace_outcome(ctx, out, bytes);
        }
    }
    match out.verdict {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Tx => xdp_action::XDP_TX,
    }
}

/// Logs `out` (aya-log, at debug level; the daemon names the numbers). A function of its own:
/// inlined, its record's stack would add to the DNS program's frame, and with the `bpf_loop`
/// callbacks' the combined stack would pass the verifier's 512 bytes ("combined stack size ...
/// Too large").
#[inline(never)]
fn trace_outcome(ctx: &XdpContext, out: &Outcome, bytes: u64) {
    aya_log_ebpf::debug!(
        ctx,
        "verdict={} reason={} slot={} policy={} action={} bytes={}",
        out.verdict as u32,
        out.reason as u32,
        out.slot,
        out.policy,
        out.action,
        bytes
    );
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
