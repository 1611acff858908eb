//! Tier 3, the part the kernel matrix also runs inside each guest kernel (`cargo xtask test`
//! boots Debian's 6.1 and 6.12 under qemu and runs this there): one device, real traffic, the
//! daemon. A blocked DNS query is answered in XDP (NXDOMAIN, parsed by `dig`) while an allowed
//! one reaches the upstream; a blocked ClientHello is reset by the gateway while an allowed
//! handshake completes.

use gateway_testbed::{
    Bed, Daemon, Dnsmasq, Handshake, HttpsUpstream, Pins, curl_https, dig, eventually,
};

#[test]
fn blocked_query_answered_and_blocked_hello_reset() -> anyhow::Result<()> {
    let bed = Bed::new(1)?;
    let dev = &bed.devices[0];
    let body = bed.one_device_config(&["blocked.example"]);
    let pins = Pins::with_config("", &body)?;
    let _daemon = Daemon::start(&bed.gw, &pins, &["d1"])?;
    let _upstream = Dnsmasq::start(
        &bed.up,
        &bed.upstream_ip,
        &[
            ("blocked.example", "198.51.100.1"),
            ("allowed.example", "198.51.100.2"),
        ],
    )?;
    let _https = HttpsUpstream::start(&bed.up, &[443])?;
    let up = bed.upstream_ip.as_str();

    let allowed = dig(&dev.ns, "dig", up, "allowed.example", "A")?;
    assert_eq!(allowed.status, "NOERROR");
    assert_eq!(allowed.answers, vec!["198.51.100.2".to_string()]);
    // The upstream has an address for it: NXDOMAIN can only come from the gateway.
    let blocked = dig(&dev.ns, "dig", up, "blocked.example", "A")?;
    assert_eq!(blocked.status, "NXDOMAIN");
    assert!(blocked.answers.is_empty(), "{:?}", blocked.answers);

    eventually("the HTTPS upstream listening", || {
        matches!(
            curl_https(&dev.ns, up, "allowed.example"),
            Ok(Handshake::Completed)
        )
    })?;
    assert_eq!(
        curl_https(&dev.ns, up, "blocked.example")?,
        Handshake::Reset
    );
    assert_eq!(
        curl_https(&dev.ns, up, "www.blocked.example")?,
        Handshake::Reset,
        "a subdomain of a blocked name"
    );
    Ok(())
}
