//! Tier 3 for lists by URL: nginx in the upstream namespace serves an adblock list that a
//! category takes by URL. The daemon downloads it and blocks its names; a refresh of the
//! unchanged list is a 304 and no reload; a changed list is applied without a restart; a
//! download that is not text, or has shrunk past the guard, is refused and the copy in use
//! kept (and asked for whole again, not with its validators); with the server gone the daemon
//! restarts on its last copy. `gateway check` reports the copy's age.

use std::time::Duration;

use gateway_testbed::{Bed, Daemon, Dnsmasq, Nginx, Pins, dig, eventually};

/// An adblock list blocking `ads<i>.example` for each `i`.
fn list(names: impl IntoIterator<Item = u32>) -> Vec<u8> {
    let mut text = String::from("[Adblock Plus 2.0]\n! Title: test list\n");
    for i in names {
        text.push_str(&format!("||ads{i}.example^\n"));
    }
    text.into_bytes()
}

#[test]
fn a_list_by_url_is_downloaded_refreshed_and_kept() -> anyhow::Result<()> {
    let bed = Bed::new(1)?;
    let nginx = Nginx::start(&bed.up, &bed.upstream_ip)?;
    nginx.serve("ads.txt", &list(0..10))?;
    let records: Vec<(String, &str)> = (0..12)
        .map(|i| (format!("ads{i}.example"), "198.51.100.7"))
        .collect();
    let records: Vec<(&str, &str)> = records.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    let _upstream = Dnsmasq::start(&bed.up, &bed.upstream_ip, &records)?;
    let dev = &bed.devices[0];
    let body = format!(
        "[[interface]]\nname = \"{}\"\n\n[[category]]\nname = \"remote\"\n\
         lists = [{{ url = \"http://{}:8080/ads.txt\", refresh = \"2s\" }}]\n\n\
         [[policy]]\nname = \"students\"\nblock_categories = [\"remote\"]\n\n\
         [[device]]\nname = \"laptop\"\nmac = \"{}\"\npolicy = \"students\"\n",
        dev.gw_if, bed.upstream_ip, dev.mac
    );
    let pins = Pins::with_config("", &body)?;
    let mut daemon = Daemon::start(&bed.gw, &pins, &["d1"])?;
    let status = |name: &str| {
        dig(&dev.ns, "dig", &bed.upstream_ip, name, "A")
            .map(|l| l.status)
            .unwrap_or_else(|e| format!("{e:#}"))
    };
    let blocked = |name: &str| status(name) == "NXDOMAIN";
    let seen = |what: &str, f: &dyn Fn() -> bool| -> anyhow::Result<()> {
        eventually(what, f).map_err(|e| anyhow::anyhow!("{e:#}\n{}", daemon.log_text()))
    };

    // The first download is applied: its names are blocked, the others are not.
    seen("the downloaded list in force", &|| blocked("ads3.example"))?;
    assert_eq!(status("ads11.example"), "NOERROR");
    assert_eq!(nginx.statuses("/ads.txt").first(), Some(&200));

    // Refreshes of the unchanged list: conditional requests answered 304, no reload.
    let reloads = |log: &str| log.matches("reloaded").count();
    seen("a refresh answered 304", &|| {
        nginx.statuses("/ads.txt").contains(&304)
    })?;
    let before = reloads(&daemon.log_text());
    let count_304 = nginx
        .statuses("/ads.txt")
        .iter()
        .filter(|s| **s == 304)
        .count();
    seen("another 304", &|| {
        nginx
            .statuses("/ads.txt")
            .iter()
            .filter(|s| **s == 304)
            .count()
            > count_304
    })?;
    assert_eq!(
        reloads(&daemon.log_text()),
        before,
        "a 304 recompiles nothing"
    );
    assert!(blocked("ads3.example"));

    // A changed list is applied without a restart.
    let v2: Vec<u32> = (0..11).filter(|i| *i != 3).collect();
    nginx.serve("ads.txt", &list(v2.clone()))?;
    seen("the changed list in force", &|| {
        blocked("ads10.example") && !blocked("ads3.example")
    })?;

    // Not text: refused, the copy in use stays.
    let taken = nginx.statuses("/ads.txt").len();
    nginx.serve("ads.txt", b"\x1f\x8b\x08\x00\xff\xfe garbage \xc3\x28")?;
    seen("the binary download refused", &|| {
        daemon.log_text().contains("refused: not UTF-8 text")
    })?;
    assert!(blocked("ads10.example") && blocked("ads5.example"));
    // Cut to 2 of its 10 rules: refused by the shrink guard.
    nginx.serve("ads.txt", &list([0, 1]))?;
    seen("the shrunk download refused", &|| {
        daemon
            .log_text()
            .contains("shrunk by more than max_shrink = 50%")
    })?;
    // A refused download is asked for whole again (the validators kept are those of the copy
    // in use, whose ETag nginx no longer has): 200s, never a 304 for what was refused.
    seen("the refused list downloaded again", &|| {
        nginx.statuses("/ads.txt")[taken..]
            .iter()
            .filter(|s| **s == 200)
            .count()
            >= 3
    })?;
    assert!(
        !nginx.statuses("/ads.txt")[taken..].contains(&304),
        "{:?}",
        nginx.statuses("/ads.txt")
    );
    assert!(blocked("ads10.example") && blocked("ads5.example"));
    assert!(!blocked("ads3.example"));

    // The metrics count the attempts by result.
    let metrics = bed.gw.run(
        "curl",
        &["-sS", "--max-time", "5", "http://127.0.0.1:9477/metrics"],
    )?;
    for result in ["changed", "unchanged", "refused"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("gateway_list_fetches_total{")
                    && l.contains(&format!("result=\"{result}\""))
                    && !l.ends_with(" 0")),
            "no {result} fetches:\n{metrics}"
        );
    }
    assert!(metrics.contains("gateway_list_last_success_timestamp_seconds{"));

    // `gateway check` reads the cached copy, and says how old it is.
    let check = pins.gateway("check", &[])?;
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "remote http://{}:8080/ads.txt: adblock (detected), 12 lines, 10 rules used",
            bed.upstream_ip
        )) && text.contains("cached copy ")
            && text.contains(" old)"),
        "{text}"
    );

    // The server gone: a restart enforces the last copy; the failures are logged.
    drop(nginx);
    daemon.signal(libc::SIGTERM)?;
    daemon.wait_exit(Duration::from_secs(30))?;
    let daemon = Daemon::start(&bed.gw, &pins, &["d1"])?;
    assert!(blocked("ads10.example") && blocked("ads5.example"));
    eventually("the failed refresh logged", || {
        daemon
            .log_text()
            .contains("list not refreshed; the copy in use stays")
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", daemon.log_text()))?;
    assert!(blocked("ads10.example"));
    assert_eq!(status("ads11.example"), "NOERROR");
    Ok(())
}
