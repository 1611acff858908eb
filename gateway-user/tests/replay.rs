//! `gateway replay` over the real captures of ../shared/corpus: every frame of every capture
//! runs through the kernel program and gets one record; bad input exits with 2 and says what
//! is wrong. Needs root (BPF_PROG_TEST_RUN).

use std::{path::PathBuf, process::Command};

use gateway_user::{
    config::Config,
    offline::{capture, replay},
};

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/pcaps")
}

fn captures() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["dns", "tls", "quic"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(corpus().join(dir))
            .unwrap_or_else(|e| panic!("{}: {e}", corpus().join(dir).display()))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        files.sort();
        out.extend(files);
    }
    assert!(out.len() >= 15, "corpus captures missing: {out:?}");
    out
}

#[test]
fn every_corpus_frame_gets_a_decision() {
    let config = Config::embedded().expect("embedded config");
    for path in captures() {
        let (frames, skipped) = capture::read(&path).expect("readable");
        assert!(
            skipped.is_empty(),
            "{}: skipped {skipped:?}",
            path.display()
        );
        let mut records = Vec::new();
        let summary = replay::replay(&config, &path, |r| records.push(r.clone()))
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert_eq!(summary.frames as usize, frames.len(), "{}", path.display());
        assert_eq!(records.len(), frames.len());
        for (r, f) in records.iter().zip(&frames) {
            assert_eq!(r.frame, f.number);
            assert_eq!(r.bytes, f.data.len());
            assert_eq!(
                r.device, "(unknown)",
                "no inventory: every device is unknown"
            );
            assert_eq!(r.policy, "default");
            assert_eq!(
                r.verdict, "pass",
                "the foundation passes all but suspended devices"
            );
        }
    }
}

#[test]
fn vlan_capture_is_parsed_through_its_tags() {
    let config = Config::embedded().expect("embedded config");
    let path = corpus().join("dns/vlan-dns-queries.pcap");
    let mut reasons = std::collections::BTreeMap::new();
    replay::replay(&config, &path, |r| {
        *reasons.entry(r.reason).or_insert(0) += 1
    })
    .expect("replays");
    // 1,200 DNS queries in 802.1Q frames: all parsed through the tags to a DNS decision (the
    // embedded default policy allows by default), none malformed.
    assert_eq!(reasons.get("default"), Some(&1200), "{reasons:?}");
}

#[test]
fn cli_json_lines_and_bad_input() {
    let bin = env!("CARGO_BIN_EXE_gateway");
    let path = corpus().join("dns/dns-https.pcap");
    let out = Command::new(bin)
        .args(["replay", "--json"])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2);
    for (i, v) in lines.iter().enumerate() {
        assert_eq!(v["frame"], i as u64 + 1);
        for key in ["device", "proto", "action", "reason", "verdict", "policy"] {
            assert!(v[key].is_string(), "missing {key} in {v}");
        }
    }
    // The query is judged by name; the response (from port 53) is not DNS to the filter.
    assert_eq!(
        (lines[0]["proto"].as_str(), lines[0]["action"].as_str()),
        (Some("dns"), Some("allow"))
    );
    assert_eq!(lines[0]["name"], "cloudflare.com");
    assert_eq!(lines[0]["qtype"], 65, "an HTTPS query");
    assert_eq!(
        (lines[1]["proto"].as_str(), lines[1]["action"].as_str()),
        (Some("udp"), Some("pass"))
    );
    assert!(lines[1].get("name").is_none());

    // A capture that does not exist, and one that is not a capture: exit 2, and the message
    // names the file.
    let missing = Command::new(bin)
        .args(["replay", "/nonexistent/x.pcap"])
        .output()
        .expect("runs");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/x.pcap"));
    let garbage = std::env::temp_dir().join(format!("gw-garbage-{}.pcap", std::process::id()));
    std::fs::write(&garbage, b"this is not a capture at all").expect("write");
    let bad = Command::new(bin)
        .arg("replay")
        .arg(&garbage)
        .output()
        .expect("runs");
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains(garbage.to_string_lossy().as_ref()));
    std::fs::remove_file(&garbage).expect("cleanup");

    // A configuration that does not validate: exit 2 with file:line:column.
    let cfg = std::env::temp_dir().join(format!("gw-bad-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        "[[device]]\nname = \"x\"\nip = \"1.2.3\"\npolicy = \"default\"\n",
    )
    .expect("write");
    let bad = Command::new(bin)
        .args(["replay", "--config"])
        .arg(&cfg)
        .arg(&path)
        .output()
        .expect("runs");
    assert_eq!(bad.status.code(), Some(2));
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(msg.contains(&format!("{}:3:6:", cfg.display())), "{msg}");
    std::fs::remove_file(&cfg).expect("cleanup");
}
