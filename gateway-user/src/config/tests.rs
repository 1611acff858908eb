//! Unit tests of the configuration: parsing, validation, located errors, inventories,
//! schedules and category numbering.

use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, Path::new("t.toml"))
}

fn first_error(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.0[0].to_string(),
    }
}

fn numbering_config(categories: &[&str], p1: &[&str], p2: &[&str]) -> Config {
    let mut text = String::new();
    for c in categories {
        text += &format!("[[category]]\nname = \"{c}\"\ndomains = [\"{c}.example\"]\n\n");
    }
    let list = |v: &[&str]| {
        v.iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    text += &format!(
        "[[policy]]\nname = \"p1\"\nblock_categories = [{}]\n\n[[policy]]\nname = \"p2\"\nblock_categories = [{}]\n",
        list(p1),
        list(p2)
    );
    parse(&text).expect("valid")
}

fn category_names(c: &Config) -> Vec<&str> {
    c.categories.iter().map(|c| c.name.as_str()).collect()
}

/// The names policy `name` blocks, from its bits.
fn blocked(c: &Config, name: &str) -> Vec<String> {
    let p = &c.policies[c.policy_id(name).expect("policy")];
    c.categories
        .iter()
        .enumerate()
        .filter(|(i, _)| p.block_categories & (1 << i) != 0)
        .map(|(_, c)| c.name.clone())
        .collect()
}

#[test]
fn categories_keep_their_numbers() {
    // No numbering before: the file's.
    let mut c = numbering_config(&["a", "b", "c"], &["b", "c"], &["a"]);
    let file = c.clone();
    assert!(c.keep_category_numbers(&[]).is_empty());
    assert_eq!(c, file);
    assert_eq!(category_names(&c), ["a", "b", "c", "dns-bypass"]);

    // c and a stay, b is gone, d is new and listed first.
    let mut c = numbering_config(&["d", "c", "a"], &["c", "d"], &["a"]);
    let previous: Vec<String> = ["a", "b", "c", "dns-bypass"].map(String::from).into();
    assert!(c.keep_category_numbers(&previous).is_empty());
    assert_eq!(category_names(&c), ["a", "b", "c", "dns-bypass", "d"]);
    assert!(
        c.categories[1].sources.is_empty(),
        "b keeps its number, empty"
    );
    assert_eq!(c.categories[2].sources[0].block.len(), 1);
    assert!(c.categories[2].sources[0].block.contains("c.example"));
    assert!(c.categories[4].sources[0].block.contains("d.example"));
    assert_eq!(blocked(&c, "p1"), ["c", "d"]);
    assert_eq!(blocked(&c, "p2"), ["a"]);
    assert_eq!(c.policies[0].block_categories, 0b10100);

    // b comes back: its old number.
    let mut again = numbering_config(&["b", "d"], &["b"], &[]);
    let previous = c.category_names();
    assert!(again.keep_category_numbers(&previous).is_empty());
    assert_eq!(category_names(&again), ["a", "b", "c", "dns-bypass", "d"]);
    assert!(again.categories[0].sources.is_empty());
    assert!(!again.categories[1].sources.is_empty());
    assert_eq!(blocked(&again, "p1"), ["b"]);

    // A numbering that is not one (a name twice): the file's.
    let mut c = numbering_config(&["a", "b"], &["b"], &[]);
    let file = c.clone();
    assert!(
        c.keep_category_numbers(&["b".into(), "b".into()])
            .is_empty()
    );
    assert_eq!(c, file);

    // More than 64 numbers with the gone ones: x takes the last free number, y and
    // dns-bypass the first gone ones', and say so; nothing else moves.
    let mut c = numbering_config(&["x", "y"], &["y"], &["x", "y"]);
    let gone: Vec<String> = (0..63).map(|i| format!("gone-{i}")).collect();
    let reused = c.keep_category_numbers(&gone);
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(reused, [pair("gone-0", "y"), pair("gone-1", "dns-bypass")]);
    assert_eq!(c.categories.len(), MAX_CATEGORIES);
    let names = category_names(&c);
    assert_eq!(names[..3], ["y", "dns-bypass", "gone-2"]);
    assert_eq!(names[62..], ["gone-62", "x"]);
    assert_eq!(c.policies[0].block_categories, 1);
    assert_eq!(c.policies[1].block_categories, 1 | 1 << 63);
    assert_eq!(blocked(&c, "p2"), ["y", "x"]);
}

proptest::proptest! {
    /// Over any sequence of configurations: every category of the file is numbered once,
    /// with its domains; policies block the same categories by name; a category that stays
    /// keeps its number; a number whose category is gone keeps its name, empty, unless
    /// the numbers run out (from `old` gone categories at the start), when a new category
    /// takes it and says so.
    #[test]
    fn category_numbers_hold_over_reloads(
        old in 0..=MAX_CATEGORIES,
        steps in proptest::collection::vec(
            (proptest::sample::subsequence((0..10).collect::<Vec<u8>>(), 0..=10),
             proptest::collection::vec(proptest::bool::ANY, 10),
             proptest::bool::ANY),
            1..12,
        )
    ) {
        let mut in_force: Vec<String> = (0..old).map(|k| format!("old-{k}")).collect();
        for (chosen, blocks, reverse) in steps {
            let mut names: Vec<String> = chosen.iter().map(|i| format!("c{i}")).collect();
            if reverse {
                names.reverse();
            }
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let blocked_in_file: Vec<&str> = refs
                .iter()
                .zip(&blocks)
                .filter(|(_, b)| **b)
                .map(|(n, _)| *n)
                .collect();
            let mut c = numbering_config(&refs, &blocked_in_file, &[]);
            let reused = c.keep_category_numbers(&in_force);
            proptest::prop_assert!(c.categories.len() <= MAX_CATEGORIES);
            for (gone, new) in &reused {
                let at = c.categories.iter().position(|x| &x.name == new);
                proptest::prop_assert_eq!(at.and_then(|i| in_force.get(i)), Some(gone));
                proptest::prop_assert!(!refs.contains(&gone.as_str()));
                proptest::prop_assert!(!in_force.contains(new));
            }
            if in_force.len() + refs.len() < MAX_CATEGORIES {
                proptest::prop_assert!(reused.is_empty());
            }
            for n in refs.iter().chain(std::iter::once(&DNS_BYPASS_CATEGORY)) {
                let at: Vec<usize> = c
                    .categories
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| x.name == *n)
                    .map(|(i, _)| i)
                    .collect();
                proptest::prop_assert_eq!(at.len(), 1, "{} in {:?}", n, category_names(&c));
                proptest::prop_assert!(!c.categories[at[0]].sources.is_empty());
                if let Some(before) = in_force.iter().position(|x| x == n) {
                    proptest::prop_assert_eq!(before, at[0], "{} moved", n);
                }
            }
            for (i, x) in c.categories.iter().enumerate() {
                if !refs.contains(&x.name.as_str()) && x.name != DNS_BYPASS_CATEGORY {
                    proptest::prop_assert!(x.sources.is_empty());
                    proptest::prop_assert_eq!(in_force.get(i), Some(&x.name));
                }
            }
            let mut want: Vec<String> = blocked_in_file.iter().map(|n| n.to_string()).collect();
            want.sort();
            let mut got = blocked(&c, "p1");
            got.sort();
            proptest::prop_assert_eq!(got, want);
            in_force = c.categories.iter().map(|x| x.name.clone()).collect();
        }
    }
}

#[test]
fn embedded_default_is_valid() {
    let c = Config::embedded().expect("valid");
    assert_eq!(c.policies[c.unknown_policy].name, "default");
    assert!(c.devices.is_empty());
    assert_eq!(c.bpffs, PathBuf::from(DEFAULT_BPFFS));
}

#[test]
fn full_foundation_config() {
    let c = parse(
        r#"
[gateway]
mode = "monitor"
unknown_devices = "guest"
bpffs = "/sys/fs/bpf/gw-test"

[[interface]]
name = "veth0"
link = "raw-ip"

[[policy]]
name = "guest"

[[policy]]
name = "students"
mode = "enforce"

[[device]]
name = "bus-17"
mac = "02:00:00:00:00:17"
ip = ["10.0.0.17", "fd00::17"]
cidr = ["10.0.1.0/24"]
policy = "students"
imei = "356938035643809"
suspended = true
"#,
    )
    .expect("valid");
    assert_eq!(c.mode, Mode::Monitor);
    assert_eq!(
        c.interfaces,
        vec![Interface {
            name: "veth0".into(),
            link: LinkSetting::RawIp
        }]
    );
    assert_eq!(c.policies[c.unknown_policy].name, "guest");
    assert_eq!(c.policies[0].mode, Mode::Monitor);
    assert_eq!(c.policies[1].mode, Mode::Enforce);
    let d = &c.devices[0];
    assert_eq!(d.macs, vec![[2, 0, 0, 0, 0, 0x17]]);
    assert_eq!(display_addr(&d.ips[0]), "10.0.0.17");
    assert_eq!(display_addr(&d.ips[1]), "fd00::17");
    assert_eq!(d.cidrs[0].prefix, 96 + 24);
    assert!(d.suspended);
    assert_eq!(
        d.metadata.get("imei").map(String::as_str),
        Some("356938035643809")
    );
    assert_eq!(c.policies[d.policy].name, "students");
}

#[test]
fn errors_are_located_and_specific() {
    let cases: &[(&str, &str)] = &[
        (
            "[gateway]\nmode = \"loud\"\n",
            "t.toml:2:8: unknown variant `loud`, expected `enforce` or `monitor`",
        ),
        (
            "[gateway]\nfoo = 1\n",
            "t.toml:2:1: unknown field `foo`, expected one of `mode`, `unknown_devices`, `bpffs`, `max_domains`, `max_tls_flows`, `tls_ports`, `http_ports`, `dns_resolvers`, `inventories`, `timezone`, `state_dir`",
        ),
        (
            "[[policy]]\nname = \"a\"\nlog = \"some\"\n",
            "t.toml:3:7: unknown variant `some`, expected one of `all`, `blocked`, `none`",
        ),
        (
            "[gateway]\ntls_ports = [443, 70000]\n",
            "t.toml:2:19: tls_ports: 70000 is not a port (1-65535)",
        ),
        (
            "[gateway]\ntls_ports = []\n",
            "t.toml:2:13: tls_ports: empty (expected at least one port, e.g. [443])",
        ),
        (
            "[gateway]\nhttp_ports = [80, 0]\n",
            "t.toml:2:19: http_ports: 0 is not a port (1-65535)",
        ),
        (
            "[gateway]\nhttp_ports = [443]\n",
            "t.toml:2:14: http_ports: 443 is a TLS port too (tls_ports)",
        ),
        (
            "[[policy]]\nname = \"a\"\nsafe_search = [\"google\", \"altavista\"]\n",
            "t.toml:3:26: policy \"a\": safe_search: no engine \"altavista\" (known: google, youtube-strict, youtube-moderate, bing, duckduckgo, ecosia, pixabay, yandex)",
        ),
        (
            "[[policy]]\nname = \"a\"\nsafe_search = [\"youtube-strict\", \"youtube-moderate\"]\n",
            "t.toml:3:34: policy \"a\": safe_search: \"youtube-moderate\" and \"youtube-strict\" cover the same names (choose one)",
        ),
        (
            "[safe_search]\nresolver = \"dns.example\"\n",
            "t.toml:2:12: safe_search.resolver: \"dns.example\" is not an address (expected e.g. 9.9.9.9, 192.0.2.53:5353 or [2001:db8::53]:53)",
        ),
        (
            "[[policy]]\nname = \"a\"\non_unparsed_http = \"maybe\"\n",
            "t.toml:3:20: unknown variant `maybe`, expected `allow` or `block`",
        ),
        (
            "[gateway]\nmax_tls_flows = 0\n",
            "t.toml:2:17: max_tls_flows: must be at least 1",
        ),
        (
            "[[policy]]\nname = \"a\"\nblock_ports = [\"853/sctp\"]\n",
            "t.toml:3:16: policy \"a\": block_ports: \"853/sctp\": unknown transport \"sctp\" (expected tcp or udp)",
        ),
        (
            "[[policy]]\nname = \"a\"\nblock_ports = [\"0/tcp\"]\n",
            "t.toml:3:16: policy \"a\": block_ports: \"0/tcp\": \"0\" is not a port (1-65535)",
        ),
        (
            "[[policy]]\nname = \"a\"\ntls_block_answer = \"reset\"\n",
            "t.toml:3:20: unknown variant `reset`, expected `rst` or `drop`",
        ),
        (
            "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\nip = \"10.0.0.1\"\npolicy = \"b\"\n",
            "t.toml:6:10: device \"d\": no policy named \"b\" (defined: a, default)",
        ),
        (
            "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\nmac = \"02:00:00:00:00\"\npolicy = \"a\"\n",
            "t.toml:5:7: device \"d\": mac[0] \"02:00:00:00:00\": expected six hex octets like 02:00:00:00:00:17",
        ),
        (
            "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\nmac = \"03:00:00:00:00:01\"\npolicy = \"a\"\n",
            "t.toml:5:7: device \"d\": mac[0] \"03:00:00:00:00:01\": not a unicast device address",
        ),
        (
            "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\nip = [\"10.0.0.1\", \"10.0.0.300\"]\npolicy = \"a\"\n",
            "t.toml:5:6: device \"d\": ip[1] \"10.0.0.300\" is not an IPv4 or IPv6 address",
        ),
        (
            "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\ncidr = \"10.0.1.5/24\"\npolicy = \"a\"\n",
            "t.toml:5:8: device \"d\": cidr[0] \"10.0.1.5/24\": host bits are set; the network is 10.0.1.0/24",
        ),
        (
            "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\ncidr = \"10.0.1.0/33\"\npolicy = \"a\"\n",
            "t.toml:5:8: device \"d\": cidr[0] \"10.0.1.0/33\": prefix /33 is longer than /32",
        ),
        (
            "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\nip = \"10.0.0.1\"\npolicy = \"a\"\n[[device]]\nname = \"e\"\nip = \"10.0.0.1\"\npolicy = \"a\"\n",
            "t.toml:9:6: device \"e\": ip[0] 10.0.0.1 is already device \"d\"'s",
        ),
        (
            "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\nip = \"10.0.0.1\"\npolicy = \"a\"\n[[device]]\nname = \"d\"\nip = \"10.0.0.2\"\npolicy = \"a\"\n",
            "t.toml:8:8: device \"d\" is defined twice",
        ),
        (
            "[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\npolicy = \"a\"\n",
            "t.toml:4:8: device \"d\" has no identifier: give mac, ip or cidr",
        ),
        (
            "[[policy]]\nname = \"a\"\n[[policy]]\nname = \"a\"\n",
            "t.toml:4:8: policy \"a\" is defined twice",
        ),
        (
            "[gateway]\nunknown_devices = \"nope\"\n",
            "t.toml:2:19: unknown_devices: no policy named \"nope\" (defined: default)",
        ),
        (
            "[[interface]]\nname = \"a-very-long-interface\"\n",
            "t.toml:2:8: interface name \"a-very-long-interface\" is not a valid interface name (1-15 characters, no '/' or spaces)",
        ),
        (
            "[gateway]\nbpffs = \"relative/dir\"\n",
            "t.toml:2:9: bpffs: \"relative/dir\" must be an absolute path",
        ),
        (
            "[[device]]\nname = \"d\"\nip = \"10.0.0.1\"\n",
            "t.toml:1:1: missing field `policy`",
        ),
        (
            "[gateway]\ndns_resolvers = [\"10.0.0.1\", \"dns.example\"]\n",
            "t.toml:2:30: dns_resolvers: \"dns.example\" is not an IP address (expected e.g. \"10.0.0.1\" or \"fd00::53\")",
        ),
        (
            "[[policy]]\nname = \"p\"\ndns_resolvers = [\"1.2.3\"]\n",
            "t.toml:3:18: policy \"p\": dns_resolvers: \"1.2.3\" is not an IP address (expected e.g. \"10.0.0.1\" or \"fd00::53\")",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(&first_error(text), want, "for config:\n{text}");
    }
}

/// Writes `gateway.toml` and inventory files into a fresh directory and loads it.
fn load_with(files: &[(&str, &str)]) -> Result<Config, Vec<String>> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gw-inv-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write");
    }
    let text = std::fs::read_to_string(dir.join("gateway.toml")).expect("gateway.toml");
    let r = Config::parse(&text, &dir.join("gateway.toml"));
    std::fs::remove_dir_all(&dir).expect("cleanup");
    r.map_err(|e| {
        e.0.iter()
            .map(|e| {
                // Paths relative to the directory, for stable messages.
                let file = e
                    .file
                    .file_name()
                    .map_or(String::new(), |f| f.to_string_lossy().into_owned());
                format!("{file}:{}:{}: {}", e.line, e.column, e.message)
            })
            .collect()
    })
}

const INVENTORY_HEAD: &str = "[gateway]\ninventories = [\"devices.csv\", \"more.toml\"]\n[[policy]]\nname = \"kids\"\n[[policy]]\nname = \"staff\"\n";

#[test]
fn inventories_in_csv_and_toml() {
    let c = load_with(&[
        ("gateway.toml", INVENTORY_HEAD),
        (
            "devices.csv",
            "name,mac,ip,policy,imei,type,suspended\nbus-1,02:00:00:00:00:01,10.0.0.1,kids,356938035643809,bus,\n\"bus-2\",,10.0.0.2;10.0.0.3 fd00::2,staff,,,yes\n",
        ),
        (
            "more.toml",
            "[[device]]\nname = \"cam\"\ncidr = \"10.1.0.0/24\"\npolicy = \"kids\"\n",
        ),
    ])
    .expect("valid");
    assert_eq!(c.devices.len(), 3);
    let bus2 = &c.devices[1];
    assert_eq!(
        (bus2.name.as_str(), bus2.ips.len(), bus2.suspended),
        ("bus-2", 3, true)
    );
    assert_eq!(
        c.devices[0].metadata.get("imei").map(String::as_str),
        Some("356938035643809")
    );
    assert_eq!(c.devices[2].cidrs.len(), 1);
}

#[test]
fn inventory_errors_are_located() {
    let csv = |body: &str| {
        load_with(&[
            ("gateway.toml", INVENTORY_HEAD),
            ("devices.csv", body),
            ("more.toml", ""),
        ])
        .expect_err("invalid")
    };
    let cases: &[(&str, &str)] = &[
        (
            "name,mac,colour,policy\nbus,02:00:00:00:00:01,red,kids\n",
            "devices.csv:1:10: unknown column \"colour\", expected one of name, mac, ip, cidr, policy, suspended, imei, mdn, iccid, nickname, type, notes",
        ),
        (
            "name,ip\nbus,10.0.0.1\n",
            "devices.csv:1:1: the header row has no \"policy\" column",
        ),
        (
            "name,ip,policy\nbus,10.0.0.x,kids\n",
            "devices.csv:2:5: device \"bus\": ip[0] \"10.0.0.x\" is not an IPv4 or IPv6 address",
        ),
        (
            "name,ip,policy\nbus,10.0.0.1,teachers\n",
            "devices.csv:2:14: device \"bus\": no policy named \"teachers\" (defined: kids, staff, default)",
        ),
        (
            "name,ip,policy\nbus,10.0.0.1,kids\nbus,10.0.0.2,kids\n",
            "devices.csv:3:1: device \"bus\" is defined twice",
        ),
        (
            "name,ip,policy\na,10.0.0.1,kids\nb,10.0.0.1,kids\n",
            "devices.csv:3:3: device \"b\": ip[0] 10.0.0.1 is already device \"a\"'s",
        ),
        (
            "name,ip,policy,suspended\nbus,10.0.0.1,kids,maybe\n",
            "devices.csv:2:19: device \"bus\": suspended \"maybe\" (expected true or false)",
        ),
        (
            "name,ip,policy\nbus,10.0.0.1\n",
            "devices.csv:2:1: bad row: CSV error: record 1 (line: 2, byte: 15): found record with 2 fields, but the previous record has 3 fields",
        ),
        (
            "name,ip,policy\nbus,,kids\n",
            "devices.csv:2:1: device \"bus\" has no identifier: give mac, ip or cidr",
        ),
    ];
    for (body, want) in cases {
        assert_eq!(&csv(body)[0], want, "for devices.csv:\n{body}");
    }
    // TOML inventories: located in their own file; nested CIDRs with different policies.
    let e = load_with(&[
        ("gateway.toml", INVENTORY_HEAD),
        ("devices.csv", "name,cidr,policy\nnet,10.1.0.0/16,kids\n"),
        (
            "more.toml",
            "[[device]]\nname = \"cam\"\ncidr = \"10.1.2.0/24\"\npolicy = \"staff\"\n",
        ),
    ])
    .expect_err("overlap");
    assert_eq!(
        e,
        vec![
            "more.toml:3:8: device \"cam\": cidr 10.1.2.0/24 lies inside device \"net\"'s 10.1.0.0/16, which has another policy (staff vs kids)"
        ]
    );
    let e = load_with(&[
        ("gateway.toml", INVENTORY_HEAD),
        ("devices.csv", "name,policy\n"),
        ("more.toml", "[[device]]\nname = \"cam\"\nkind = \"x\"\n"),
    ])
    .expect_err("unknown key");
    assert!(
        e[0].starts_with("more.toml:3:1: unknown field `kind`"),
        "{e:?}"
    );
    let e = load_with(&[
        ("gateway.toml", INVENTORY_HEAD),
        ("devices.csv", "name,policy\n"),
    ])
    .expect_err("missing file");
    assert!(
        e[0].starts_with("gateway.toml:2:31: inventories: ")
            && e[0].ends_with("cannot read: No such file or directory (os error 2)"),
        "{e:?}"
    );
}

const SCHEDULED: &str = r#"
[gateway]
timezone = "America/New_York"

[[policy]]
name = "students"
schedule = [
  { days = "mon-fri", from = "08:00", to = "15:00", policy = "class" },
  { days = "fri,sat", from = "22:00", to = "06:00", policy = "night" },
]

[[policy]]
name = "class"

[[policy]]
name = "night"

[[device]]
name = "tablet"
ip = "10.0.0.1"
policy = "students"
"#;

/// The policy in force for the tablet at a local time in New York.
fn in_force(c: &Config, local: &str) -> String {
    let t = jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M", local)
        .expect("time")
        .to_zoned(jiff::tz::TimeZone::get("America/New_York").expect("tz"))
        .expect("zoned")
        .timestamp();
    c.policies[c.effective_policy(c.devices[0].policy, t)]
        .name
        .clone()
}

#[test]
fn schedules_switch_at_their_boundaries() {
    let c = parse(SCHEDULED).expect("valid");
    // 2026-11-23 is a Monday; 2026-11-27 a Friday.
    for (at, want) in [
        ("2026-11-23 07:59", "students"),
        ("2026-11-23 08:00", "class"),
        ("2026-11-23 14:59", "class"),
        ("2026-11-23 15:00", "students"),
        // Days of week: not on Saturday or Sunday.
        ("2026-11-28 09:00", "students"),
        ("2026-11-29 09:00", "students"),
        // Over midnight: Friday 22:00 to Saturday 06:00, Saturday 22:00 to Sunday 06:00.
        ("2026-11-27 21:59", "students"),
        ("2026-11-27 22:00", "night"),
        ("2026-11-28 05:59", "night"),
        ("2026-11-28 06:00", "students"),
        ("2026-11-28 23:30", "night"),
        ("2026-11-29 05:00", "night"),
        // Thursday night is not a listed evening; Friday morning is not the morning after one.
        ("2026-11-26 23:00", "students"),
        ("2026-11-27 05:00", "students"),
    ] {
        assert_eq!(in_force(&c, at), want, "at {at}");
    }
    // The same instant is another local time elsewhere: the configured zone decides.
    let utc = parse(&SCHEDULED.replace("America/New_York", "UTC")).expect("valid");
    let t: jiff::Timestamp = "2026-11-23T13:30:00Z".parse().expect("instant");
    assert_eq!(utc.policies[utc.effective_policy(0, t)].name, "class");
    assert_eq!(c.policies[c.effective_policy(0, t)].name, "class");
    let t: jiff::Timestamp = "2026-11-23T19:30:00Z".parse().expect("instant");
    assert_eq!(utc.policies[utc.effective_policy(0, t)].name, "students");
    assert_eq!(c.policies[c.effective_policy(0, t)].name, "class");
}

#[test]
fn schedule_errors_are_located() {
    let with = |window: &str| {
        first_error(&format!(
            "[[policy]]\nname = \"a\"\nschedule = [{window}]\n[[policy]]\nname = \"b\"\n"
        ))
    };
    for (window, want) in [
        (
            r#"{ days = "mon-fru", from = "08:00", to = "15:00", policy = "b" }"#,
            "t.toml:3:22: policy \"a\": schedule[0]: days: \"fru\" is not a day (expected mon, tue, wed, thu, fri, sat, sun)",
        ),
        (
            r#"{ days = "mon", from = "8:00", to = "15:00", policy = "b" }"#,
            "t.toml:3:36: policy \"a\": schedule[0]: from: \"8:00\" is not a time of day (expected HH:MM, 00:00 to 24:00)",
        ),
        (
            r#"{ days = "mon", from = "08:00", to = "25:00", policy = "b" }"#,
            "t.toml:3:50: policy \"a\": schedule[0]: to: \"25:00\" is not a time of day (expected HH:MM, 00:00 to 24:00)",
        ),
        (
            r#"{ days = "mon", from = "08:00", to = "08:00", policy = "b" }"#,
            "t.toml:3:50: policy \"a\": schedule[0]: an empty window (from = to)",
        ),
        (
            r#"{ days = "mon", from = "08:00", to = "09:00", policy = "c" }"#,
            "t.toml:3:68: policy \"a\": schedule[0]: no policy named \"c\" (defined: a, b, default)",
        ),
        (
            r#"{ days = "mon", from = "08:00", to = "09:00", policy = "a" }"#,
            "t.toml:3:68: policy \"a\": schedule[0]: a policy cannot schedule itself",
        ),
        (
            r#"{ days = "mon", from = "08:00", to = "09:00", policy = "b", colour = 1 }"#,
            "t.toml:3:73: unknown field `colour`, expected one of `days`, `from`, `to`, `policy`",
        ),
    ] {
        assert_eq!(with(window), want, "{window}");
    }
    assert_eq!(
        first_error("[gateway]\ntimezone = \"Mars/Olympus\"\n"),
        "t.toml:2:12: timezone: \"Mars/Olympus\" is not a time zone (expected an IANA name like Europe/Berlin)"
    );
    assert_eq!(
        first_error(
            "[[policy]]\nname = \"a\"\nschedule = [{ days = \"mon\", from = \"08:00\", to = \"09:00\", policy = \"b\" }]\n[[policy]]\nname = \"b\"\nschedule = [{ days = \"mon\", from = \"08:00\", to = \"09:00\", policy = \"a\" }]\n"
        ),
        "t.toml:3:68: policy \"a\": schedule[0]: \"b\" has a schedule of its own (schedules do not chain)"
    );
}

#[test]
fn api_and_history_settings() {
    let c = parse("").expect("defaults");
    assert_eq!(c.api.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.api.device_labels, DeviceLabels::Pseudonym);
    assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(
        (
            c.history.enabled,
            c.history.retention_days,
            c.history.max_rows,
            c.history.pseudonymize
        ),
        (true, DEFAULT_RETENTION_DAYS, DEFAULT_MAX_ROWS, false)
    );
    let c = parse("[gateway]\nstate_dir = \"state\"\n[api]\nlisten = \"[::1]:9000\"\ndevice_labels = \"name\"\n[history]\nretention_days = 7\nmax_rows = 5000\npseudonymize = true\n").expect("valid");
    assert_eq!(c.state_dir, PathBuf::from("state"));
    assert_eq!(c.api.listen.to_string(), "[::1]:9000");
    assert_eq!(c.api.device_labels, DeviceLabels::Name);
    assert_eq!(
        (
            c.history.retention_days,
            c.history.max_rows,
            c.history.pseudonymize
        ),
        (7, 5000, true)
    );
    for (text, want) in [
        (
            "[api]\nlisten = \"localhost\"\n",
            "t.toml:2:10: api.listen: \"localhost\" is not an address and port (expected e.g. 127.0.0.1:9477 or [::1]:9477)",
        ),
        (
            "[api]\ndevice_labels = \"mac\"\n",
            "t.toml:2:17: unknown variant `mac`, expected one of `pseudonym`, `name`, `none`",
        ),
        (
            "[history]\nretention_days = 0\n",
            "t.toml:2:18: history.retention_days: 0 is out of range (expected 1 to 3650)",
        ),
        (
            "[history]\nmax_rows = 10\n",
            "t.toml:2:12: history.max_rows: 10 is out of range (expected 1000 to 1000000000)",
        ),
        (
            "[history]\nmax_megabytes = 0\n",
            "t.toml:2:17: history.max_megabytes: 0 is out of range (expected 1 to 1000000)",
        ),
        (
            "[history]\npseudonymise = true\n",
            "t.toml:2:1: unknown field `pseudonymise`, expected one of `enabled`, `retention_days`, `max_rows`, `max_megabytes`, `pseudonymize`, `ship`, `ship_only`, `ship_ca_file`",
        ),
    ] {
        assert_eq!(first_error(text), want, "{text}");
    }
}

#[test]
fn all_errors_are_reported() {
    let e =
        parse("[[policy]]\nname = \"a\"\n[[device]]\nname = \"d\"\nip = \"x\"\npolicy = \"b\"\n")
            .expect_err("invalid");
    assert_eq!(e.0.len(), 2);
}

#[test]
fn bpffs_is_found_even_in_a_config_that_does_not_validate() {
    let dir = std::env::temp_dir().join(format!("gw-bpffs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let f = dir.join("broken.toml");
    std::fs::write(
        &f,
        "[gateway]\nbpffs = \"/sys/fs/bpf/x\"\n[[device]]\nname = 1\n",
    )
    .expect("write");
    assert!(Config::load(&f).is_err());
    assert_eq!(
        Config::bpffs_of(Some(&f)).expect("lenient"),
        PathBuf::from("/sys/fs/bpf/x")
    );
    std::fs::write(&f, "[gateway\n").expect("write");
    let e = Config::bpffs_of(Some(&f)).expect_err("not TOML");
    assert!(e.to_string().contains("broken.toml:1:"), "{e}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn cidr_masks() {
    assert_eq!(parse_cidr("10.0.0.0/8").map(|c| c.prefix), Ok(104));
    assert_eq!(parse_cidr("fd00::/64").map(|c| c.prefix), Ok(64));
    assert!(parse_cidr("fd00::1/64").is_err());
    assert_eq!(parse_cidr("0.0.0.0/0").map(|c| c.prefix), Ok(96));
    assert!(parse_cidr("10.0.0.0").is_err());
}

#[test]
fn dns_resolvers_and_the_dns_bypass_ports() {
    let c = parse(
        "[gateway]\ndns_resolvers = [\"10.0.0.1\", \"fd00::53\"]\n\n\
         [[policy]]\nname = \"own\"\ndns_resolvers = [\"192.0.2.53\", \"10.0.0.1\"]\n\n\
         [[policy]]\nname = \"inherits\"\nblock_categories = [\"dns-bypass\"]\n",
    )
    .expect("valid");
    let d = Desired::compile(
        &c,
        &std::collections::HashMap::new(),
        jiff::Timestamp::now(),
    );
    let v4 = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_ipv6_mapped().octets();
    let v6: [u8; 16] = "fd00::53"
        .parse::<std::net::Ipv6Addr>()
        .expect("v6")
        .octets();
    // The union, in order; each policy a mask of it.
    assert_eq!(d.resolvers, [v4([10, 0, 0, 1]), v4([192, 0, 2, 53]), v6]);
    let id = |name: &str| {
        c.policies
            .iter()
            .position(|p| p.name == name)
            .expect("policy")
    };
    assert_eq!(d.policies[id("own")].resolvers, 0b011);
    assert_eq!(d.policies[id("inherits")].resolvers, 0b101);
    // Blocking dns-bypass blocks DoT and DoQ by port.
    let ports: Vec<(u8, u16)> = d
        .block_ports
        .iter()
        .filter(|(p, _, _)| *p == id("inherits") as u32)
        .map(|&(_, proto, port)| (proto, port))
        .collect();
    assert_eq!(ports, [(6, 853), (17, 853)]);
    assert!(
        d.block_ports
            .iter()
            .all(|(p, _, _)| *p == id("inherits") as u32)
    );

    // At most MAX_RESOLVERS distinct addresses, the first one too many named.
    let many: Vec<String> = (1..=17).map(|i| format!("\"10.0.1.{i}\"")).collect();
    let text = format!("[gateway]\ndns_resolvers = [{}]\n", many.join(", "));
    let e = first_error(&text);
    assert!(
        e.starts_with("t.toml:2:") && e.contains("\"10.0.1.17\" is one address too many"),
        "{e}"
    );
}
