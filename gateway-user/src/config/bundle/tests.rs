//! Tests of bundles: built, signed with the minisign tool (as operators sign), verified,
//! unpacked and composed; and each way a bundle is refused.

use super::*;

/// A scratch directory removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "gateway-bundle-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A minisign key pair without a password: (public key base64, secret key file).
fn keypair(dir: &Path, name: &str) -> (String, PathBuf) {
    let (public, secret) = (
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.key")),
    );
    let status = std::process::Command::new("minisign")
        .args(["-G", "-W", "-f", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("minisign (cargo xtask setup installs it)");
    assert!(status.success());
    let text = std::fs::read_to_string(&public).expect("public key");
    let b64 = text.lines().nth(1).expect("key line").trim().to_string();
    (b64, secret)
}

/// Signs `file` with `secret` and `comment` as the trusted comment; the signature's text.
fn sign(file: &Path, secret: &Path, comment: &str) -> String {
    let sig = file.with_extension("minisig");
    let status = std::process::Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(secret)
        .arg("-m")
        .arg(file)
        .args(["-t", comment, "-x"])
        .arg(&sig)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("minisign");
    assert!(status.success());
    std::fs::read_to_string(sig).expect("signature")
}

const CENTRAL: &str = r#"
[[interface]]
name = "centre0"

[[category]]
name = "ads"
lists = ["lists/ads.txt"]

[[policy]]
name = "students"
block_categories = ["ads"]

[[device]]
name = "tablet"
mac = "02:00:00:00:00:01"
policy = "students"

[telemetry]
remote_write_url = "https://metrics.example/api/v1/write"
labels = { id = "central", group = "buses" }
"#;

/// A bundle source directory: the configuration and its list.
fn source(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("lists")).expect("dirs");
    std::fs::write(src.join(CONFIG), CENTRAL).expect("config");
    std::fs::write(src.join("lists/ads.txt"), "ads.example\ntracker.example\n").expect("list");
    src
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn built_signed_verified_unpacked_and_composed() {
    let s = Scratch::new("round");
    let out = s.0.join("buses.tar.gz");
    let comment = build(&source(&s.0), 7, labels(&[("group", "buses")]), &out).expect("build");
    assert_eq!(comment, "gateway-bundle name=buses.tar.gz revision=7");
    let (public, secret) = keypair(&s.0, "k");
    let sig = sign(&out, &secret, &comment);
    let archive = std::fs::read(&out).expect("archive");
    let (other, _) = keypair(&s.0, "other");
    // Rotation: any configured key will do.
    let trusted = verify(&archive, &sig, &[other.clone(), public.clone()]).expect("verify");
    assert_eq!(
        trusted,
        Trusted {
            name: "buses.tar.gz".into(),
            revision: 7
        }
    );
    let dest = s.0.join("r7");
    let manifest = unpack(&archive, &dest, 1 << 20).expect("unpack");
    assert_eq!(manifest.revision, 7);
    check_manifest(
        &manifest,
        &trusted,
        &labels(&[("group", "buses"), ("site", "x")]),
    )
    .expect("for this gateway");
    let refused = check_manifest(&manifest, &trusted, &labels(&[("group", "vans")]))
        .expect_err("another group's");
    assert_eq!(refused.reason, Failure::Manifest);
    assert!(refused.message.contains("group=buses"), "{refused}");

    // The gateway's own file decides its interfaces and state; the bundle the rest.
    let main = s.0.join("etc/gateway.toml");
    std::fs::create_dir_all(main.parent().expect("parent")).expect("etc");
    std::fs::write(
        &main,
        format!(
            "[gateway]\nstate_dir = \"state\"\n\n[[interface]]\nname = \"wlan0\"\n\n[fleet]\nbundle_url = \"https://cdn.example/buses.tar.gz\"\npublic_keys = [\"{public}\"]\nlocal = \"local.toml\"\n"
        ),
    )
    .expect("main");
    // The identity on the metrics comes from the gateway's own local file.
    std::fs::write(
        s.0.join("etc/local.toml"),
        "[telemetry]\nlabels = { id = \"bus-17\", site = \"north\" }\n",
    )
    .expect("local");
    let config = compose(&main, &dest).expect("compose");
    let names: Vec<&str> = config.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["wlan0"], "the bundle's [[interface]] is not taken");
    assert_eq!(
        config.state_dir,
        s.0.join("etc/state"),
        "relative to the gateway's file"
    );
    assert!(config.fleet.is_some());
    let telemetry = config.telemetry.as_ref().expect("the bundle's [telemetry]");
    assert_eq!(
        telemetry.remote_write_url,
        "https://metrics.example/api/v1/write"
    );
    assert_eq!(
        telemetry.labels,
        labels(&[("id", "bus-17"), ("site", "north")]),
        "the gateway's own identity, not the bundle's"
    );
    assert_eq!(config.devices.len(), 1);
    assert!(config.categories[0].blocks("tracker.example"));
    assert!(
        config.files.contains(&main),
        "the gateway's own file is watched"
    );
}

#[test]
fn signatures_are_checked_before_anything_is_read() {
    let s = Scratch::new("sig");
    let out = s.0.join("b.tar.gz");
    let comment = build(&source(&s.0), 3, BTreeMap::new(), &out).expect("build");
    let (public, secret) = keypair(&s.0, "k");
    let (stranger, stranger_secret) = keypair(&s.0, "stranger");
    let sig = sign(&out, &secret, &comment);
    let archive = std::fs::read(&out).expect("archive");
    let keys = [public.clone()];
    let reason = |r: Result<Trusted, Refused>| r.expect_err("refused").reason;

    let mut flipped = archive.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x01;
    assert_eq!(reason(verify(&flipped, &sig, &keys)), Failure::Signature);
    assert_eq!(
        reason(verify(&archive[..archive.len() - 10], &sig, &keys)),
        Failure::Signature,
        "truncated"
    );
    assert_eq!(reason(verify(&archive, "", &keys)), Failure::Signature);
    assert_eq!(
        reason(verify(&archive, &sig, &[stranger])),
        Failure::Signature,
        "an unknown key"
    );
    let by_stranger = sign(&out, &stranger_secret, &comment);
    assert_eq!(
        reason(verify(&archive, &by_stranger, &keys)),
        Failure::Signature
    );
    // minisign's own default comment is not a bundle's.
    let plain = sign(&out, &secret, "timestamp:1 file:b.tar.gz");
    let refused = verify(&archive, &plain, &keys).expect_err("not a bundle comment");
    assert!(
        refused.message.contains("not a gateway bundle"),
        "{refused}"
    );
    assert!(parse_trusted("gateway-bundle revision=x name=a").is_err());
    assert!(parse_trusted("gateway-bundle name=a").is_err());
    assert_eq!(
        parse_trusted("gateway-bundle revision=12 name=a.tar.gz").expect("ok"),
        Trusted {
            name: "a.tar.gz".into(),
            revision: 12
        }
    );
}

/// A gzip tar with entries written header by header (the tar crate refuses to write `..`).
fn raw_archive(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, kind, body) in entries {
        let mut h = tar::Header::new_gnu();
        let field = &mut h.as_gnu_mut().expect("gnu").name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(*kind);
        if *kind == tar::EntryType::Symlink {
            h.set_link_name("/etc/passwd").expect("link");
        }
        h.set_cksum();
        tar.append(&h, *body).expect("append");
    }
    tar.into_inner().expect("tar").finish().expect("gz")
}

#[test]
fn archives_hold_plain_files_inside_the_bundle_only() {
    let s = Scratch::new("archive");
    let manifest = b"revision = 1\ncreated = \"2026-12-03T00:00:00Z\"\n";
    let good = [
        ("manifest.toml", tar::EntryType::Regular, &manifest[..]),
        ("gateway.toml", tar::EntryType::Regular, &b""[..]),
    ];
    let unpack_at = |entries: &[(&str, tar::EntryType, &[u8])], tag: &str| {
        let dest = s.0.join(tag);
        let r = unpack(&raw_archive(entries), &dest, 1 << 20);
        if r.is_err() {
            assert!(!dest.exists(), "{tag}: nothing left behind");
        }
        r
    };
    unpack_at(&good, "good").expect("plain files");
    for (tag, bad, reason) in [
        ("dotdot", "../escape.txt", Failure::Archive),
        ("nested-dotdot", "lists/../../escape.txt", Failure::Archive),
        ("absolute", "/tmp/escape.txt", Failure::Archive),
    ] {
        let mut entries = good.to_vec();
        entries.push((bad, tar::EntryType::Regular, b"x"));
        let r = unpack_at(&entries, tag).expect_err(tag);
        assert_eq!(r.reason, reason, "{tag}: {r}");
        assert!(!s.0.join("escape.txt").exists() && !Path::new("/tmp/escape.txt").exists());
    }
    let mut linked = good.to_vec();
    linked.push(("lists/ads.txt", tar::EntryType::Symlink, b""));
    assert_eq!(
        unpack_at(&linked, "link").expect_err("link").reason,
        Failure::Archive
    );
    let mut twice = good.to_vec();
    twice.push(("gateway.toml", tar::EntryType::Regular, b"again"));
    assert_eq!(
        unpack_at(&twice, "twice").expect_err("dup").reason,
        Failure::Archive
    );
    let big = vec![b'a'; 4096];
    let mut large = good.to_vec();
    large.push(("lists/big.txt", tar::EntryType::Regular, &big));
    let r = unpack(&raw_archive(&large), &s.0.join("large"), 2048).expect_err("too big");
    assert_eq!(r.reason, Failure::Size);
    let whole = raw_archive(&good);
    let r = unpack(&whole[..whole.len() / 2], &s.0.join("cut"), 1 << 20).expect_err("cut");
    assert_eq!(r.reason, Failure::Archive, "{r}");
    let r = unpack(b"not gzip at all", &s.0.join("junk"), 1 << 20).expect_err("junk");
    assert_eq!(r.reason, Failure::Archive);
    let r = unpack_at(&good[1..], "no-manifest").expect_err("no manifest");
    assert_eq!(r.reason, Failure::Manifest);
}

#[test]
fn build_refuses_files_outside_the_directory_and_bad_configurations() {
    let s = Scratch::new("build");
    let src = source(&s.0);
    std::fs::write(s.0.join("outside.txt"), "x.example\n").expect("outside");
    std::fs::write(
        src.join(CONFIG),
        CENTRAL.replace("lists/ads.txt", "../outside.txt"),
    )
    .expect("config");
    let e = build(&src, 1, BTreeMap::new(), &s.0.join("b.tar.gz")).expect_err("outside");
    assert!(format!("{e:#}").contains("outside"), "{e:#}");
    std::fs::write(src.join(CONFIG), CENTRAL.replace("\"ads\"]", "\"nope\"]")).expect("config");
    let e = build(&src, 1, BTreeMap::new(), &s.0.join("b.tar.gz")).expect_err("invalid");
    assert!(format!("{e:#}").contains("gateway.toml:"), "located: {e:#}");
    assert!(!s.0.join("b.tar.gz").exists() && !s.0.join("b.tar.partial").exists());
}

#[test]
fn fleet_section_errors_are_located() {
    let s = Scratch::new("fleetcfg");
    std::fs::write(s.0.join("not-a-ca.pem"), "hello\n").expect("file");
    let text = r#"
[fleet]
bundle_url = "ftp://cdn.example/b.tar.gz"
public_keys = ["not a key"]
poll = { min = 0, max = 100000 }
ca_file = "not-a-ca.pem"
"#;
    let errors = Config::parse(text, &s.0.join("gateway.toml"))
        .expect_err("invalid")
        .to_string();
    for (line, what) in [
        (3, "fleet.bundle_url"),
        (4, "fleet.public_keys"),
        (5, "fleet.poll.min"),
        (5, "fleet.poll.max"),
        (6, "fleet.ca_file"),
    ] {
        assert!(
            errors.contains(&format!("gateway.toml:{line}:")) && errors.contains(what),
            "{what} at line {line}: {errors}"
        );
    }
    let (public, _) = keypair(&s.0, "k");
    let good = format!(
        "[fleet]\nbundle_url = \"https://cdn.example/fleet/b.tar.gz?x=1\"\npublic_keys = [\"{public}\"]\n"
    );
    let config = Config::parse(&good, &s.0.join("gateway.toml")).expect("valid");
    let fleet = config.fleet.expect("fleet");
    assert_eq!(fleet.bundle_name(), "b.tar.gz");
    assert_eq!(
        fleet.signature_url,
        "https://cdn.example/fleet/b.tar.gz.minisig?x=1"
    );
    assert_eq!(
        (fleet.poll_min.as_secs(), fleet.poll_max.as_secs()),
        (60, 120)
    );
}
