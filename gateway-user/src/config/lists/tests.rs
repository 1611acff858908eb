//! The list reader's tests: every format by content, the corpus lists with their exact counts,
//! Debian's EasyList and EasyPrivacy, scopes, `$important` / `$badfilter` / `$denyallow`, forced
//! formats, and when a file is parsed again.

use super::*;

fn corpus(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/lists")
        .join(name)
}

fn skipped(s: &ListStats) -> Vec<(&'static str, usize)> {
    s.skipped.iter().map(|(k, v)| (*k, v.lines)).collect()
}

#[test]
fn hosts_list_from_the_corpus() {
    let mut d = Domains::default();
    let s = read(&corpus("blocklistproject-basic.hosts"), None, &mut d).expect("readable");
    assert_eq!((s.format, s.detected, s.lines), ("hosts", true, 76_049));
    // The file says "Entries: 76,036".
    assert_eq!((s.block, s.allow, s.invalid), (76_036, 0, 0), "{s:?}");
    assert_eq!(skipped(&s), [], "{s:?}");
    assert_eq!(d.block.len(), 76_036);
    assert!(d.block.contains("0-app.com"));
}

#[test]
fn adblock_list_from_the_corpus() {
    let mut d = Domains::default();
    let s = read(&corpus("1hosts-lite.adblock"), None, &mut d).expect("readable");
    assert_eq!((s.format, s.lines), ("adblock", 52_596));
    // The file says "Blocked: 52,577 domains".
    assert_eq!((s.block, s.allow, s.invalid), (52_577, 0, 0), "{s:?}");
    assert_eq!(skipped(&s), [], "{s:?}");
    assert_eq!(d.block.len(), 52_577);
    assert!(d.block.contains("media-d.global.abb"));
}

#[test]
fn domains_list_from_the_corpus() {
    let mut d = Domains::default();
    let s = read(&corpus("hagezi-doh-vpn-proxy-bypass.domains"), None, &mut d).expect("readable");
    assert_eq!((s.format, s.lines), ("domains", 1_216));
    // The file says "Domains: 1205".
    assert_eq!((s.block, s.invalid), (1205, 0), "{s:?}");
    assert!(d.block.contains("1dot1dot1dot1.cloudflare-dns.com"));
}

#[test]
fn a_forced_format_is_used_as_given() {
    let mut d = Domains::default();
    // Read as domains, a hosts file's lines are still hosts lines (real lists mix them).
    let s = read(
        &corpus("blocklistproject-basic.hosts"),
        Some(Format::Domains),
        &mut d,
    )
    .expect("readable");
    assert_eq!((s.format, s.detected, s.block), ("domains", false, 76_036));
    // Read as RPZ, an adblock list gives nothing it does not say.
    let mut d = Domains::default();
    let s = read(&corpus("1hosts-lite.adblock"), Some(Format::Rpz), &mut d).expect("readable");
    assert_eq!((s.format, s.block), ("rpz", 0), "{s:?}");
    assert!(d.block.is_empty());
}

/// EasyList and EasyPrivacy as Debian ships them (`cargo xtask setup` installs
/// `webext-ublock-origin-chromium`): their `||domain^` rules must all be read.
#[test]
fn easylist_from_debian() {
    let dir =
        Path::new("/usr/share/chromium/extensions/ublock-origin/assets/thirdparties/easylist");
    let Ok(entries) = std::fs::read_dir(dir) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{}: missing (cargo xtask setup installs webext-ublock-origin-chromium)",
            dir.display()
        );
        return;
    };
    let mut seen = 0;
    for e in entries.flatten() {
        let path = e.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".txt") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        // What a plain `||name^` line (no options) says, counted independently.
        let plain = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("||")?.strip_suffix('^'))
            .filter(|n| {
                n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            })
            .filter(|n| n.contains('.') && normalised(n).is_ok())
            // Addresses are not names (`||192.0.2.1^` is skipped as an address rule).
            .filter(|n| !n.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())))
            .count();
        let mut d = Domains::default();
        let s = read(&path, None, &mut d).expect("readable");
        eprintln!("{name}: {s:?}");
        assert_eq!(s.format, "adblock", "{name}");
        assert!(
            s.block >= plain,
            "{name}: {} of {plain} plain rules",
            s.block
        );
        // A floor: each list has tens of thousands of them (Debian's 2024 copies: ~40k).
        assert!(s.block >= 10_000, "{name}: only {} domain rules", s.block);
        for kind in ["cosmetic", "path", "browser_option"] {
            assert!(
                s.skipped.contains_key(kind),
                "{name}: no {kind} lines? {s:?}"
            );
        }
        seen += 1;
    }
    assert!(seen >= 2, "EasyList and EasyPrivacy in {}", dir.display());
}

fn parsed(text: &str) -> (Domains, ListStats) {
    let mut d = Domains::default();
    let s = parse_text(text, "test", None, &mut d);
    (d, s)
}

#[test]
fn mixed_adblock_counts_what_it_skips() {
    let (d, s) = parsed(
        "! title\n||Ads.Example.com^\n@@||ok.ads.example.com^\nexample.com##.banner\n||bad..example^\n||x.example^$third-party\n/ads[0-9]/\n",
    );
    assert_eq!((s.block, s.allow, s.invalid), (1, 1, 1), "{s:?}");
    assert_eq!(
        skipped(&s),
        [("browser_option", 1), ("cosmetic", 1), ("regex", 1)],
        "{s:?}"
    );
    assert_eq!(s.skipped["cosmetic"].first_line, 4);
    assert_eq!(s.skipped["regex"].first_line, 7);
    assert!(d.block.contains("ads.example.com") && d.allow.contains("ok.ads.example.com"));
    assert_eq!(s.invalid_examples[0].0, 5);
}

#[test]
fn important_and_badfilter_within_a_list() {
    let (d, s) = parsed(
        "||a.example^$important\n@@||x.a.example^\n@@||y.a.example^$important\n||b.example^\n||b.example^$badfilter\n@@||c.example^\n@@||c.example^$badfilter\n||d.example^$denyallow=ok.d.example|other.example\n",
    );
    assert!(d.block.contains("a.example"));
    // The important block beats the plain exception, not the important one.
    assert!(!d.allow.contains("x.a.example") && d.allow.contains("y.a.example"));
    // Cancelled, whichever comes first.
    assert!(!d.block.contains("b.example") && !d.allow.contains("c.example"));
    // `$denyallow` names below the rule's become its exceptions; others mean nothing here.
    assert!(d.block.contains("d.example") && d.allow.contains("ok.d.example"));
    assert!(!d.allow.contains("other.example"));
    assert_eq!(s.badfilter, 4, "{s:?}");
}

#[test]
fn every_format_by_content() {
    let cases: &[(&str, &str, &[&str], &[&str])] = &[
        (
            "0.0.0.0 a.example b.example\n127.0.0.1 localhost\n",
            "hosts",
            &["a.example", "b.example"],
            &[],
        ),
        (
            "*.a.example\n*.b.example\nc.example\n",
            "wildcard",
            &["a.example", "b.example", "c.example"],
            &[],
        ),
        (
            "address=/a.example/0.0.0.0\nserver=/ok.example/#\nlocal=/l.example/\n",
            "dnsmasq",
            &["a.example", "l.example"],
            &["ok.example"],
        ),
        (
            "$TTL 60\n@ SOA a. b. 1 2 3 4 5\nbad.example CNAME .\n*.bad.example CNAME .\nok.example CNAME rpz-passthru.\n",
            "rpz",
            &["bad.example"],
            &["ok.example"],
        ),
    ];
    for (text, format, block, allow) in cases {
        let (d, s) = parsed(text);
        assert_eq!(s.format, *format, "{text}");
        let (blocks, allows) = d.widened();
        assert_eq!(
            blocks.iter().map(String::as_str).collect::<Vec<_>>(),
            *block,
            "{text}"
        );
        assert_eq!(
            allows.iter().map(String::as_str).collect::<Vec<_>>(),
            *allow,
            "{text}"
        );
    }
}

/// `|d^`, an RPZ owner: the name only; `*.d`: its subdomains only; both for one name, or
/// either with `||d^`: the name and its subdomains.
#[test]
fn rules_keep_their_scope() {
    const NAME: [(bool, bool); 2] = [(true, false), (false, false)];
    const BELOW: [(bool, bool); 2] = [(false, false), (true, false)];
    const BOTH: [(bool, bool); 2] = [(true, false), (true, false)];
    let (d, s) = parsed(
        "[Adblock Plus]\n|only.example^\n||*.sub.example^\n|x.example^\n||x.example^\n@@|ok.only.example^\n",
    );
    assert_eq!(d.rules_of("only.example"), NAME);
    assert_eq!(d.rules_of("sub.example"), BELOW);
    assert_eq!(d.rules_of("x.example"), BOTH);
    assert_eq!(
        d.rules_of("ok.only.example"),
        [(false, true), (false, false)]
    );
    assert_eq!((s.name_only, s.subdomains_only), (3, 1), "{s:?}");
    let (d, _) = parsed(
        "$TTL 60\nname.example CNAME .\n*.kids.example CNAME .\nboth.example CNAME .\n*.both.example CNAME .\n",
    );
    assert_eq!(d.rules_of("name.example"), NAME);
    assert_eq!(d.rules_of("kids.example"), BELOW);
    assert_eq!(d.rules_of("both.example"), BOTH);
    assert!(d.block.contains("both.example") && !d.exact.block.contains("both.example"));
    let (d, s) = parsed("*.w.example\n*.v.example\nplain.example\n");
    assert_eq!((s.format, d.rules_of("w.example")), ("wildcard", BELOW));
    assert_eq!(d.rules_of("plain.example"), BOTH);
}

#[test]
fn not_utf8_is_an_error_naming_the_byte() {
    let dir = std::env::temp_dir().join(format!("gw-lists-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let f = dir.join("bin.txt");
    std::fs::write(&f, b"a.example\n\xff\xfe\n").expect("write");
    let e = read(&f, None, &mut Domains::default()).expect_err("binary");
    assert!(e.to_string().contains("byte 10"), "{e}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_list_file_is_parsed_again_only_when_it_changes() {
    let dir = std::env::temp_dir().join(format!("gw-lists-shared-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let f = dir.join("l.domains");
    std::fs::write(&f, "a.example\nb.example\n").expect("write");
    let (first, _) = read_shared(&f, None).expect("read");
    let (again, stats) = read_shared(&f, None).expect("read");
    assert!(Arc::ptr_eq(&first, &again), "unchanged file parsed again");
    assert_eq!(stats.block, 2);
    // Same length, new content: a new version all the same.
    std::fs::write(&f, "a.example\nc.example\n").expect("write");
    let (changed, _) = read_shared(&f, None).expect("read");
    assert!(!Arc::ptr_eq(&first, &changed));
    assert!(changed.block.contains("c.example") && !changed.block.contains("b.example"));
    // Replaced by rename, as list updaters do.
    let tmp = dir.join("l.tmp");
    std::fs::write(&tmp, "d.example\n").expect("write");
    std::fs::rename(&tmp, &f).expect("rename");
    let (renamed, _) = read_shared(&f, None).expect("read");
    assert_eq!(renamed.block.len(), 1);
    // Nobody holds it any more: the entry goes, and the next read parses the file.
    let weak = Arc::downgrade(&renamed);
    drop((first, again, changed, renamed));
    assert!(weak.upgrade().is_none());
    assert_eq!(read_shared(&f, None).expect("read").0.block.len(), 1);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn built_in_dns_bypass_category() {
    let d = dns_bypass();
    assert!(d.block.len() >= 30);
    assert!(d.block.contains("dns.google") && d.block.contains("cloudflare-dns.com"));
}

#[test]
fn a_list_entry_may_force_its_format() {
    let dir = std::env::temp_dir().join(format!("gw-format-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // Bare names only: detected as domains, read as dnsmasq they say nothing.
    std::fs::write(dir.join("l.txt"), "a.example\nb.example\n").expect("write");
    let toml = |entry: &str| {
        format!(
            "[[category]]\nname = \"c\"\nlists = [{entry}]\n[[policy]]\nname = \"p\"\nblock_categories = [\"c\"]\n"
        )
    };
    let t = dir.join("t.toml");
    let c = crate::config::Config::parse(&toml("\"l.txt\""), &t).expect("detected");
    assert_eq!(
        (
            c.categories[0].lists[0].format,
            c.categories[0].lists[0].detected
        ),
        ("domains", true)
    );
    let c = crate::config::Config::parse(&toml("{ path = \"l.txt\", format = \"dnsmasq\" }"), &t)
        .expect("forced");
    let l = &c.categories[0].lists[0];
    assert_eq!((l.format, l.detected, l.block), ("dnsmasq", false, 0));
    assert_eq!(l.skipped["directive"].lines, 2);
    let e = crate::config::Config::parse(&toml("{ path = \"l.txt\", format = \"zone\" }"), &t)
        .expect_err("unknown format")
        .to_string();
    assert!(
        e.contains("t.toml:3:")
            && e.contains(": category \"c\": list: ")
            && e.contains(
                "format \"zone\" is not one of rpz, dnsmasq, adblock, hosts, wildcard, domains"
            ),
        "{e}"
    );
    let e = crate::config::Config::parse(&toml("{ file = \"l.txt\" }"), &t)
        .expect_err("no path")
        .to_string();
    assert!(
        e.contains("t.toml:3:") && e.contains("a path or URL, or a table"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// A local list's `$badfilter` cancels a rule of a subscribed list, and its `$important` beats
/// that list's exceptions: the rules act across the lists of a category.
#[test]
fn badfilter_and_important_act_across_a_category() {
    let dir = std::env::temp_dir().join(format!("gw-across-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("big.txt"),
        "[Adblock Plus]\n||ads.example^\n||tracker.example^\n@@||ok.ads.example^\n||other.example^\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("local.txt"),
        "[Adblock Plus]\n||tracker.example^$badfilter\n||ads.example^$important\n",
    )
    .expect("write");
    let toml = |lists: &str| {
        format!(
            "[[category]]\nname = \"c\"\nlists = [{lists}]\n[[policy]]\nname = \"p\"\nblock_categories = [\"c\"]\n"
        )
    };
    let t = dir.join("t.toml");
    let c = crate::config::Config::parse(&toml("\"big.txt\", \"local.txt\""), &t).expect("valid");
    let cat = &c.categories[0];
    assert!(cat.blocks("ads.example") && cat.blocks("other.example"));
    assert!(
        !cat.blocks("tracker.example"),
        "cancelled from the other list"
    );
    assert!(
        !cat.allows("ok.ads.example"),
        "beaten by the other list's important rule"
    );
    assert_eq!(cat.as_read.len(), 2);
    // Without the local list, the big one is as written.
    let c = crate::config::Config::parse(&toml("\"big.txt\""), &t).expect("valid");
    let cat = &c.categories[0];
    assert!(cat.blocks("tracker.example") && cat.allows("ok.ads.example"));
    assert!(cat.as_read.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
