//! The request scan against heads of every shape: hosts in any case and with ports, absolute
//! URIs and authorities, ambiguous heads, heads without a name, what is no request, a head cut
//! at every offset, pipelines, and the bounds on names.

use std::{format, string::String, vec::Vec};

use super::*;
use crate::{
    domain::{MAX_LEVELS, fingerprint, suffixes},
    tls::NameBuf,
};

const SEED: u64 = 11;

/// The outcome for a segment, and the host read (checked against the fingerprint the daemon
/// stores for it, so the kernel's lookups would find it).
fn host(req: &[u8]) -> (Http, Option<String>) {
    let mut buf = NameBuf::default();
    let (r, scan) = scan_request(SEED, req, 0, &mut buf);
    if r != Http::Host {
        return (r, None);
    }
    let name = String::from_utf8(buf.text[..usize::from(scan.name_len)].to_vec()).expect("utf-8");
    let mut fps = [0u64; MAX_LEVELS];
    let n = suffixes(&buf.hashes, usize::from(scan.labels), SEED, &mut fps);
    assert_eq!(fps[n - 1], fingerprint(name.as_bytes(), SEED), "{name}");
    (r, Some(name))
}

fn req(s: &str) -> (Http, Option<String>) {
    host(s.as_bytes())
}

fn found(name: &str) -> (Http, Option<String>) {
    (Http::Host, Some(name.into()))
}

#[test]
fn the_host_header_any_case_without_its_port() {
    assert_eq!(
        req("GET / HTTP/1.1\r\nHost: Blocked.Example\r\nAccept: */*\r\n\r\n"),
        found("blocked.example")
    );
    assert_eq!(
        req("GET /a?b HTTP/1.1\r\nuser-agent: x\r\nHOST:blocked.example:8080\r\n\r\n"),
        found("blocked.example")
    );
    assert_eq!(
        req("POST /f HTTP/1.1\r\nhost: \t www.blocked.example.  \r\ncontent-length: 0\r\n\r\n"),
        found("www.blocked.example")
    );
    // Bare LFs, as some clients send.
    assert_eq!(
        req("HEAD / HTTP/1.0\nHost: a.example\n\n"),
        found("a.example")
    );
    // Empty lines before the request line (servers skip them).
    assert_eq!(
        req("\r\n\r\nGET / HTTP/1.1\r\nHost: blocked.example\r\n\r\n"),
        found("blocked.example")
    );
    // Headers that start like the ones looked for.
    assert_eq!(
        req("GET / HTTP/1.1\r\nHostile: x.example\r\nhost-name: y\r\nHost: z.example\r\n\r\n"),
        found("z.example")
    );
}

#[test]
fn absolute_uris_and_authorities_name_the_host() {
    for (line, name) in [
        (
            "GET http://Blocked.Example/path HTTP/1.1",
            "blocked.example",
        ),
        (
            "GET http://blocked.example:8080/ HTTP/1.1",
            "blocked.example",
        ),
        ("GET HTTPS://blocked.example?q HTTP/1.1", "blocked.example"),
        (
            "GET http://user:pw@blocked.example/ HTTP/1.1",
            "blocked.example",
        ),
        ("GET http://blocked.example HTTP/1.1", "blocked.example"),
        ("CONNECT blocked.example:443 HTTP/1.1", "blocked.example"),
    ] {
        // Whatever the Host header says (RFC 9112 §3.2.2), even twice.
        let r = format!("{line}\r\nHost: allowed.example\r\nHost: other.example\r\n\r\n");
        assert_eq!(req(&r), found(name), "{line}");
    }
    // A path starting with h is a path.
    assert_eq!(
        req("GET hello HTTP/1.1\r\nHost: a.example\r\n\r\n"),
        found("a.example")
    );
}

#[test]
fn ambiguous_heads_are_unparsed() {
    for r in [
        // Two Host lines (RFC 9112 §3.2: a server answers 400; some take the last).
        "GET / HTTP/1.1\r\nHost: allowed.example\r\nHost: blocked.example\r\n\r\n",
        // A folded Host line (obs-fold).
        "GET / HTTP/1.1\r\nHost: allowed.example\r\n blocked.example\r\n\r\n",
        "GET / HTTP/1.1\r\nHost:\r\n\tblocked.example\r\n\r\n",
        // Whitespace before the colon.
        "GET / HTTP/1.1\r\nHost : blocked.example\r\n\r\n",
        // Characters no host name has; an empty label.
        "GET / HTTP/1.1\r\nHost: bl%6fcked.example\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a..example\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.example b\r\n\r\n",
        "GET http://a.example\\@b.example/ HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(req(r).0, Http::Unparsed, "{r:?}");
    }
    // A fold of another header is nothing to us.
    assert_eq!(
        req("GET / HTTP/1.1\r\nX-A: 1\r\n 2\r\nHost: a.example\r\n\r\n"),
        found("a.example")
    );
}

#[test]
fn heads_without_a_name() {
    for r in [
        "GET / HTTP/1.0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost:\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: 10.0.0.7:80\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: [fd00::7]:80\r\n\r\n",
        "GET http://10.1.2.3/ HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(req(r).0, Http::NoHost, "{r:?}");
    }
}

#[test]
fn what_is_no_request() {
    for r in [
        "\x16\x03\x01\x02\x00",
        "hello world\r\n",
        "GET",
        "GET / HTTX/1.1\r\nHost: a.example\r\n\r\n",
        "SOMETHINGVERYLONGX / HTTP/1.1\r\n",
        "get / HTTP/1.1\r\nHost: a.example\r\n\r\n",
        "GET /\r\nHost: a.example\r\n\r\n",
    ] {
        assert_eq!(req(r).0, Http::NotHttp, "{r:?}");
    }
}

#[test]
fn truncation_at_every_offset() {
    let whole = "GET http://x.example/ HTTP/1.1\r\nHost: blocked.example\r\nAccept: */*\r\n\r\n";
    let line_only = "GET /index.html HTTP/1.1\r\nUser-Agent: curl/8\r\nHost: blocked.example\r\nAccept: */*\r\n\r\n";
    // Where the host that decides ends: the URI's, or the Host line's.
    let uri_end = whole.find(".example/").expect("uri") + ".example".len();
    let line_end = line_only.rfind("example").expect("host") + "example".len();
    for (text, name_end) in [(whole, uri_end), (line_only, line_end)] {
        let b = text.as_bytes();
        for cut in 0..=b.len() {
            let (r, name) = host(&b[..cut]);
            let ok = match r {
                // Once the host is whole (a byte after it in the segment), it is judged.
                Http::Host => name.is_some() && cut > name_end,
                // Before that, a known method makes it a request cut short; the first bytes of
                // a method are no request yet.
                Http::Unparsed => (4..=name_end).contains(&cut),
                Http::NotHttp => cut < 4,
                _ => false,
            };
            assert!(ok, "{text:?} cut at {cut}: {r:?} {name:?}");
        }
    }
    // The absolute URI's host is whole at the '/' after it.
    let b = whole.as_bytes();
    let at = whole.find(".example/").expect("uri") + ".example/".len();
    assert_eq!(host(&b[..at]), found("x.example"));
    assert_eq!(host(&b[..at - 1]).0, Http::Unparsed);
}

#[test]
fn the_next_request_of_a_pipeline() {
    let first = "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n";
    let second = "POST /x HTTP/1.1\r\nHost: b.example\r\nContent-Length: 5\r\n\r\nhello";
    let third = "GET / HTTP/1.1\r\nHost: c.example\r\n\r\n";
    let all: Vec<u8> = [first, second, third].concat().into_bytes();
    let mut at = 0usize;
    let mut names = Vec::new();
    while at < all.len() {
        let mut buf = NameBuf::default();
        let (r, scan) = scan_request(SEED, &all, at, &mut buf);
        assert_eq!(r, Http::Host);
        names.push(
            String::from_utf8(buf.text[..usize::from(scan.name_len)].to_vec()).expect("utf-8"),
        );
        at = scan.next().expect("known body") as usize;
    }
    assert_eq!(names, ["a.example", "b.example", "c.example"]);
    assert_eq!(at, all.len());
    // A chunked body: where the next request starts is not known.
    let chunked =
        "POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello";
    let mut buf = NameBuf::default();
    let (r, scan) = scan_request(SEED, chunked.as_bytes(), 0, &mut buf);
    assert_eq!((r, scan.next()), (Http::Host, None));
}

#[test]
fn long_names_and_labels_are_bounded() {
    let label = "a".repeat(64);
    assert_eq!(
        req(&format!("GET / HTTP/1.1\r\nHost: {label}.example\r\n\r\n")).0,
        Http::Unparsed
    );
    let long = [
        "a".repeat(60),
        "b".repeat(60),
        "c".repeat(60),
        "d".repeat(60),
        "e".repeat(13),
    ]
    .join(".");
    assert_eq!(
        req(&format!("GET / HTTP/1.1\r\nHost: {long}\r\n\r\n")).0,
        Http::Unparsed
    );
    let ok = [
        "a".repeat(60),
        "b".repeat(60),
        "c".repeat(60),
        "d".repeat(60),
        "e".repeat(9),
    ]
    .join(".");
    assert_eq!(
        req(&format!("GET / HTTP/1.1\r\nHost: {ok}\r\n\r\n")),
        found(&ok)
    );
}
