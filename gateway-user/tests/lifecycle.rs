//! Device lifecycle through the real kernel program, with an injected clock: the lifecycle
//! state is laid over the configuration (as the daemon does) and applied; frames from the
//! devices show what the kernel does with them.

use gateway_common::enums::{LinkType, Reason, Verdict};
use gateway_user::{
    config::Config,
    control::{
        ControlError,
        lifecycle::{self, Store},
    },
    offline::{
        frames::{self, L2, L3, L4},
        testrun::TestRunner,
    },
};

const CONFIG: &str = r#"
[gateway]
timezone = "Europe/Berlin"

[lifecycle]
hold_checked_in = true
overdue = "suspend"

[[category]]
name = "games"
domains = ["games.example"]

[[policy]]
name = "staff"

[[policy]]
name = "library"
block_categories = ["games"]
dns_block_answer = "drop"

[[device]]
name = "tablet-1"
mac = "02:00:00:00:02:01"
policy = "staff"

[[device]]
name = "tablet-2"
mac = "02:00:00:00:02:02"
policy = "staff"
"#;

const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

fn dns_query(dev: u8, name: &str) -> Vec<u8> {
    frames::build(
        L2::Ethernet {
            src: [0x02, 0, 0, 0, 2, dev],
            dst: GW_MAC,
        },
        L3::V4 {
            src: [10, 0, 0, dev],
            dst: [10, 0, 0, 53],
        },
        L4::Udp {
            sport: 40000,
            dport: 53,
        },
        &frames::dns_query(name),
    )
}

/// What the kernel does with a query for games.example from device `dev`.
fn games(r: &mut TestRunner, dev: u8) -> (Verdict, Reason) {
    let out = r.run(&dns_query(dev, "games.example")).expect("run");
    (out.verdict, out.reason)
}

fn at(t: &str) -> jiff::Timestamp {
    t.parse().expect("time")
}

/// Lays the store over the file and applies it at `now`, as the daemon does.
fn apply(r: &mut TestRunner, file: &Config, store: &Store, now: jiff::Timestamp) {
    store.mark_overdue(now.as_millisecond()).expect("overdue");
    let (effective, _) = lifecycle::effective(
        file,
        &store.snapshot().expect("snapshot"),
        now.as_millisecond(),
    );
    r.reconfigure_at(&effective, now).expect("apply");
}

#[test]
fn checkout_overdue_checkin_and_hold() {
    let file = Config::parse(CONFIG, std::path::Path::new("lifecycle.toml")).expect("config");
    let mut r = TestRunner::new(&file, LinkType::Ethernet).expect("load");
    let store = Store::in_memory().expect("store");
    let pass = (Verdict::Pass, Reason::Default);
    let blocked = (Verdict::Drop, Reason::Category);
    let suspended = (Verdict::Drop, Reason::Suspended);

    // Monday 09:00 in Berlin: lent to a pupil under the library policy until the end of the
    // next day (local time).
    let t0 = at("2026-11-30T08:00:00Z");
    let due = lifecycle::parse_due("2026-12-01", &file.timezone).expect("due");
    assert_eq!(due, at("2026-12-01T22:59:59Z").as_millisecond());
    store
        .checkout(
            &file,
            "tablet-1",
            "pupil-4711",
            due,
            Some("library"),
            t0.as_millisecond(),
        )
        .expect("checkout");
    apply(&mut r, &file, &store, t0);
    assert_eq!(games(&mut r, 1), blocked, "the checkout policy is in force");
    assert_eq!(games(&mut r, 2), pass, "the other tablet keeps its own");

    // Lent twice: refused.
    let e = store
        .checkout(&file, "tablet-1", "pupil-1", due, None, t0.as_millisecond())
        .expect_err("twice");
    assert!(matches!(e, ControlError::Conflict(_)), "{e}");

    // A second before the due time: still fine. After it: overdue, and suspended.
    apply(&mut r, &file, &store, at("2026-12-01T22:59:58Z"));
    assert_eq!(games(&mut r, 1), blocked);
    let late = at("2026-12-01T23:00:30Z");
    apply(&mut r, &file, &store, late);
    assert_eq!(games(&mut r, 1), suspended, "overdue devices are suspended");
    let (_, statuses) = lifecycle::effective(
        &file,
        &store.snapshot().expect("snap"),
        late.as_millisecond(),
    );
    assert!(statuses["tablet-1"].overdue);
    assert_eq!(statuses["tablet-1"].suspended_by, ["overdue"]);
    // Resume does not lift an overdue suspension: checking in does.
    let e = store
        .resume(&file, "tablet-1", None, late.as_millisecond())
        .expect_err("overdue");
    assert!(format!("{e}").contains("overdue"), "{e}");

    // Checked in: held suspended (hold_checked_in), with its own policy again.
    let back = at("2026-12-02T07:30:00Z");
    store
        .checkin(
            &file,
            "tablet-1",
            Some("returned at the desk"),
            back.as_millisecond(),
        )
        .expect("checkin");
    apply(&mut r, &file, &store, back);
    assert_eq!(games(&mut r, 1), suspended, "held after check-in");
    let (_, statuses) = lifecycle::effective(
        &file,
        &store.snapshot().expect("snap"),
        back.as_millisecond(),
    );
    assert_eq!(statuses["tablet-1"].suspended_by, ["checked_in"]);
    assert!(statuses["tablet-1"].checkout.is_none());

    // Checked in twice: refused. Lent again: the hold ends.
    assert!(matches!(
        store.checkin(&file, "tablet-1", None, back.as_millisecond()),
        Err(ControlError::Conflict(_))
    ));
    let again = at("2026-12-02T08:00:00Z");
    store
        .checkout(
            &file,
            "tablet-1",
            "pupil-815",
            again.as_millisecond() + 3_600_000,
            None,
            again.as_millisecond(),
        )
        .expect("checkout");
    apply(&mut r, &file, &store, again);
    assert_eq!(games(&mut r, 1), pass, "out again, own policy, not held");

    // The history shows the sequence.
    let events: Vec<String> = store
        .events("tablet-1")
        .expect("events")
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(
        events,
        ["checkout", "overdue", "checkin", "hold", "checkout"]
    );
    let all = store.checkouts(Some("tablet-1"), false).expect("checkouts");
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].borrower, "pupil-4711");
    assert_eq!(all[1].in_ms, Some(back.as_millisecond()));
    assert_eq!(all[1].overdue_ms, Some(late.as_millisecond()));
}

#[test]
fn suspend_move_and_their_conflicts() {
    let file = Config::parse(CONFIG, std::path::Path::new("lifecycle.toml")).expect("config");
    let mut r = TestRunner::new(&file, LinkType::Ethernet).expect("load");
    let store = Store::in_memory().expect("store");
    let now = at("2026-11-30T08:00:00Z");
    let ms = now.as_millisecond();

    store
        .suspend(&file, "tablet-2", Some("lost"), ms)
        .expect("suspend");
    apply(&mut r, &file, &store, now);
    assert_eq!(games(&mut r, 2), (Verdict::Drop, Reason::Suspended));
    assert_eq!(games(&mut r, 1), (Verdict::Pass, Reason::Default));
    assert!(matches!(
        store.suspend(&file, "tablet-2", None, ms),
        Err(ControlError::Conflict(_))
    ));
    store.resume(&file, "tablet-2", None, ms).expect("resume");
    assert!(matches!(
        store.resume(&file, "tablet-2", None, ms),
        Err(ControlError::Conflict(_))
    ));
    apply(&mut r, &file, &store, now);
    assert_eq!(games(&mut r, 2), (Verdict::Pass, Reason::Default));

    store
        .move_to(&file, "tablet-2", Some("library"), ms)
        .expect("move");
    apply(&mut r, &file, &store, now);
    assert_eq!(games(&mut r, 2), (Verdict::Drop, Reason::Category));
    // The state outlives a reload of a file that still has the policy...
    let reloaded = Config::parse(
        &format!("{CONFIG}\n[[policy]]\nname = \"extra\"\n"),
        std::path::Path::new("l.toml"),
    )
    .expect("config");
    apply(&mut r, &reloaded, &store, now);
    assert_eq!(games(&mut r, 2), (Verdict::Drop, Reason::Category));
    // ...and back to its own.
    store
        .move_to(&file, "tablet-2", None, ms)
        .expect("move back");
    apply(&mut r, &file, &store, now);
    assert_eq!(games(&mut r, 2), (Verdict::Pass, Reason::Default));

    // Bad requests.
    for (result, want) in [
        (
            store.suspend(&file, "nobody", None, ms),
            "unknown device \"nobody\"",
        ),
        (
            store.move_to(&file, "tablet-1", Some("nope"), ms),
            "unknown policy \"nope\"",
        ),
        (
            store.suspend(&file, "tablet-1", Some("a\u{7}b"), ms),
            "note: control characters are not allowed",
        ),
        (
            store
                .checkout(&file, "tablet-1", " ", ms + 1000, None, ms)
                .map(|_| ()),
            "borrower: must not be empty",
        ),
        (
            store
                .checkout(&file, "tablet-1", "x", ms - 1, None, ms)
                .map(|_| ()),
            "due: the due date is not in the future",
        ),
    ] {
        assert_eq!(result.expect_err(want).to_string(), want);
    }
    assert!(lifecycle::parse_due("next week", &file.timezone).is_err());
}
