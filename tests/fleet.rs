//! Tier 3 for fleets: nginx in the upstream namespace is the origin of signed bundles for three
//! gateways, each with the filter on its device's veth. A bundle built with `gateway bundle
//! build` and signed with the minisign tool is enforced by all three (a blocked name's answer
//! changes); between revisions the gateways' polls are 304s. Each bad bundle is refused with
//! its reason in `gateway status` while the policy in force goes on being enforced (checked
//! with real queries): a flipped byte, a missing signature, a signature by an unknown key, an
//! older revision, a truncated archive, `../` paths, a configuration that fails validation.
//! With the origin gone, a restarted gateway enforces its last good bundle. Over HTTPS, an
//! origin with a private CA's certificate is trusted with `ca_file` and refused without it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;
use gateway_testbed::{
    Daemon, Dnsmasq, FleetBed, Nginx, Pins, dig, eventually, private_ca, unique,
};

const BUNDLE: &str = "fleet.tar.gz";

/// A scratch directory for keys and bundle sources, removed on drop.
struct Work(PathBuf);

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bad bundle: what it is, the archive, its signature (if any), the reason it is refused for.
type Case = (&'static str, Vec<u8>, Option<Vec<u8>>, &'static str);

/// The origin, while it runs.
fn origin(n: &Option<Nginx>) -> anyhow::Result<&Nginx> {
    n.as_ref().context("the origin is stopped")
}

use gateway_testbed::run_ok as run;

/// A minisign key pair without a password: (public key line, secret key file).
fn keypair(dir: &Path, name: &str) -> anyhow::Result<(String, PathBuf)> {
    let (public, secret) = (
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.key")),
    );
    run(Command::new("minisign")
        .args(["-G", "-W", "-f", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret))?;
    let text = std::fs::read_to_string(&public)?;
    let line = text
        .lines()
        .nth(1)
        .context("no key line")?
        .trim()
        .to_string();
    Ok((line, secret))
}

/// Signs `file` into `file.minisig` with the trusted comment of a bundle `name` at `revision`.
fn sign(file: &Path, secret: &Path, revision: u64) -> anyhow::Result<Vec<u8>> {
    let sig = PathBuf::from(format!("{}.minisig", file.display()));
    run(Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(secret)
        .arg("-m")
        .arg(file)
        .arg("-t")
        .arg(format!("gateway-bundle name={BUNDLE} revision={revision}"))
        .arg("-x")
        .arg(&sig))?;
    Ok(std::fs::read(sig)?)
}

/// The fleet's configuration at a revision: every device in policy "students", which blocks
/// the names of its list.
fn central(blocked: &[&str]) -> String {
    format!(
        "[gateway]\nunknown_devices = \"students\"\n\n[[category]]\nname = \"centre\"\n\
         lists = [\"lists/centre.txt\"]\n\n[[policy]]\nname = \"students\"\n\
         block_categories = [\"centre\"]\n\n# {}\n",
        blocked.join(" ")
    )
}

/// `gateway bundle build` of revision `revision` blocking `blocked`: the archive's path.
fn build(work: &Path, revision: u64, blocked: &[&str]) -> anyhow::Result<PathBuf> {
    let src = work.join(format!("src{revision}"));
    std::fs::create_dir_all(src.join("lists"))?;
    std::fs::write(src.join("gateway.toml"), central(blocked))?;
    std::fs::write(src.join("lists/centre.txt"), blocked.join("\n") + "\n")?;
    let out_dir = work.join(format!("out{revision}"));
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(BUNDLE);
    let said = run(Command::new(gateway_testbed::gateway_bin())
        .args(["bundle", "build"])
        .arg(&src)
        .args([
            "--revision",
            &revision.to_string(),
            "--label",
            "group=buses",
            "-o",
        ])
        .arg(&out))?;
    assert!(
        said.contains(&format!("revision={revision}")),
        "prints the comment to sign with: {said}"
    );
    Ok(out)
}

/// A gzip tar written entry by entry (for archives `gateway bundle build` would never make).
fn raw_archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, body) in entries {
        let mut h = tar::Header::new_gnu();
        if let Some(gnu) = h.as_gnu_mut() {
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        }
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        let _ = tar.append(&h, *body);
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .unwrap_or_default()
}

/// Puts a bundle on the origin: the signature first (or removes it), then the archive.
fn publish(n: &Nginx, archive: &[u8], sig: Option<&[u8]>) -> anyhow::Result<()> {
    match sig {
        Some(s) => n.serve(&format!("{BUNDLE}.minisig"), s)?,
        None => {
            let _ = std::fs::remove_file(n.root.join(format!("{BUNDLE}.minisig")));
        }
    }
    n.serve(BUNDLE, archive)
}

/// A gateway's own file: the filter on `iface`, bundles from `url` signed by `public`.
fn own_file(iface: &str, url: &str, public: &str, extra: &str) -> String {
    format!(
        "[[interface]]\nname = \"{iface}\"\n\n[fleet]\nbundle_url = \"{url}\"\n\
         public_keys = [\"{public}\"]\npoll = {{ min = 1, max = 2 }}\n\
         labels = {{ group = \"buses\" }}\n{extra}"
    )
}

/// `gateway status --json` of a gateway.
fn status(pins: &Pins) -> serde_json::Value {
    pins.gateway("status", &["--json"])
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default()
}

fn failures(pins: &Pins, reason: &str) -> u64 {
    status(pins)["fleet"]["failures"][reason]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_fleet_follows_signed_bundles_and_refuses_bad_ones() -> anyhow::Result<()> {
    let bed = FleetBed::new(3)?;
    let work = Work(std::env::temp_dir().join(unique("gwfleet")));
    std::fs::create_dir_all(&work.0)?;
    let records = [
        ("first.example", "198.51.100.7"),
        ("second.example", "198.51.100.8"),
        ("third.example", "198.51.100.9"),
    ];
    let _dns = Dnsmasq::start(&bed.up, &bed.origin, &records)?;
    let mut nginx = Some(Nginx::start(&bed.up, &bed.origin)?);
    let (public, secret) = keypair(&work.0, "fleet")?;
    let (_, stranger) = keypair(&work.0, "stranger")?;
    let r1 = build(&work.0, 1, &["first.example"])?;
    publish(
        origin(&nginx)?,
        &std::fs::read(&r1)?,
        Some(&sign(&r1, &secret, 1)?),
    )?;

    let mut gateways = Vec::new();
    for site in &bed.sites {
        let url = format!("http://{}:8080/{BUNDLE}", bed.origin);
        let body = own_file(&site.device.gw_if, &url, &public, "");
        let pins = Pins::with_config("", &body)?;
        let daemon = Daemon::start(&site.gw, &pins, &["d1"])?;
        gateways.push((site, pins, daemon));
    }
    let answer = |site: &gateway_testbed::Site, name: &str| {
        dig(&site.device.ns, "dig", &bed.origin, name, "A")
            .map(|l| l.status)
            .unwrap_or_else(|e| format!("{e:#}"))
    };
    let enforce = |what: &str, blocked: &str, allowed: &str| -> anyhow::Result<()> {
        for (site, _, daemon) in &gateways {
            eventually(&format!("{what} on {}", site.gw.name), || {
                answer(site, blocked) == "NXDOMAIN" && answer(site, allowed) == "NOERROR"
            })
            .map_err(|e| anyhow::anyhow!("{e:#}\n{}", daemon.log_text()))?;
        }
        Ok(())
    };

    // Revision 1 reaches all three.
    enforce("revision 1", "first.example", "second.example")?;
    for (_, pins, _) in &gateways {
        assert_eq!(status(pins)["fleet"]["revision"], 1, "{}", status(pins));
    }
    // Between revisions, polls are conditional and answered 304.
    eventually("304s between revisions", || {
        origin(&nginx).is_ok_and(|n| {
            n.statuses(&format!("/{BUNDLE}"))
                .iter()
                .filter(|s| **s == 304)
                .count()
                >= 6
        })
    })?;

    // Revision 2: what was blocked is allowed and the other way round, everywhere.
    let r2 = build(&work.0, 2, &["second.example"])?;
    let r2_bytes = std::fs::read(&r2)?;
    let r2_sig = sign(&r2, &secret, 2)?;
    publish(origin(&nginx)?, &r2_bytes, Some(&r2_sig))?;
    enforce("revision 2", "second.example", "first.example")?;
    for (site, pins, _) in &gateways {
        let metrics = site.gw.run(
            "curl",
            &["-sS", "--max-time", "5", "http://127.0.0.1:9477/metrics"],
        )?;
        assert!(metrics.contains("gateway_bundle_revision 2"), "{metrics}");
        assert!(metrics.contains("gateway_bundle_last_success_timestamp_seconds"));
        assert_eq!(status(pins)["fleet"]["last_error"], serde_json::Value::Null);
        // The same view from the API, with the daemon's token.
        let token = std::fs::read_to_string(pins.state_dir.join("api.token"))?;
        let auth = format!("Authorization: Bearer {}", token.trim());
        let api = site.gw.run(
            "curl",
            &[
                "-sS",
                "--max-time",
                "5",
                "-H",
                &auth,
                "http://127.0.0.1:9477/api/v1/status",
            ],
        )?;
        let api: serde_json::Value = serde_json::from_str(&api).context("status JSON")?;
        assert_eq!(api["fleet"]["revision"], 2, "{api}");
        assert_eq!(api["fleet"]["labels"]["group"], "buses", "{api}");
    }

    // Each bad bundle: refused for its reason, revision 2 still enforced.
    let r3 = build(&work.0, 3, &["third.example"])?;
    let r3_bytes = std::fs::read(&r3)?;
    let r3_sig = sign(&r3, &secret, 3)?;
    let mut flipped = r3_bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x20;
    let by_stranger = sign(&r3, &stranger, 3)?;
    let cut_path = work.0.join("cut").join(BUNDLE);
    std::fs::create_dir_all(cut_path.parent().context("parent")?)?;
    std::fs::write(&cut_path, &r3_bytes[..r3_bytes.len() * 2 / 3])?;
    let cut_sig = sign(&cut_path, &secret, 3)?;
    let manifest = b"revision = 3\ncreated = \"2026-12-03T00:00:00Z\"\n";
    let climbing_path = work.0.join("climb").join(BUNDLE);
    std::fs::create_dir_all(climbing_path.parent().context("parent")?)?;
    std::fs::write(
        &climbing_path,
        raw_archive(&[
            ("manifest.toml", manifest),
            ("gateway.toml", central(&[]).as_bytes()),
            ("../../escaped.txt", b"third.example\n"),
        ]),
    )?;
    let climbing_sig = sign(&climbing_path, &secret, 3)?;
    let invalid_path = work.0.join("invalid").join(BUNDLE);
    std::fs::create_dir_all(invalid_path.parent().context("parent")?)?;
    std::fs::write(
        &invalid_path,
        raw_archive(&[
            ("manifest.toml", manifest),
            (
                "gateway.toml",
                b"[[policy]]\nname = \"students\"\nblock_categories = [\"missing\"]\n",
            ),
        ]),
    )?;
    let invalid_sig = sign(&invalid_path, &secret, 3)?;
    let r1_bytes = std::fs::read(&r1)?;
    let r1_sig = sign(&r1, &secret, 1)?;
    let cases: Vec<Case> = vec![
        ("a flipped byte", flipped, Some(r3_sig.clone()), "signature"),
        ("no signature", r3_bytes.clone(), None, "signature"),
        (
            "an unknown key",
            r3_bytes.clone(),
            Some(by_stranger),
            "signature",
        ),
        ("an older revision", r1_bytes, Some(r1_sig), "rollback"),
        (
            "a truncated archive",
            std::fs::read(&cut_path)?,
            Some(cut_sig),
            "archive",
        ),
        (
            "../ paths",
            std::fs::read(&climbing_path)?,
            Some(climbing_sig),
            "archive",
        ),
        (
            "an invalid configuration",
            std::fs::read(&invalid_path)?,
            Some(invalid_sig),
            "validation",
        ),
    ];
    for (what, archive, sig, reason) in cases {
        let before: Vec<u64> = gateways
            .iter()
            .map(|(_, p, _)| failures(p, reason))
            .collect();
        publish(origin(&nginx)?, &archive, sig.as_deref())?;
        for ((site, pins, daemon), was) in gateways.iter().zip(&before) {
            eventually(&format!("{what} refused on {}", site.gw.name), || {
                failures(pins, reason) > *was
            })
            .map_err(|e| anyhow::anyhow!("{e:#}\n{}\n{}", status(pins), daemon.log_text()))?;
            let s = status(pins);
            assert_eq!(s["fleet"]["revision"], 2, "{what}: {s}");
            assert_eq!(s["fleet"]["last_reason"], reason, "{what}: {s}");
            assert_eq!(
                answer(site, "second.example"),
                "NXDOMAIN",
                "{what}: revision 2 enforced"
            );
            assert_eq!(answer(site, "first.example"), "NOERROR", "{what}");
        }
    }
    assert!(!work.0.join("escaped.txt").exists());
    for (_, pins, _) in &gateways {
        let escaped = pins.state_dir.join("escaped.txt");
        assert!(!escaped.exists(), "nothing written outside the bundle");
    }

    // The origin gone, a restarted gateway enforces its last good bundle.
    publish(origin(&nginx)?, &r2_bytes, Some(&r2_sig))?;
    drop(nginx.take());
    let (site, pins, daemon) = &mut gateways[0];
    daemon.kill9()?;
    *daemon = Daemon::start(&site.gw, pins, &["d1"])?;
    assert!(
        daemon
            .log_text()
            .contains("enforcing the last good fleet bundle"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(
        answer(site, "second.example"),
        "NXDOMAIN",
        "revision 2 from the start"
    );
    assert_eq!(answer(site, "first.example"), "NOERROR");
    eventually("the origin's absence counted", || {
        failures(pins, "network") > 0
    })?;
    assert_eq!(status(pins)["fleet"]["revision"], 2);
    Ok(())
}

#[test]
fn bundles_over_https_from_an_origin_of_a_private_ca() -> anyhow::Result<()> {
    let bed = FleetBed::new(2)?;
    let work = Work(std::env::temp_dir().join(unique("gwfleettls")));
    std::fs::create_dir_all(&work.0)?;
    let records = [
        ("first.example", "198.51.100.7"),
        ("second.example", "198.51.100.8"),
    ];
    let _dns = Dnsmasq::start(&bed.up, &bed.origin, &records)?;
    let (ca, cert, key) = private_ca(&work.0, &bed.origin)?;
    let nginx = Nginx::start_tls(&bed.up, &bed.origin, &cert, &key)?;
    let (public, secret) = keypair(&work.0, "fleet")?;
    let r1 = build(&work.0, 1, &["first.example"])?;
    publish(&nginx, &std::fs::read(&r1)?, Some(&sign(&r1, &secret, 1)?))?;
    let url = format!("https://{}:8443/{BUNDLE}", bed.origin);
    // The first gateway trusts the private CA; the second only Mozilla's roots.
    let trusting = Pins::with_config(
        "",
        &own_file(
            &bed.sites[0].device.gw_if,
            &url,
            &public,
            &format!("ca_file = \"{}\"\n", ca.display()),
        ),
    )?;
    let default_roots =
        Pins::with_config("", &own_file(&bed.sites[1].device.gw_if, &url, &public, ""))?;
    let d0 = Daemon::start(&bed.sites[0].gw, &trusting, &["d1"])?;
    let d1 = Daemon::start(&bed.sites[1].gw, &default_roots, &["d1"])?;
    let answer = |i: usize, name: &str| {
        dig(&bed.sites[i].device.ns, "dig", &bed.origin, name, "A")
            .map(|l| l.status)
            .unwrap_or_else(|e| format!("{e:#}"))
    };
    eventually("the bundle over HTTPS in force", || {
        answer(0, "first.example") == "NXDOMAIN"
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}\n{}", status(&trusting), d0.log_text()))?;
    assert_eq!(answer(0, "second.example"), "NOERROR");
    assert_eq!(status(&trusting)["fleet"]["revision"], 1);
    eventually("an untrusted certificate refused", || {
        failures(&default_roots, "network") > 0
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", d1.log_text()))?;
    let s = status(&default_roots);
    assert_eq!(s["fleet"]["revision"], serde_json::Value::Null, "{s}");
    let why = s["fleet"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        why.contains("certificate"),
        "refused for its certificate: {s}"
    );
    assert_eq!(
        answer(1, "first.example"),
        "NOERROR",
        "its own file in force"
    );
    assert!(
        nginx.statuses(&format!("/{BUNDLE}")).contains(&200),
        "the trusting gateway fetched over TLS"
    );
    Ok(())
}
