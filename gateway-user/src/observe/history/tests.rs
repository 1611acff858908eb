//! Unit tests of the history store, its queries and pseudonyms.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

use super::*;
use crate::config::History;

pub(super) fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gw-history-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn row(t: i64, device: &str, name: &str, action: &str) -> Row {
    Row {
        time_ms: t,
        device: device.into(),
        policy: "students".into(),
        protocol: "dns".into(),
        name: name.into(),
        qtype: 1,
        action: action.into(),
        reason: "category".into(),
        category: Some("ads".into()),
    }
}

#[test]
fn stores_queries_and_forgets() {
    let d = dir("query");
    let mut s = Store::open(&d).expect("open");
    s.insert(&[
        row(1_000, "tablet", "ads.example.com", "block"),
        row(2_000, "tablet", "example.com", "allow"),
        row(3_000, "laptop", "notexample.com", "allow"),
        row(4_000, "laptop", "www.example.com", "block"),
    ])
    .expect("insert");
    assert_eq!(s.count().expect("count"), 4);
    fn q(s: &Store, f: Filter) -> Vec<String> {
        s.query(&f)
            .expect("query")
            .into_iter()
            .map(|r| format!("{}:{}", r.device, r.name))
            .collect()
    }
    // Most recent first; the suffix matches the name and names under it, not look-alikes.
    assert_eq!(
        q(
            &s,
            Filter {
                name_suffix: Some("Example.com.".into()),
                ..Filter::default()
            }
        ),
        [
            "laptop:www.example.com",
            "tablet:example.com",
            "tablet:ads.example.com"
        ]
    );
    assert_eq!(
        q(
            &s,
            Filter {
                devices: vec!["tablet".into()],
                action: Some("block".into()),
                ..Filter::default()
            }
        ),
        ["tablet:ads.example.com"]
    );
    assert_eq!(
        q(
            &s,
            Filter {
                since_ms: Some(2_000),
                until_ms: Some(4_000),
                ..Filter::default()
            }
        ),
        ["laptop:notexample.com", "tablet:example.com"]
    );
    assert_eq!(
        q(
            &s,
            Filter {
                limit: Some(1),
                ..Filter::default()
            }
        ),
        ["laptop:www.example.com"]
    );
    assert_eq!(s.forget(&["tablet".into()]).expect("forget"), 2);
    assert!(
        q(
            &s,
            Filter {
                devices: vec!["tablet".into()],
                ..Filter::default()
            }
        )
        .is_empty()
    );
    // Forgotten rows are gone from the file too (secure_delete, WAL truncated).
    drop(s);
    let bytes = std::fs::read(d.join(DATABASE)).expect("read");
    assert!(!bytes.windows(15).any(|w| w == b"ads.example.com"));
    std::fs::remove_dir_all(&d).expect("cleanup");
}

#[test]
fn retention_by_age_and_by_count() {
    let d = dir("retention");
    let mut s = Store::open(&d).expect("open");
    let day = 86_400_000;
    let now = 100 * day;
    let rows: Vec<Row> = (0..20)
        .map(|i| row(now - (20 - i) * day / 2, "tablet", "a.example", "allow"))
        .collect();
    s.insert(&rows).expect("insert");
    let keep = |days, rows, bytes| History {
        enabled: true,
        retention_days: days,
        max_rows: rows,
        max_bytes: bytes,
        pseudonymize: false,
        ship: None,
    };
    // 7 days keep the rows of the last 7 days: 14 of them (one every half day).
    assert_eq!(
        s.enforce_retention(now, &keep(7, 1_000, 1 << 30))
            .expect("retention"),
        6
    );
    assert_eq!(s.count().expect("count"), 14);
    // At most 5 rows: the 5 newest stay.
    assert_eq!(
        s.enforce_retention(now, &keep(7, 5, 1 << 30))
            .expect("retention"),
        9
    );
    let left = s.query(&Filter::default()).expect("query");
    assert_eq!(left.len(), 5);
    assert!(left.iter().all(|r| r.time_ms >= now - 5 * day / 2));

    // By size: 30,000 rows (a few MB), then at most 1 MiB in use.
    let rows: Vec<Row> = (0..30_000)
        .map(|i| {
            row(
                now - 30_000 + i,
                "tablet",
                &format!("www.n{i}.example.com"),
                "allow",
            )
        })
        .collect();
    s.insert(&rows).expect("insert");
    assert!(s.bytes_in_use().expect("bytes") > 2 << 20);
    let deleted = s
        .enforce_retention(now, &keep(7, 1_000_000, 1 << 20))
        .expect("retention");
    assert!(s.bytes_in_use().expect("bytes") <= 1 << 20);
    let left = s.count().expect("count");
    assert!(
        left > 1_000 && deleted > 10_000,
        "{left} left, {deleted} deleted"
    );
    // The newest rows are the ones kept.
    let newest = s
        .query(&Filter {
            limit: Some(1),
            ..Filter::default()
        })
        .expect("query");
    assert_eq!(newest[0].name, "www.n29999.example.com");
    // Inserting more does not grow the file past what it reached: freed pages are reused.
    let size = std::fs::metadata(d.join(DATABASE)).expect("meta").len();
    s.insert(&rows[..5_000]).expect("insert");
    s.enforce_retention(now, &keep(7, 1_000_000, 1 << 20))
        .expect("retention");
    s.checkpoint().expect("checkpoint");
    assert!(std::fs::metadata(d.join(DATABASE)).expect("meta").len() <= size + (1 << 20));
    std::fs::remove_dir_all(&d).expect("cleanup");
}

#[test]
fn times_are_timestamps_or_ages() {
    let now: jiff::Timestamp = "2026-11-26T12:00:00Z".parse().expect("time");
    let ms = now.as_millisecond();
    assert_eq!(parse_time("2026-11-26T11:00:00Z", now), Ok(ms - 3_600_000));
    assert_eq!(
        parse_time("2026-11-26T12:00:00+01:00", now),
        Ok(ms - 3_600_000)
    );
    assert_eq!(parse_time("15m", now), Ok(ms - 900_000));
    assert_eq!(parse_time("7d", now), Ok(ms - 7 * 86_400_000));
    for bad in ["", "yesterday", "5y", "-3h", "2026-13-01T00:00:00Z"] {
        let e = parse_time(bad, now).expect_err(bad);
        assert!(e.0.contains("is not a time"), "{e}");
    }
}

#[test]
fn pseudonyms_are_keyed_stable_and_the_key_private() {
    let d = dir("key");
    let p = Pseudonym::load_or_create(&d).expect("key");
    let again = Pseudonym::load_or_create(&d).expect("key");
    assert_eq!(p.of("tablet"), again.of("tablet"));
    assert_ne!(p.of("tablet"), p.of("laptop"));
    assert!(p.of("tablet").starts_with("p-") && p.of("tablet").len() == 18);
    let key = d.join(KEY_FILE);
    let mode = std::fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Another key, another pseudonym.
    let other = dir("key2");
    assert_ne!(
        Pseudonym::load_or_create(&other).expect("key").of("tablet"),
        p.of("tablet")
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = Pseudonym::load(&key).expect_err("readable by others");
    assert!(format!("{e}").contains("expected 0600"), "{e}");
    std::fs::remove_dir_all(&d).expect("cleanup");
    std::fs::remove_dir_all(&other).expect("cleanup");
}
