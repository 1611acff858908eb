//! Real servers and clients in the bed's namespaces: dnsmasq, dig, an HTTPS upstream (socat
//! with openssl), curl, nginx serving files, Prometheus taking remote-write, rsyslog taking
//! syslog over TCP and TLS, and a private CA for their certificates.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{Netns, check, output_text, unique};

/// A dnsmasq in `ns` answering on `addr`:53, logging every query it receives.
pub struct Dnsmasq {
    child: Child,
    pub log: PathBuf,
}

impl Dnsmasq {
    /// Answers `A` queries for each `(name, address)` (and its subdomains); NXDOMAIN otherwise.
    pub fn start(ns: &Netns, addr: &str, records: &[(&str, &str)]) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!("{}.log", unique("gwdnsmasq")));
        let mut args = vec![
            "--keep-in-foreground".to_string(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={addr}"),
            "--log-queries".into(),
            format!("--log-facility={}", log.display()),
            "--user=root".into(),
            "--pid-file=".into(),
        ];
        for (name, ip) in records {
            args.push(format!("--address=/{name}/{ip}"));
        }
        let child = ns
            .command("dnsmasq")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq")?;
        let d = Self { child, log };
        wait_listening(
            ns,
            "dnsmasq",
            Listen::Udp,
            addr,
            53,
            Duration::from_secs(10),
            String::new,
        )?;
        Ok(d)
    }

    /// The names dnsmasq was asked for (its query log).
    pub fn queries(&self) -> Vec<String> {
        let mut s = String::new();
        let _ = fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s.lines()
            .filter_map(|l| l.split_once("query[").map(|(_, rest)| rest))
            .filter_map(|rest| rest.split_whitespace().nth(1).map(str::to_lowercase))
            .collect()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
    }
}

/// A DNS lookup's outcome: the status (NOERROR, NXDOMAIN, ...) and the answer addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub status: String,
    pub answers: Vec<String>,
}

/// `dig` (or `kdig`) from `ns`: `server`, `name`, `qtype`.
pub fn dig(
    ns: &Netns,
    tool: &str,
    server: &str,
    name: &str,
    qtype: &str,
) -> anyhow::Result<Lookup> {
    // The two tools spell the same options differently; both print "status: X" in the header.
    let (retry, timeout, header) = if tool == "kdig" {
        ("+retry=0", "+timeout=2", "+header")
    } else {
        ("+tries=1", "+time=2", "+comments")
    };
    let out = ns.output(
        tool,
        &[
            &format!("@{server}"),
            name,
            qtype,
            retry,
            timeout,
            "+noall",
            header,
            "+answer",
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split([',', ';']).next())
        .map(|s| s.trim().to_string())
        .ok_or_else(|| anyhow!("{tool} {name} {qtype}: no status in {text:?}"))?;
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter(|l| l.split_whitespace().count() >= 4)
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    Ok(Lookup { status, answers })
}

/// HTTPS servers in a namespace, with a fresh self-signed certificate: socat forks a TLS server
/// per connection. A connection the gateway reset on the device's side stays half open on the
/// server's (with part of a ClientHello, when the name was in its second segment) until it times
/// out: it must not hold up the next client, as it would a one-connection-at-a-time server.
/// Killed, and its files removed, on drop.
pub struct HttpsUpstream {
    servers: Vec<Child>,
    dir: PathBuf,
}

impl HttpsUpstream {
    pub fn start(ns: &Netns, ports: &[u16]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("gwhttps"));
        fs::create_dir_all(&dir)?;
        let mut up = Self {
            servers: Vec::new(),
            dir,
        };
        let (cert, key, page) = (
            up.dir.join("cert.pem"),
            up.dir.join("key.pem"),
            up.dir.join("page.http"),
        );
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=upstream.test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()?;
        check("openssl req", out)?;
        let body = "<html><body>upstream answered</body></html>\n";
        fs::write(
            &page,
            format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )?;
        for port in ports {
            let child = ns
                .command("socat")
                .arg(format!(
                    "OPENSSL-LISTEN:{port},fork,reuseaddr,verify=0,cert={},key={}",
                    cert.display(),
                    key.display()
                ))
                // The response, then the connection held open for the client to read it and
                // close first (closing at once races the client's request under load).
                .arg(format!("SYSTEM:cat {}; sleep 5", page.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting socat")?;
            up.servers.push(child);
        }
        Ok(up)
    }
}

impl Drop for HttpsUpstream {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// How a TLS client's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// The handshake completed (and the page came back, for HTTP clients).
    Completed,
    /// The connection was reset.
    Reset,
}

/// `curl https://NAME/` from `ns`, with NAME resolved to `upstream`.
pub fn curl_https(ns: &Netns, upstream: &str, name: &str) -> anyhow::Result<Handshake> {
    let o = ns.output(
        "curl",
        &[
            "-sSk",
            "--max-time",
            "20",
            "--resolve",
            &format!("{name}:443:{upstream}"),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{name}/"),
        ],
    )?;
    let t = output_text(&o);
    match o.status.code() {
        Some(0) if t.contains("200") => Ok(Handshake::Completed),
        // 35: the TLS handshake failed; 56: receiving failed; with the reset as the cause.
        Some(35 | 56) if t.contains("reset") => Ok(Handshake::Reset),
        _ => bail!("curl {name}: {t}"),
    }
}

/// nginx in `ns` serving the files of its `root` directory on `addr`:8080 (with ETag and
/// Last-Modified, answering conditional requests with 304), logging every request.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    pub root: PathBuf,
}

impl Nginx {
    pub fn start(ns: &Netns, addr: &str) -> anyhow::Result<Self> {
        Self::start_with(ns, addr, None)
    }

    /// As `start`, serving HTTPS on `addr`:8443 with the certificate and key files `cert`, `key`.
    pub fn start_tls(ns: &Netns, addr: &str, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        Self::start_with(ns, addr, Some((cert, key)))
    }

    fn start_with(ns: &Netns, addr: &str, tls: Option<(&Path, &Path)>) -> anyhow::Result<Self> {
        let (port, listen) = match tls {
            None => (8080, format!("listen {addr}:8080;")),
            Some((cert, key)) => (
                8443,
                format!(
                    "listen {addr}:8443 ssl; ssl_certificate {}; ssl_certificate_key {};",
                    cert.display(),
                    key.display()
                ),
            ),
        };
        let dir = std::env::temp_dir().join(unique("gwnginx"));
        let root = dir.join("www");
        fs::create_dir_all(&root)?;
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n  server {{ {listen} root {}; }}\n}}\n",
            root.display()
        );
        fs::write(dir.join("nginx.conf"), conf)?;
        let child = ns
            .command("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (cargo xtask setup installs it)")?;
        let n = Self { child, dir, root };
        wait_listening(
            ns,
            "nginx",
            Listen::Tcp,
            addr,
            port,
            Duration::from_secs(10),
            || {
                format!(
                    ": {}",
                    fs::read_to_string(n.dir.join("error.log")).unwrap_or_default()
                )
            },
        )?;
        Ok(n)
    }

    /// Puts `bytes` at `name` under the root whole (written aside, then renamed).
    pub fn serve(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!("{name}.new"));
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, self.root.join(name))?;
        Ok(())
    }

    /// The statuses of the GETs of `path` so far, in order.
    pub fn statuses(&self, path: &str) -> Vec<u16> {
        let log = fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        let request = format!("\"GET {path} HTTP/");
        log.lines()
            .filter_map(|l| l.split_once(&request).map(|(_, rest)| rest))
            .filter_map(|rest| rest.split_once("\" ").map(|(_, after)| after))
            .filter_map(|after| after.split_whitespace().next()?.parse().ok())
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A CA, and a certificate it signed for the address `ip`: (CA PEM, certificate, key).
pub fn private_ca(dir: &Path, ip: &str) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let p = |n: &str| dir.join(n);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-days", "2", "-subj", "/CN=gateway test CA", "-keyout"])
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")),
    )?;
    run_ok(
        Command::new("openssl")
            .arg("req")
            .args(ec)
            .args(["-subj", "/CN=origin", "-keyout"])
            .arg(p("origin.key"))
            .arg("-out")
            .arg(p("origin.csr")),
    )?;
    std::fs::write(
        p("ext.cnf"),
        format!(
            "subjectAltName = IP:{ip}\nbasicConstraints = CA:FALSE\n\
             keyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n"
        ),
    )?;
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(p("origin.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .args(["-CAcreateserial", "-extfile"])
            .arg(p("ext.cnf"))
            .arg("-out")
            .arg(p("origin.pem")),
    )?;
    Ok((p("ca.pem"), p("origin.pem"), p("origin.key")))
}

/// Runs `c`; its standard output, or an error with everything it printed.
pub fn run_ok(c: &mut Command) -> anyhow::Result<String> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How a server's socket is found listening (`ss` options).
#[derive(Clone, Copy)]
enum Listen {
    Tcp,
    Udp,
}

/// Waits up to `within` until something in `ns` listens on `addr:port`; `log` says why not.
fn wait_listening(
    ns: &Netns,
    what: &str,
    listen: Listen,
    addr: &str,
    port: u16,
    within: Duration,
    log: impl Fn() -> String,
) -> anyhow::Result<()> {
    let flags = match listen {
        Listen::Tcp => "-tln",
        Listen::Udp => "-uln",
    };
    let deadline = Instant::now() + within;
    while !ns
        .run("ss", &[flags])
        .map(|o| o.contains(&format!("{addr}:{port}")))
        .unwrap_or(false)
    {
        if Instant::now() > deadline {
            bail!("{what} did not start listening on {addr}:{port}{}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Debian's Prometheus in `ns` on `addr`:9090 as a remote-write receiver only (no scrapes),
/// its TSDB in a directory of its own.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub addr: String,
    ns_path: PathBuf,
}

impl Prometheus {
    pub fn start(ns: &Netns, addr: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("gwprom"));
        fs::create_dir_all(dir.join("data"))?;
        fs::write(
            dir.join("prometheus.yml"),
            "global:\n  scrape_interval: 1m\n",
        )?;
        let log = fs::File::create(dir.join("prometheus.log"))?;
        let child = ns
            .command("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}:9090"))
            .arg("--web.enable-remote-write-receiver")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus (cargo xtask setup installs it)")?;
        let p = Self {
            child,
            dir,
            addr: addr.to_string(),
            ns_path: ns.path(),
        };
        wait_listening(
            ns,
            "prometheus",
            Listen::Tcp,
            addr,
            9090,
            Duration::from_secs(20),
            || format!(": {}", p.log()),
        )?;
        Ok(p)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The remote-write endpoint.
    pub fn write_url(&self) -> String {
        format!("http://{}:9090/api/v1/write", self.addr)
    }

    /// The `data.result` of the instant query `query` through the HTTP API, from `ns`.
    pub fn query(&self, query: &str) -> anyhow::Result<serde_json::Value> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path.display()))
            .args(["curl", "-sS", "--max-time", "5", "-G"])
            .arg(format!("http://{}:9090/api/v1/query", self.addr))
            .arg("--data-urlencode")
            .arg(format!("query={query}"))
            .output()?;
        let text = check("curl the Prometheus query API", out)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("the query API answered {text}"))?;
        if v["status"] != "success" {
            bail!("{query}: {text}");
        }
        Ok(v["data"]["result"].clone())
    }

    /// The value of a query whose answer is one number (0 if it has no series).
    pub fn number(&self, query: &str) -> anyhow::Result<f64> {
        let r = self.query(query)?;
        match r.as_array().and_then(|a| a.first()) {
            None => Ok(0.0),
            Some(s) => s["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{query}: {s}")),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Debian's rsyslog in `ns` taking RFC 6587 syslog over TCP (or TLS, RFC 5425) on `addr`:`port`
/// and writing each message as received, one per line, to `out`. It can be stopped and
/// started again, appending to the same file.
pub struct Rsyslog {
    child: Option<Child>,
    dir: PathBuf,
    pub out: PathBuf,
    addr: String,
    port: u16,
}

impl Rsyslog {
    /// Plain TCP.
    pub fn start(ns: &Netns, addr: &str, port: u16) -> anyhow::Result<Self> {
        Self::start_with(ns, addr, port, None)
    }

    /// TLS with the certificate and key files `cert`, `key` (no client authentication).
    pub fn start_tls(
        ns: &Netns,
        addr: &str,
        port: u16,
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_with(ns, addr, port, Some((ca, cert, key)))
    }

    fn start_with(
        ns: &Netns,
        addr: &str,
        port: u16,
        tls: Option<(&Path, &Path, &Path)>,
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("gwrsyslog"));
        fs::create_dir_all(dir.join("work"))?;
        let out = dir.join("received.log");
        let (global, module) = match tls {
            None => (String::new(), "module(load=\"imtcp\")".to_string()),
            Some((ca, cert, key)) => (
                format!(
                    "global(DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{}\" \
                     DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\")",
                    ca.display(),
                    cert.display(),
                    key.display()
                ),
                "module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.Authmode=\"anon\")".to_string(),
            ),
        };
        let conf = format!(
            "global(workDirectory=\"{work}\" maxMessageSize=\"64k\")\n{global}\n{module}\n\
             input(type=\"imtcp\" address=\"{addr}\" port=\"{port}\")\n\
             template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
             action(type=\"omfile\" file=\"{out}\" template=\"raw\" asyncWriting=\"off\" flushOnTXEnd=\"on\")\n",
            work = dir.join("work").display(),
            out = out.display(),
        );
        fs::write(dir.join("rsyslog.conf"), conf)?;
        let mut r = Self {
            child: None,
            dir,
            out,
            addr: addr.to_string(),
            port,
        };
        r.resume(ns)?;
        Ok(r)
    }

    /// Starts it (again).
    pub fn resume(&mut self, ns: &Netns) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.log"))?;
        let child = ns
            .command("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting rsyslogd (cargo xtask setup installs rsyslog)")?;
        self.child = Some(child);
        let dir = self.dir.clone();
        wait_listening(
            ns,
            "rsyslogd",
            Listen::Tcp,
            &self.addr,
            self.port,
            Duration::from_secs(20),
            move || {
                format!(
                    ": {}",
                    fs::read_to_string(dir.join("rsyslogd.log")).unwrap_or_default()
                )
            },
        )
    }

    /// Stops it as an operator would (SIGTERM), and waits for it to exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill with a pid of our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            c.wait()?;
        }
        Ok(())
    }

    /// The messages received so far, each as received (without its octet count).
    pub fn messages(&self) -> Vec<String> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
