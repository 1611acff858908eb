//! DNS through the kernel across configurations: schedules, reloads that write the
//! difference, `log` levels, events named across a reload, and the decision counters read in
//! batches and across slot reuse; a shared filter emptied between uses.

use super::*;

/// Schedules through the kernel: the policy in force when the configuration is applied decides
/// (the daemon re-applies at each window boundary).
#[test]
fn scheduled_policies_decide_in_their_windows() {
    let text = r#"
[gateway]
timezone = "UTC"

[[policy]]
name = "students"
block = ["always.example"]
schedule = [{ days = "mon-fri", from = "08:00", to = "15:00", policy = "class" }]

[[policy]]
name = "class"
block = ["always.example", "games.example"]

[[device]]
name = "tablet"
mac = "02:00:00:00:01:01"
policy = "students"
"#;
    let config = Config::parse(text, std::path::Path::new("schedule.toml")).expect("config");
    let mut r = TestRunner::shared(&config, LinkType::Ethernet).expect("load");
    let l2 = L2::Ethernet {
        src: mac(1),
        dst: GW_MAC,
    };
    let ask = |r: &mut TestRunner, name: &str| {
        let res = r
            .run(&dns_frame(l2, V4, &query(7, name, RecordType::A, false)))
            .expect("run");
        (res.verdict, res.policy)
    };
    let class = config.policy_id("class").expect("class") as u32;
    let students = config.policy_id("students").expect("students") as u32;
    // Monday 2026-11-23: in class at 10:00, out at 16:00; Saturday: never.
    for (at, games, policy) in [
        ("2026-11-23T10:00:00Z", Verdict::Tx, class),
        ("2026-11-23T16:00:00Z", Verdict::Pass, students),
        ("2026-11-28T10:00:00Z", Verdict::Pass, students),
        ("2026-11-23T08:00:00Z", Verdict::Tx, class),
        ("2026-11-23T07:59:00Z", Verdict::Pass, students),
    ] {
        r.reconfigure_at(&config, at.parse().expect("instant"))
            .expect("apply");
        assert_eq!(ask(&mut r, "games.example"), (games, policy), "at {at}");
        assert_eq!(ask(&mut r, "always.example").0, Verdict::Tx, "at {at}");
    }
}

/// A reload applies the difference: a 10-domain change to a 20,000-domain policy writes only the
/// buckets of those domains (both generations), and the change is in force.
#[test]
fn small_changes_write_few_entries() {
    let config_with = |extra: &[&str], skip: usize| {
        let mut domains: Vec<String> = (0..20_000)
            .filter(|i| *i != skip)
            .map(|i| format!("\"d{i}.list.example\""))
            .collect();
        domains.extend(extra.iter().map(|d| format!("\"{d}\"")));
        let text = format!(
            "[[category]]\nname = \"big\"\ndomains = [{}]\n[[policy]]\nname = \"students\"\nblock_categories = [\"big\"]\ndns_block_answer = \"drop\"\n[[device]]\nname = \"tablet\"\nmac = \"02:00:00:00:01:01\"\npolicy = \"students\"\n",
            domains.join(", ")
        );
        Config::parse(&text, std::path::Path::new("big.toml")).expect("config")
    };
    let mut r =
        TestRunner::shared(&config_with(&[], usize::MAX), LinkType::Ethernet).expect("load");
    let l2 = L2::Ethernet {
        src: mac(1),
        dst: GW_MAC,
    };
    let verdict = |r: &mut TestRunner, name: &str| {
        r.run(&dns_frame(l2, V4, &query(9, name, RecordType::A, false)))
            .expect("run")
            .verdict
    };
    assert_eq!(verdict(&mut r, "d7.list.example"), Verdict::Drop);
    let added: Vec<String> = (0..9).map(|i| format!("new{i}.example")).collect();
    let added: Vec<&str> = added.iter().map(String::as_str).collect();
    r.reconfigure(&config_with(&added, 7)).expect("reload");
    // 9 added and 1 removed domain, each a bucket or two (a cuckoo kick moves one more), in
    // both generations; plus the generation settings.
    assert!(r.changes() <= 50, "{} entries written", r.changes());
    assert_eq!(verdict(&mut r, "d7.list.example"), Verdict::Pass);
    assert_eq!(verdict(&mut r, "new3.example"), Verdict::Drop);
    assert_eq!(verdict(&mut r, "d8.list.example"), Verdict::Drop);

    // The same from a list file, as a daemon reloads it: the file is not parsed again and only
    // the inline domains are recompiled.
    let dir = std::env::temp_dir().join(format!("gw-small-changes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let list: String = (0..20_000)
        .map(|i| format!("d{i}.list.example\n"))
        .collect();
    std::fs::write(dir.join("big.domains"), list).expect("write");
    let file = dir.join("gateway.toml");
    let load = |inline: &str| {
        let text = format!(
            "[[category]]\nname = \"big\"\nlists = [\"big.domains\"]\ndomains = [{inline}]\n[[policy]]\nname = \"students\"\nblock_categories = [\"big\"]\nallow = [\"d9.list.example\"]\ndns_block_answer = \"drop\"\n[[device]]\nname = \"tablet\"\nmac = \"02:00:00:00:01:01\"\npolicy = \"students\"\n"
        );
        std::fs::write(&file, text).expect("write");
        Config::load(&file).expect("config")
    };
    let first = load("\"old.example\"");
    r.reconfigure(&first).expect("reload");
    assert_eq!(verdict(&mut r, "old.example"), Verdict::Drop);
    let second = load("\"n1.example\", \"n2.example\", \"d9.list.example\"");
    assert!(
        std::sync::Arc::ptr_eq(
            &first.categories[0].sources[0],
            &second.categories[0].sources[0]
        ),
        "the unchanged list file was parsed again"
    );
    r.reconfigure(&second).expect("reload");
    // 1 removed and 2 added (the allowed d9 gains a category it already had through the
    // list: no change), a bucket or two each, in both generations, and the settings.
    assert!(r.changes() <= 20, "{} entries written", r.changes());
    assert_eq!(verdict(&mut r, "old.example"), Verdict::Pass);
    assert_eq!(verdict(&mut r, "n2.example"), Verdict::Drop);
    assert_eq!(verdict(&mut r, "d9.list.example"), Verdict::Pass);
    assert_eq!(verdict(&mut r, "d19999.list.example"), Verdict::Drop);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// `log` per policy, honoured in the kernel: `all` leaves an event per decision, `blocked` only
/// for blocked names, `none` none at all.
#[test]
fn log_levels_are_honoured_in_the_kernel() {
    let text = r#"
[[policy]]
name = "everything"
block = ["blocked.example"]

[[policy]]
name = "only-blocks"
block = ["blocked.example"]
log = "blocked"

[[policy]]
name = "private"
block = ["blocked.example"]
log = "none"

[[device]]
name = "a"
mac = "02:00:00:00:01:01"
policy = "everything"

[[device]]
name = "b"
mac = "02:00:00:00:01:02"
policy = "only-blocks"

[[device]]
name = "c"
mac = "02:00:00:00:01:03"
policy = "private"
"#;
    let config = Config::parse(text, std::path::Path::new("log.toml")).expect("config");
    let mut r = TestRunner::shared(&config, LinkType::Ethernet).expect("load");
    r.maps.drain_events();
    for (dev, want) in [(1u8, 2usize), (2, 1), (3, 0)] {
        let l2 = L2::Ethernet {
            src: mac(dev),
            dst: GW_MAC,
        };
        let blocked = r
            .run(&dns_frame(
                l2,
                V4,
                &query(1, "blocked.example", RecordType::A, false),
            ))
            .expect("run");
        let allowed = r
            .run(&dns_frame(
                l2,
                V4,
                &query(2, "other.example", RecordType::A, false),
            ))
            .expect("run");
        // Decided the same way whatever the logging.
        assert_eq!(
            (blocked.verdict, allowed.verdict),
            (Verdict::Tx, Verdict::Pass)
        );
        let events = r.maps.drain_events();
        assert_eq!(events.len(), want, "device {dev}: {events:?}");
        if want == 1 {
            assert_eq!(events[0].name(), "blocked.example");
        }
    }
}

/// Events are stamped on the clock the daemon reads when it flips generations: an event decided
/// before a reload that inserts a policy, drained after it, is named by the policy it was
/// decided under (the history's `Naming`), not by the one now at its number.
#[test]
fn events_drained_after_a_reload_keep_their_policy() {
    let text = |first: &str| {
        format!(
            "{first}[[category]]\nname = \"ads\"\ndomains = [\"ads.example\"]\n\n[[policy]]\nname = \"students\"\nblock_categories = [\"ads\"]\n\n[[device]]\nname = \"a\"\nmac = \"02:00:00:00:01:01\"\npolicy = \"students\"\n"
        )
    };
    let before = Config::parse(&text(""), std::path::Path::new("a.toml")).expect("config");
    let after = Config::parse(
        &text("[[policy]]\nname = \"guests\"\n\n"),
        std::path::Path::new("b.toml"),
    )
    .expect("config");
    assert_eq!(after.policies[0].name, "guests");
    let mut r = TestRunner::shared(&before, LinkType::Ethernet).expect("load");
    r.maps.drain_events();
    let mut naming = Naming::default();
    naming.set(
        r.applied.active_from_boot_ns,
        Names::of(&before, &r.applied.slots, None),
    );
    let frame = dns_frame(
        L2::Ethernet {
            src: mac(1),
            dst: GW_MAC,
        },
        V4,
        &query(1, "ads.example", RecordType::A, false),
    );
    assert_eq!(r.run(&frame).expect("run").verdict, Verdict::Tx);
    let flip_earliest = gateway_user::kernel::sys::boot_ns();
    r.reconfigure(&after).expect("reload");
    let flip = r.applied.active_from_boot_ns;
    naming.set(flip, Names::of(&after, &r.applied.slots, None));
    assert_eq!(r.run(&frame).expect("run").verdict, Verdict::Tx);
    let events = r.maps.drain_events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        flip_earliest <= flip,
        "the flip's stamp precedes the reload"
    );
    assert!(
        events[0].boot_ns < flip && flip <= events[1].boot_ns,
        "events at {} and {}, flip at {flip}",
        events[0].boot_ns,
        events[1].boot_ns
    );
    // Number 0 was `students` and is now `guests`.
    assert_eq!((events[0].policy, events[1].policy), (0, 1));
    for ev in &events {
        let row = naming.row(ev, 0);
        assert_eq!(
            (row.device.as_str(), row.policy.as_str()),
            ("a", "students")
        );
    }
    // Named by the configuration in force when drained, the first would be a guest's.
    let now = Names::of(&after, &r.applied.slots, None);
    assert_eq!(now.row(&events[0], 0).policy, "guests");
}

/// A decision key no decision has (an invalid reason: the snapshot does not show it).
const FOREIGN: DecisionKey = DecisionKey {
    slot: 0xffff,
    proto: 0,
    action: 0,
    reason: 0xff,
    category: 0,
};

/// `DECISION_CACHE` slot owned by `FOREIGN`, with one count.
const FOREIGN_SLOT: DecisionSlot = DecisionSlot {
    key: FOREIGN.to_word(),
    count: 1,
};

/// Rewrites every slot of `DECISION_CACHE` on every CPU with `f` of what it holds.
fn fill_decision_cache(r: &mut TestRunner, f: impl Fn(DecisionSlot) -> DecisionSlot) {
    let cpus = aya::util::nr_cpus().expect("cpus");
    for i in 0..DECISION_CACHE_SLOTS {
        let now = r.maps.decision_cache.get(&i, 0).expect("slot");
        let new: Vec<DecisionSlot> = now.iter().map(|s| f(*s)).collect();
        assert_eq!(new.len(), cpus);
        r.maps
            .decision_cache
            .set(
                i,
                aya::maps::PerCpuValues::try_from(new).expect("values"),
                0,
            )
            .expect("set");
    }
}

/// Three devices' queries: 27 decisions.
fn decide_for_three_devices(r: &mut TestRunner) {
    for dev in 1..=3u8 {
        let l2 = L2::Ethernet {
            src: mac(dev),
            dst: GW_MAC,
        };
        for (i, name) in ["blocked.example", "other.example", "x.blocked.example"]
            .iter()
            .enumerate()
        {
            for _ in 0..=dev {
                r.run(&dns_frame(
                    l2,
                    V4,
                    &query(i as u16, name, RecordType::A, false),
                ))
                .expect("run");
            }
        }
    }
}

/// The counters read in batches (`BPF_MAP_LOOKUP_BATCH`) are the counters read key by key, and
/// the decision counts are those of `DECISIONS` and `DECISION_CACHE` together.
#[test]
fn batched_counter_reads_equal_key_by_key_reads() {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    let (mut r, _) = runners();
    // Every cache slot owned by a key no decision has: the decisions are all counted in
    // `DECISIONS`.
    fill_decision_cache(&mut r, |_| FOREIGN_SLOT);
    decide_for_three_devices(&mut r);
    // The kernel batches these maps (the fast path is taken, not the fallback).
    let cpus = aya::util::nr_cpus().expect("cpus");
    let raw =
        gateway_user::kernel::batch::lookup_all(r.maps.decisions.map().fd().as_fd(), 8, 8 * cpus)
            .expect("batch")
            .expect("batch lookups supported");
    let one_by_one: std::collections::BTreeMap<_, u64> = r
        .maps
        .decisions
        .iter()
        .map(|kv| {
            let (k, v) = kv.expect("entry");
            (
                (k.slot, k.proto, k.action, k.reason, k.category),
                v.iter().sum(),
            )
        })
        .collect();
    assert_eq!(raw.len(), one_by_one.len());
    assert!(one_by_one.len() >= 3, "{one_by_one:?}");
    let snap = gateway_user::observe::stats::snapshot(&r.maps).expect("snapshot");
    // The foreign key: one more key, shown nowhere.
    assert_eq!(snap.decision_keys, one_by_one.len() + 1);
    let total: u64 = snap.decisions.iter().map(|d| d.count).sum();
    assert_eq!(total, one_by_one.values().sum::<u64>());
    assert_eq!(total, 2 * 3 + 3 * 3 + 4 * 3, "one decision per query");
    let merged = gateway_user::kernel::counters::decision_counts(&r.maps).expect("counts");
    assert!(merged.contains(&(FOREIGN, (DECISION_CACHE_SLOTS as usize * cpus) as u64)));

    // Free cache slots: the same decisions again are counted in the cache (`DECISIONS` does not
    // move), and every key's total is both maps' counts.
    fill_decision_cache(&mut r, |_| DecisionSlot::default());
    decide_for_three_devices(&mut r);
    let table_after: u64 = r
        .maps
        .decisions
        .iter()
        .map(|kv| kv.expect("entry").1.iter().sum::<u64>())
        .sum();
    assert_eq!(table_after, total, "the second round went to the cache");
    let snap2 = gateway_user::observe::stats::snapshot(&r.maps).expect("snapshot");
    assert_eq!(snap2.decision_keys, one_by_one.len());
    for d in &snap.decisions {
        let again = snap2
            .decisions
            .iter()
            .find(|x| {
                (&x.device, x.proto, x.action, x.reason, x.category)
                    == (&d.device, d.proto, d.action, d.reason, d.category)
            })
            .expect("same key");
        assert_eq!(again.count, 2 * d.count, "{d:?}");
    }
    let snap = snap2;
    for d in &snap.devices {
        let (_, slot) = (d.device.as_str(), d.slot);
        let t: gateway_common::maps::DeviceTraffic = gateway_user::kernel::counters::sum(
            &r.maps.device_traffic.get(&slot, 0).expect("traffic"),
        );
        assert_eq!((d.packets, d.bytes), (t.packets, t.bytes), "{}", d.device);
    }
    let per_reason: u64 = snap.reasons.iter().map(|x| x.packets).sum();
    assert_eq!(per_reason, snap.totals.packets);
    assert_eq!(snap.totals.packets, 2 * 27);
}

/// A slot given to another device starts from zero: the decisions of the device that had it
/// are removed from `DECISIONS` and from every CPU's `DECISION_CACHE`.
#[test]
fn a_reused_slot_starts_without_the_old_devices_decisions() {
    let (mut r, _) = runners();
    let student = L2::Ethernet {
        src: mac(1),
        dst: GW_MAC,
    };
    // One key in the cache, one in `DECISIONS`: fill the cache first for the second.
    r.run(&dns_frame(
        student,
        V4,
        &query(1, "ads.example", RecordType::A, false),
    ))
    .expect("run");
    fill_decision_cache(&mut r, |s| if s.count == 0 { FOREIGN_SLOT } else { s });
    r.run(&dns_frame(
        student,
        V4,
        &query(2, "other.example", RecordType::A, false),
    ))
    .expect("run");
    let student_rows = |r: &TestRunner, name: &str| {
        gateway_user::observe::stats::snapshot(&r.maps)
            .expect("snapshot")
            .decisions
            .into_iter()
            .filter(|d| d.device == name)
            .map(|d| d.count)
            .sum::<u64>()
    };
    assert_eq!(student_rows(&r, "student"), 2);
    assert_eq!(
        r.maps.decisions.iter().count(),
        1,
        "the second decision went to DECISIONS"
    );
    // The student leaves; then a new device takes the freed slot.
    let without = CONFIG.replace(
        "[[device]]\nname = \"student\"\nmac = \"02:00:00:00:01:01\"\nip = \"10.0.0.1\"\npolicy = \"students\"\n",
        "",
    );
    assert_ne!(without, CONFIG);
    let cfg = Config::parse(&without, std::path::Path::new("dns.toml")).expect("config");
    r.reconfigure(&cfg).expect("without the student");
    let with_new = format!(
        "{without}\n[[device]]\nname = \"newcomer\"\nmac = \"02:00:00:00:01:09\"\npolicy = \"students\"\n"
    );
    let cfg = Config::parse(&with_new, std::path::Path::new("dns.toml")).expect("config");
    r.reconfigure(&cfg).expect("with the newcomer");
    assert_eq!(student_rows(&r, "newcomer"), 0, "counts start from zero");
    assert_eq!(r.maps.decisions.iter().count(), 0);
    let counts = gateway_user::kernel::counters::decision_counts(&r.maps).expect("counts");
    assert!(
        counts.iter().all(|(k, _)| *k == FOREIGN),
        "only the foreign key is left: {counts:?}"
    );
}

/// A filter from `TestRunner::shared` serves its next user as a fresh load would: the same
/// programs (not verified again), none of the last use's counters, decisions, flows or events,
/// and the same frames decided the same way.
#[test]
fn a_shared_filter_is_emptied_between_uses() {
    // A table size no other test uses: no other test can take this filter in between.
    let text = format!("[gateway]\nmax_tls_flows = 777\n{CONFIG}");
    let config = Config::parse(&text, std::path::Path::new("shared.toml")).expect("config");
    let e = L2::Ethernet {
        src: mac(1),
        dst: GW_MAC,
    };
    let blocked = query(7, "www.ads.example.", RecordType::A, false);
    let frames = [
        tcp_dns_frame(e, V4, 1_000_000, 1, &blocked, None),
        // The flow is blocked now.
        tcp_dns_frame(
            e,
            V4,
            1_000_002 + blocked.len() as u32,
            1,
            &query(8, "allowed.example.", RecordType::A, false),
            None,
        ),
        dns_frame(e, V4, &query(9, "ads.example.", RecordType::A, false)),
    ];
    let program_id = |r: &mut TestRunner| {
        r.filter
            .program()
            .expect("program")
            .info()
            .expect("info")
            .id()
    };
    let (program, first) = {
        let mut r = TestRunner::shared(&config, LinkType::Ethernet).expect("load");
        let first: Vec<RunResult> = frames.iter().map(|f| r.run(f).expect("run")).collect();
        assert_eq!(
            first[1].reason,
            Reason::FlowBlocked,
            "state kept within a use"
        );
        let events = r.maps.events.as_mut().expect("events");
        assert!(events.next().is_some(), "the blocks made events");
        (program_id(&mut r), first)
    };
    let mut r = TestRunner::shared(&config, LinkType::Ethernet).expect("again");
    assert_eq!(
        program_id(&mut r),
        program,
        "the idle filter was taken again"
    );
    let counters = gateway_user::kernel::counters::reason_counters(&r.maps).expect("counters");
    let counted: Vec<_> = counters
        .iter()
        .filter(|(_, c)| c.packets > 0 || c.bytes > 0)
        .collect();
    assert!(counted.is_empty(), "counters of the last use: {counted:?}");
    let decisions = gateway_user::kernel::counters::decision_counts(&r.maps).expect("decisions");
    assert!(decisions.is_empty(), "{decisions:?}");
    assert_eq!(r.maps.flows.keys().count(), 0, "no TLS flows");
    let events = r.maps.events.as_mut().expect("events");
    assert!(events.next().is_none(), "no events of the last use");
    let again: Vec<RunResult> = frames.iter().map(|f| r.run(f).expect("run")).collect();
    assert_eq!(
        again, first,
        "decided as by a fresh filter (the DNS stream forgotten)"
    );
}
