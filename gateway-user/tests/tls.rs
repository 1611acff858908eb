//! The shared ClientHello walk on the real captures of ../shared/corpus/pcaps/tls: every
//! ClientHello yields the server name tshark reports, including those split over segments.

use std::{path::PathBuf, process::Command};

use gateway_user::{
    capture,
    sni::{Follower, Outcome},
};

fn tls_corpus() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/pcaps/tls");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the TLS corpus is missing");
    files
}

/// The server names tshark finds in the TCP ClientHellos of `file` ("" for none), sorted.
fn tshark_names(file: &PathBuf) -> Vec<String> {
    let out = Command::new("tshark")
        .args(["-r"])
        .arg(file)
        .args([
            "-Y",
            "tls.handshake.type == 1 && tcp",
            "-T",
            "fields",
            "-e",
            "tls.handshake.extensions_server_name",
        ])
        .output()
        .expect("tshark runs (cargo xtask setup installs it)");
    assert!(out.status.success(), "tshark failed on {}", file.display());
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_ascii_lowercase())
        .collect();
    names.sort();
    names
}

#[test]
fn every_client_hello_yields_the_name_tshark_reports() {
    let mut multi_segment = 0;
    for file in tls_corpus() {
        let (frames, _) = capture::read(&file).expect("capture reads");
        let mut follower = Follower::default();
        let mut names = Vec::new();
        let mut started = std::collections::HashMap::new();
        for f in &frames {
            if let Some((key, _, payload)) = gateway_user::sni::tcp_segment(&f.data, f.link)
                && !payload.is_empty()
            {
                started.entry(key).or_insert(f.number);
            }
            if let Some((key, outcome)) = follower.feed(&f.data, f.link) {
                if started.get(&key).is_some_and(|&n| n != f.number) {
                    multi_segment += 1;
                }
                match outcome {
                    Outcome::Sni(n) => names.push(n),
                    Outcome::NoSni => names.push(String::new()),
                    Outcome::Unparsed => panic!("{}: frame {}: unparsed", file.display(), f.number),
                }
            }
        }
        names.sort();
        assert_eq!(names, tshark_names(&file), "{}", file.display());
    }
    assert!(
        multi_segment >= 2,
        "the corpus has ClientHellos over several segments"
    );
}
