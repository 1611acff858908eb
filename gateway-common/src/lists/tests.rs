//! Tables of lines per format, and detection.

use super::*;

fn one(line: &str, format: Format) -> Line<'_> {
    Parser::new(format).line(line)
}

fn block(names: &str, scope: Scope) -> Line<'_> {
    Line::Rule(Rule::block(names, scope))
}

fn allow(names: &str, scope: Scope) -> Line<'_> {
    Line::Rule(Rule {
        allow: true,
        ..Rule::block(names, scope)
    })
}

#[test]
fn hosts_lines() {
    use Scope::*;
    let table: &[(&str, Line<'_>)] = &[
        ("0.0.0.0 ads.example.com", block("ads.example.com", Subtree)),
        (
            "127.0.0.1  a.example b.example # two",
            block("a.example b.example", Subtree),
        ),
        (":: tracker.example", block("tracker.example", Subtree)),
        ("0 zero.example", block("zero.example", Subtree)),
        ("127.0.0.1 localhost", Line::Comment),
        ("0.0.0.0 0.0.0.0", Line::Comment),
        ("# comment", Line::Comment),
        ("", Line::Comment),
        ("192.168.1.10 printer.lan", Line::Skip(Skip::Redirect)),
        ("0.0.0.0 *.wild.example", Line::Skip(Skip::Pattern)),
        ("plain.example", block("plain.example", Subtree)),
    ];
    for (line, want) in table {
        assert_eq!(one(line, Format::Hosts), *want, "{line}");
    }
    let Line::Rule(r) = one("0.0.0.0 a.example\tb.example", Format::Hosts) else {
        panic!("a rule");
    };
    assert_eq!(
        r.names().collect::<std::vec::Vec<_>>(),
        ["a.example", "b.example"]
    );
}

#[test]
fn domains_and_wildcard_lines() {
    use Scope::*;
    let table: &[(&str, Line<'_>)] = &[
        ("ads.example.com", block("ads.example.com", Subtree)),
        ("*.ads.example.com", block("ads.example.com", Below)),
        ("  x.example # why", block("x.example", Subtree)),
        (".lead-dot.example", block("lead-dot.example", Subtree)),
        ("# c", Line::Comment),
        ("ads*.example", Line::Skip(Skip::Pattern)),
        ("0.0.0.0 h.example", block("h.example", Subtree)),
        ("two words", Line::Skip(Skip::Unrecognised)),
        ("192.0.2.1", Line::Skip(Skip::Address)),
        ("https://x.example/", Line::Skip(Skip::Path)),
    ];
    for (line, want) in table {
        assert_eq!(one(line, Format::Domains), *want, "{line}");
        assert_eq!(one(line, Format::Wildcard), *want, "{line}");
    }
}

#[test]
fn adblock_lines() {
    use Scope::*;
    let important = |names, allow| {
        Line::Rule(Rule {
            allow,
            important: true,
            ..Rule::block(names, Subtree)
        })
    };
    let table: &[(&str, Line<'_>)] = &[
        ("||ads.example.com^", block("ads.example.com", Subtree)),
        ("||ads.example.com^|", block("ads.example.com", Subtree)),
        ("@@||ok.example.com^", allow("ok.example.com", Subtree)),
        ("|exact.example^", block("exact.example", Exact)),
        ("|exact.example|", block("exact.example", Exact)),
        ("@@|exact.example^", allow("exact.example", Exact)),
        ("||*.below.example^", block("below.example", Below)),
        ("*.below.example", block("below.example", Below)),
        ("plain.example", block("plain.example", Subtree)),
        ("0.0.0.0 hosts.example", block("hosts.example", Subtree)),
        ("||x.example^$important", important("x.example", false)),
        ("@@||x.example^$important", important("x.example", true)),
        (
            "||b.example^$badfilter",
            Line::Rule(Rule {
                badfilter: true,
                ..Rule::block("b.example", Subtree)
            }),
        ),
        (
            "||d.example^$denyallow=a.d.example|b.d.example",
            Line::Rule(Rule {
                denyallow: "a.d.example|b.d.example",
                ..Rule::block("d.example", Subtree)
            }),
        ),
        ("! comment", Line::Comment),
        ("# comment", Line::Comment),
        ("[Adblock Plus 2.0]", Line::Comment),
        ("example.com##.banner", Line::Skip(Skip::Cosmetic)),
        ("##.ad-banner", Line::Skip(Skip::Cosmetic)),
        ("example.com#@#.banner", Line::Skip(Skip::Cosmetic)),
        ("example.com#?#div:has(> a)", Line::Skip(Skip::Cosmetic)),
        ("example.com#$#body { x: y }", Line::Skip(Skip::Cosmetic)),
        ("example.com$$script", Line::Skip(Skip::Cosmetic)),
        ("||example.com/ads/*", Line::Skip(Skip::Path)),
        ("-ad-manager/$~stylesheet", Line::Skip(Skip::Path)),
        ("/ads/banner.", Line::Skip(Skip::Path)),
        ("|https://x.example/a", Line::Skip(Skip::Path)),
        ("||ads.example", Line::Skip(Skip::Pattern)),
        ("ads*.example^", Line::Skip(Skip::Pattern)),
        ("_ad_block_", Line::Skip(Skip::Pattern)),
        (".beacon.min.js", Line::Skip(Skip::Pattern)),
        (
            "||example.com^$third-party",
            Line::Skip(Skip::BrowserOption),
        ),
        (
            "||example.com^$script,domain=a.example",
            Line::Skip(Skip::BrowserOption),
        ),
        (
            "||example.com^$client=192.168.0.1",
            Line::Skip(Skip::Client),
        ),
        ("||example.com^$ctag=device_phone", Line::Skip(Skip::Client)),
        ("||example.com^$dnstype=AAAA", Line::Skip(Skip::DnsType)),
        (
            "||example.com^$dnsrewrite=NXDOMAIN",
            Line::Skip(Skip::DnsRewrite),
        ),
        (
            "||example.com^$denyallow=~x.example",
            Line::Skip(Skip::Pattern),
        ),
        ("/banner\\d+/", Line::Skip(Skip::Regex)),
        ("@@/^ok\\./$important", Line::Skip(Skip::Regex)),
        ("||192.0.2.1^", Line::Skip(Skip::Address)),
        ("||two words^", Line::Skip(Skip::Unrecognised)),
    ];
    for (line, want) in table {
        assert_eq!(one(line, Format::Adblock), *want, "{line}");
    }
}

#[test]
fn dnsmasq_lines() {
    use Scope::*;
    let table: &[(&str, Line<'_>)] = &[
        (
            "address=/ads.example/0.0.0.0",
            block("ads.example", Subtree),
        ),
        ("address=/ads.example/", block("ads.example", Subtree)),
        ("address=/ads.example/#", block("ads.example", Subtree)),
        (
            "address=/a.example/b.example/::",
            block("a.example/b.example", Subtree),
        ),
        ("address=/ads.example/192.0.2.1", Line::Skip(Skip::Redirect)),
        ("local=/lan.example/", block("lan.example", Subtree)),
        ("server=/ok.example/1.1.1.1", allow("ok.example", Subtree)),
        ("server=/ok.example/#", allow("ok.example", Subtree)),
        ("server=//192.0.2.53", Line::Skip(Skip::Directive)),
        ("address=/#/0.0.0.0", Line::Skip(Skip::Pattern)),
        ("cache-size=1000", Line::Skip(Skip::Directive)),
        ("no-resolv", Line::Skip(Skip::Directive)),
        ("# comment", Line::Comment),
    ];
    for (line, want) in table {
        assert_eq!(one(line, Format::Dnsmasq), *want, "{line}");
    }
}

#[test]
fn rpz_zone() {
    use Scope::*;
    let zone = [
        ("$TTL 2h", Line::Comment),
        ("$ORIGIN rpz.example.", Line::Comment),
        ("@ IN SOA localhost. root.localhost. (", Line::Comment),
        ("   1 ; serial", Line::Comment),
        ("   3600 600 86400 60 )", Line::Comment),
        ("  IN NS localhost.", Line::Comment),
        ("; a comment", Line::Comment),
        ("bad.example CNAME .", block("bad.example", Exact)),
        ("*.bad.example 300 IN CNAME .", block("bad.example", Below)),
        ("ok.example CNAME rpz-passthru.", allow("ok.example", Exact)),
        (
            "abs.example.rpz.example. CNAME .",
            block("abs.example", Exact),
        ),
        ("nodata.example CNAME *.", Line::Skip(Skip::RpzAction)),
        ("drop.example CNAME rpz-drop.", Line::Skip(Skip::RpzAction)),
        (
            "walled.example CNAME garden.example.",
            Line::Skip(Skip::RpzAction),
        ),
        ("local.example A 192.0.2.1", Line::Skip(Skip::RpzAction)),
        ("32.1.2.0.192.rpz-ip CNAME .", Line::Skip(Skip::RpzTrigger)),
        ("ns.bad.rpz-nsdname CNAME .", Line::Skip(Skip::RpzTrigger)),
        ("$INCLUDE other.zone", Line::Skip(Skip::Directive)),
    ];
    let mut p = Parser::new(Format::Rpz);
    for (line, want) in zone {
        assert_eq!(p.line(line), want, "{line}");
    }
    // Without `$ORIGIN`, the SOA's owner is the apex.
    let mut p = Parser::new(Format::Rpz);
    assert_eq!(p.line("zone.rpz. 60 IN SOA a. b. 1 2 3 4 5"), Line::Comment);
    assert_eq!(
        p.line("x.example.zone.rpz. CNAME ."),
        block("x.example", Exact)
    );
}

#[test]
fn detection() {
    let d = |lines: &[&str]| detect(lines.iter().copied());
    assert_eq!(d(&["! Title: x", "||a.example^"]), Format::Adblock);
    assert_eq!(d(&["[Adblock Plus 2.0]", "a.example"]), Format::Adblock);
    assert_eq!(
        d(&["# hosts", "0.0.0.0 a.example", "0.0.0.0 b.example"]),
        Format::Hosts
    );
    assert_eq!(d(&["# list", "a.example", "b.example"]), Format::Domains);
    assert_eq!(
        d(&["*.a.example", "*.b.example", "c.example"]),
        Format::Wildcard
    );
    assert_eq!(
        d(&["address=/a.example/0.0.0.0", "server=/b.example/#"]),
        Format::Dnsmasq
    );
    assert_eq!(d(&["$TTL 300", "a CNAME ."]), Format::Rpz);
    assert_eq!(
        d(&["@ SOA a. b. 1 2 3 4 5", "a.example CNAME ."]),
        Format::Rpz
    );
    // EasyList's opening: comments, then many path rules, then the `||d^` rules.
    let mut easylist = std::vec!["! Checksum: x", "! Version: 1"];
    easylist.extend(core::iter::repeat_n("-ad-manager/$~stylesheet", 500));
    easylist.extend(core::iter::repeat_n("||ads.example^", 500));
    assert_eq!(d(&easylist[..]), Format::Adblock);
    // Paths first, no header at all: still adblock by the whole file.
    assert_eq!(d(&easylist[2..]), Format::Adblock);
    for (i, f) in Format::ALL.iter().enumerate() {
        assert_eq!(*f as usize, i, "{f:?} declared out of ALL's order");
    }
    assert_eq!(Format::from_label("rpz"), Some(Format::Rpz));
    assert_eq!(Format::from_label("zone"), None);
}
