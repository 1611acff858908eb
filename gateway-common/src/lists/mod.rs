//! Lines of the block lists people feed DNS filters: hosts files, plain and wildcard domain
//! lists, adblock / AdGuard DNS filter syntax, dnsmasq configuration and RPZ zone files. One line
//! at a time and allocation-free: the daemon detects a file's format (`detect`), reads it line by
//! line with a `Parser`, and counts what it skips by kind (`Skip`).
//!
//! Semantics follow AdGuard Home's DNS-level reading of adblock rules where it differs from a
//! browser's: a rule applies to a host name or to nothing, options that only mean something to
//! a page's requests make the rule not apply (it is skipped, not widened), `$important` beats
//! exceptions, `$badfilter` cancels the rule it names. A bare name in a hosts, domains, adblock
//! or dnsmasq line covers the name and its subdomains (as the kernel matches); `*.d` covers the
//! subdomains only, `|d^` and an RPZ owner `d` the name only.

/// The format of a list file. Declared in `ALL`'s order: `f as usize` is its place there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// A response policy zone (BIND RPZ): `d CNAME .`, `*.d CNAME .`, `d CNAME rpz-passthru.`.
    Rpz,
    /// dnsmasq configuration: `address=/d/…`, `server=/d/…`, `local=/d/`.
    Dnsmasq,
    /// Adblock / AdGuard DNS filter syntax (`||domain^`, `@@||domain^`, options).
    Adblock,
    /// `0.0.0.0 domain`, `127.0.0.1 a b c`, `:: domain` (several names a line).
    Hosts,
    /// One domain a line, as `*.domain` (its subdomains) or `domain`.
    Wildcard,
    /// One domain a line.
    Domains,
}

impl Format {
    /// Every format, in the order detection breaks ties.
    pub const ALL: [Format; 6] = [
        Format::Rpz,
        Format::Dnsmasq,
        Format::Adblock,
        Format::Hosts,
        Format::Wildcard,
        Format::Domains,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Format::Hosts => "hosts",
            Format::Domains => "domains",
            Format::Wildcard => "wildcard",
            Format::Adblock => "adblock",
            Format::Dnsmasq => "dnsmasq",
            Format::Rpz => "rpz",
        }
    }

    /// The format named `label` (as a configuration's `format = "…"` gives it).
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.label() == label)
    }
}

/// Which names a rule covers, relative to the name it gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The name and every name below it (`||d^`, a hosts or domains line).
    Subtree,
    /// The name only (`|d^`, an RPZ owner `d`).
    Exact,
    /// The names below it only (`*.d`).
    Below,
}

/// A rule a line gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule<'a> {
    /// One or more names, separated by whitespace or `/` (hosts lines and dnsmasq directives
    /// name several); see `names`.
    pub names: &'a str,
    /// An exception (`@@`, dnsmasq `server=`, RPZ `rpz-passthru.`) rather than a block.
    pub allow: bool,
    pub scope: Scope,
    /// `$important`: beats exceptions that are not important themselves.
    pub important: bool,
    /// `$badfilter`: cancels the same rule without it, wherever it is listed.
    pub badfilter: bool,
    /// `$denyallow=a|b`: names (separated by `|`) the rule does not cover; empty for none.
    pub denyallow: &'a str,
}

impl<'a> Rule<'a> {
    /// The names the rule gives.
    pub fn names(&self) -> impl Iterator<Item = &'a str> {
        self.names
            .split(|c: char| c.is_whitespace() || c == '/')
            .filter(|n| !n.is_empty())
    }

    /// The names `$denyallow` excludes.
    pub fn denied(&self) -> impl Iterator<Item = &'a str> {
        self.denyallow.split('|').filter(|n| !n.is_empty())
    }

    fn block(names: &'a str, scope: Scope) -> Self {
        Self {
            names,
            allow: false,
            scope,
            important: false,
            badfilter: false,
            denyallow: "",
        }
    }
}

/// Why a line that is not a comment gave no rule: each kind is counted on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// Element hiding, scriptlets, HTML filtering (`##`, `#@#`, `#?#`, `#$#`, `$$`…).
    Cosmetic,
    /// `/regular expression/`.
    Regex,
    /// A URL or path rule (`||d/ads/`, `-ad-manager/`, `://`): part of a page, not a name.
    Path,
    /// A name pattern the kernel cannot match as a name (`ads*.example`, `||d` without `^`).
    Pattern,
    /// Options that only mean something to a page's requests (`$third-party`, `$script`,
    /// `$domain=`…); AdGuard Home does not apply such a rule at the DNS level either.
    BrowserOption,
    /// `$client=` / `$ctag=`: per-client rules (per-device policies do that here).
    Client,
    /// `$dnstype=`: the kernel decides a name for every query type and the SNI alike.
    DnsType,
    /// `$dnsrewrite=`: answers rewritten, not blocked.
    DnsRewrite,
    /// A rule on an address (`||192.0.2.1^`), not a name.
    Address,
    /// A name mapped to a real address or another name (hosts `192.0.2.1 d`, dnsmasq
    /// `address=/d/192.0.2.1`): a redirect, not a block.
    Redirect,
    /// An RPZ action other than NXDOMAIN (`CNAME .`) and passthru: NODATA, drop, TCP-only,
    /// local data.
    RpzAction,
    /// An RPZ trigger other than the query name (`rpz-ip`, `rpz-nsdname`, `rpz-client-ip`…).
    RpzTrigger,
    /// A configuration directive that is not a rule (dnsmasq options, `$INCLUDE`).
    Directive,
    /// A line this format does not describe.
    Unrecognised,
}

impl Skip {
    pub const ALL: [Skip; 14] = [
        Skip::Cosmetic,
        Skip::Regex,
        Skip::Path,
        Skip::Pattern,
        Skip::BrowserOption,
        Skip::Client,
        Skip::DnsType,
        Skip::DnsRewrite,
        Skip::Address,
        Skip::Redirect,
        Skip::RpzAction,
        Skip::RpzTrigger,
        Skip::Directive,
        Skip::Unrecognised,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Skip::Cosmetic => "cosmetic",
            Skip::Regex => "regex",
            Skip::Path => "path",
            Skip::Pattern => "pattern",
            Skip::BrowserOption => "browser_option",
            Skip::Client => "client",
            Skip::DnsType => "dnstype",
            Skip::DnsRewrite => "dnsrewrite",
            Skip::Address => "address",
            Skip::Redirect => "redirect",
            Skip::RpzAction => "rpz_action",
            Skip::RpzTrigger => "rpz_trigger",
            Skip::Directive => "directive",
            Skip::Unrecognised => "unrecognised",
        }
    }
}

/// What one line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// Blank, a comment, a header, or zone structure (SOA, NS, `$TTL`).
    Comment,
    Rule(Rule<'a>),
    Skip(Skip),
}

/// Addresses hosts files (and dnsmasq `address=`) use to black-hole a name.
const SINK_ADDRESSES: &[&str] = &[
    "0.0.0.0",
    "127.0.0.1",
    "::",
    "::1",
    "0:0:0:0:0:0:0:0",
    "::0",
    "0",
];
/// Names hosts files carry for the machine itself, not as rules.
const LOCAL_NAMES: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "0.0.0.0",
];

/// Whether `w` is written like an IPv4 or IPv6 address.
fn is_address(w: &str) -> bool {
    let v4 = w.split('.').count() == 4
        && w.split('.')
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    let v6 = w.contains(':')
        && w.bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    v4 || v6
}

/// Whether `w` could be a host name as lists write them (the daemon validates it properly).
fn is_name_like(w: &str) -> bool {
    !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The markers of cosmetic (element hiding, scriptlet, HTML filtering) rules.
const COSMETIC: &[&str] = &[
    "##", "#@#", "#?#", "#@?#", "#$#", "#@$#", "#%#", "#@%#", "$$", "$@$",
];

fn is_cosmetic(line: &str) -> bool {
    // One scan for the bytes every marker has before the ten searches.
    let (hash, dollar) = line
        .bytes()
        .fold((false, false), |(h, d), b| (h || b == b'#', d || b == b'$'));
    (hash || dollar) && COSMETIC.iter().any(|m| line.contains(m))
}

/// The shape of one line, for detection.
fn shape(line: &str) -> Option<Format> {
    let mut words = line.split_whitespace();
    let first = words.next()?;
    let second = words.next();
    if line.starts_with('#') && !is_cosmetic(line) || line.starts_with(';') {
        return None;
    }
    if line.starts_with('!') || line.starts_with('[') || line.starts_with("@@") {
        return Some(Format::Adblock);
    }
    if ["address=/", "server=/", "local=/"]
        .iter()
        .any(|p| line.starts_with(p))
    {
        return Some(Format::Dnsmasq);
    }
    if second
        .into_iter()
        .chain(words.take(2))
        .any(|w| w.eq_ignore_ascii_case("CNAME") || w.eq_ignore_ascii_case("SOA"))
    {
        return Some(Format::Rpz);
    }
    if is_address(first) && second.is_some() {
        return Some(Format::Hosts);
    }
    if let Some(rest) = first.strip_prefix("*.")
        && is_name_like(rest)
    {
        return Some(Format::Wildcard);
    }
    if is_name_like(first) {
        return Some(Format::Domains);
    }
    // `||d^`, paths, options, cosmetic rules, regexes.
    Some(Format::Adblock)
}

/// The format of a whole file: its header if it has one (`[Adblock Plus 2.0]`, `! Title:`, a
/// zone's `$TTL`/`$ORIGIN`/SOA), else the shape most of its lines have.
pub fn detect<'a>(lines: impl Iterator<Item = &'a str>) -> Format {
    let mut counts = [0usize; Format::ALL.len()];
    for (meaningful, line) in lines.map(str::trim).filter(|l| !l.is_empty()).enumerate() {
        if meaningful < 64 {
            if line.starts_with("[Adblock")
                || line.starts_with("[AdGuard")
                || line.starts_with("[uBlock")
                || line.starts_with("! Title:")
            {
                return Format::Adblock;
            }
            let upper = line.split_whitespace().next().unwrap_or("");
            if upper.eq_ignore_ascii_case("$TTL") || upper.eq_ignore_ascii_case("$ORIGIN") {
                return Format::Rpz;
            }
        }
        if let Some(f) = shape(line) {
            counts[f as usize] += 1;
        }
    }
    // A domains list with a few `*.` lines is a wildcard list; a wildcard list with bare names
    // reads the same either way.
    let (wildcard, domains) = (Format::Wildcard as usize, Format::Domains as usize);
    if counts[wildcard] > 0 && counts[wildcard] * 10 >= counts[domains] {
        counts[wildcard] += counts[domains];
        counts[domains] = 0;
    }
    let mut best = Format::Domains;
    let mut most = 0;
    for (f, n) in Format::ALL.iter().zip(counts) {
        if n > most {
            best = *f;
            most = n;
        }
    }
    best
}

/// Reads the lines of one file in one format. RPZ needs the state of the zone (its origin,
/// an open parenthesis, the last owner name); the other formats read each line on its own.
#[derive(Clone, Debug)]
pub struct Parser<'a> {
    format: Format,
    origin: &'a str,
    in_parens: bool,
    owner: &'a str,
}

impl<'a> Parser<'a> {
    pub const fn new(format: Format) -> Self {
        Self {
            format,
            origin: "",
            in_parens: false,
            owner: "",
        }
    }

    pub const fn format(&self) -> Format {
        self.format
    }

    /// What `line` says.
    pub fn line(&mut self, line: &'a str) -> Line<'a> {
        match self.format {
            Format::Hosts => hosts(line.trim()),
            Format::Domains | Format::Wildcard => domains(line.trim()),
            Format::Adblock => adblock(line.trim()),
            Format::Dnsmasq => dnsmasq(line.trim()),
            Format::Rpz => self.rpz(line),
        }
    }

    fn rpz(&mut self, raw: &'a str) -> Line<'a> {
        let line = match raw.find(';') {
            Some(i) => &raw[..i],
            None => raw,
        };
        if self.in_parens {
            if line.contains(')') {
                self.in_parens = false;
            }
            return Line::Comment;
        }
        if line.trim().is_empty() {
            return Line::Comment;
        }
        if line.contains('(') && !line.contains(')') {
            self.in_parens = true;
        }
        let continued = line.starts_with([' ', '\t']);
        let mut words = line.split_whitespace();
        let owner = if continued {
            self.owner
        } else {
            let Some(first) = words.next() else {
                return Line::Comment;
            };
            if first.starts_with('$') {
                if first.eq_ignore_ascii_case("$ORIGIN") {
                    self.origin = words.next().unwrap_or("");
                    return Line::Comment;
                }
                if first.eq_ignore_ascii_case("$TTL") {
                    return Line::Comment;
                }
                return Line::Skip(Skip::Directive);
            }
            self.owner = first;
            first
        };
        // [TTL] [class] type rdata, TTL and class in either order.
        let mut kind = "";
        for w in words.by_ref() {
            let ttl = w.bytes().next().is_some_and(|b| b.is_ascii_digit());
            let class = ["IN", "CH", "HS", "CS"]
                .iter()
                .any(|c| w.eq_ignore_ascii_case(c));
            if !ttl && !class {
                kind = w;
                break;
            }
        }
        let rdata = words.next().unwrap_or("");
        if kind.eq_ignore_ascii_case("SOA") {
            if owner.ends_with('.') && owner != "." {
                self.origin = owner;
            }
            return Line::Comment;
        }
        if kind.eq_ignore_ascii_case("NS") || kind.is_empty() {
            return Line::Comment;
        }
        if owner == "@" {
            return Line::Skip(Skip::RpzTrigger);
        }
        let name = self.relative(owner);
        if name.is_empty() {
            return Line::Skip(Skip::RpzTrigger);
        }
        let trigger_labels = [
            "rpz-ip",
            "rpz-nsdname",
            "rpz-nsip",
            "rpz-client-ip",
            "rpz-ip6",
        ];
        if name
            .split('.')
            .any(|l| trigger_labels.iter().any(|t| l.eq_ignore_ascii_case(t)))
        {
            return Line::Skip(Skip::RpzTrigger);
        }
        if !kind.eq_ignore_ascii_case("CNAME") {
            // A, AAAA, TXT…: local data answered instead of the real records.
            return Line::Skip(Skip::RpzAction);
        }
        let allow = if rdata == "." {
            false
        } else if rdata.eq_ignore_ascii_case("rpz-passthru.") {
            true
        } else {
            return Line::Skip(Skip::RpzAction);
        };
        let (name, scope) = match name.strip_prefix("*.") {
            Some(rest) => (rest, Scope::Below),
            None => (name, Scope::Exact),
        };
        if name.contains('*') {
            return Line::Skip(Skip::Pattern);
        }
        Line::Rule(Rule {
            allow,
            ..Rule::block(name, scope)
        })
    }

    /// `owner` relative to the zone's origin (the trigger name RPZ means).
    fn relative(&self, owner: &'a str) -> &'a str {
        let Some(absolute) = owner.strip_suffix('.') else {
            return owner;
        };
        let origin = self.origin.strip_suffix('.').unwrap_or(self.origin);
        if origin.is_empty() {
            return absolute;
        }
        if absolute.eq_ignore_ascii_case(origin) {
            return "";
        }
        match absolute.len().checked_sub(origin.len() + 1) {
            Some(cut)
                if absolute.is_char_boundary(cut)
                    && absolute[cut..].starts_with('.')
                    && absolute[cut + 1..].eq_ignore_ascii_case(origin) =>
            {
                &absolute[..cut]
            }
            _ => absolute,
        }
    }
}

/// A hosts line: `address name [name…] [# comment]`.
fn hosts(line: &str) -> Line<'_> {
    let line = match line.find('#') {
        Some(i) => line[..i].trim(),
        None => line,
    };
    let mut words = line.split_whitespace();
    let Some(addr) = words.next() else {
        return Line::Comment;
    };
    if !SINK_ADDRESSES.contains(&addr) {
        return if is_address(addr) {
            Line::Skip(Skip::Redirect)
        } else if words.next().is_none() {
            // A bare name in a hosts file: the lists that mix formats mean a block.
            domains(line)
        } else {
            Line::Skip(Skip::Unrecognised)
        };
    }
    let rest = line[addr.len()..].trim();
    if rest.is_empty() || rest.split_whitespace().all(|n| LOCAL_NAMES.contains(&n)) {
        return Line::Comment;
    }
    if rest.contains('*') {
        return Line::Skip(Skip::Pattern);
    }
    Line::Rule(Rule::block(rest, Scope::Subtree))
}

/// A domains or wildcard line: `name` or `*.name`, `#` comments.
fn domains(line: &str) -> Line<'_> {
    let line = match line.find('#') {
        Some(i) => line[..i].trim(),
        None => line,
    };
    if line.is_empty() {
        return Line::Comment;
    }
    let mut words = line.split_whitespace();
    let (Some(first), rest) = (words.next(), words.next()) else {
        return Line::Comment;
    };
    if rest.is_some() {
        // `0.0.0.0 name` in a domains list: a hosts line.
        return if is_address(first) {
            hosts(line)
        } else {
            Line::Skip(Skip::Unrecognised)
        };
    }
    let (name, scope) = match first.strip_prefix("*.") {
        Some(rest) => (rest, Scope::Below),
        None => (first.strip_prefix('.').unwrap_or(first), Scope::Subtree),
    };
    if name.contains('*') {
        return Line::Skip(Skip::Pattern);
    }
    if name.contains(['/', ':']) {
        return Line::Skip(Skip::Path);
    }
    if is_address(name) {
        return Line::Skip(Skip::Address);
    }
    Line::Rule(Rule::block(name, scope))
}

/// Options a rule at the DNS level may carry; anything else is a browser option.
fn options<'a>(rule: &mut Rule<'a>, opts: &'a str) -> Result<(), Skip> {
    for opt in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("important", None) => rule.important = true,
            ("badfilter", None) => rule.badfilter = true,
            ("denyallow", Some(v)) if !rule.allow && !v.is_empty() => {
                if v.split('|').any(|d| d.starts_with('~') || !is_name_like(d)) {
                    return Err(Skip::Pattern);
                }
                rule.denyallow = v;
            }
            ("client" | "ctag", _) => return Err(Skip::Client),
            ("dnstype", _) => return Err(Skip::DnsType),
            ("dnsrewrite", _) => return Err(Skip::DnsRewrite),
            _ => return Err(Skip::BrowserOption),
        }
    }
    Ok(())
}

/// An adblock / AdGuard DNS filter line.
fn adblock(line: &str) -> Line<'_> {
    if line.is_empty() || line.starts_with('!') || line.starts_with('[') && line.ends_with(']') {
        return Line::Comment;
    }
    if is_cosmetic(line) {
        return Line::Skip(Skip::Cosmetic);
    }
    if line.starts_with('#') {
        return Line::Comment;
    }
    let mut words = line.split_whitespace();
    if words.next().is_some_and(is_address) && words.next().is_some() {
        return hosts(line);
    }
    let (allow, body) = match line.strip_prefix("@@") {
        Some(r) => (true, r),
        None => (false, line),
    };
    if body.len() > 1 && body.starts_with('/') && (body.ends_with('/') || body.contains("/$")) {
        return Line::Skip(Skip::Regex);
    }
    let (pattern, opts) = match body.find('$') {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (pattern, scope) = if let Some(p) = pattern.strip_prefix("||") {
        match p.strip_suffix("^|").or_else(|| p.strip_suffix('^')) {
            Some(name) => (name, Scope::Subtree),
            None if p.contains(['/', ':', '?']) => return Line::Skip(Skip::Path),
            None => return Line::Skip(Skip::Pattern),
        }
    } else if let Some(p) = pattern.strip_prefix('|') {
        match p.strip_suffix("^|").or_else(|| p.strip_suffix(['^', '|'])) {
            Some(name) => (name, Scope::Exact),
            None => return Line::Skip(Skip::Path),
        }
    } else if is_name_like(pattern)
        && pattern.contains('.')
        && pattern.starts_with(|c: char| c.is_ascii_alphanumeric())
        && pattern.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        // A bare name: the domains-only syntax. (`.beacon.min.js`, `-ad-`, `.300x250.` are
        // pieces of URLs, patterns.)
        (pattern, Scope::Subtree)
    } else if let Some(p) = pattern.strip_prefix("*.")
        && is_name_like(p)
    {
        (p, Scope::Below)
    } else if pattern.contains(['/', ':', '?', '=', '&']) {
        return Line::Skip(Skip::Path);
    } else {
        return Line::Skip(Skip::Pattern);
    };
    let (pattern, scope) = match (scope, pattern.strip_prefix("*.")) {
        (Scope::Subtree, Some(rest)) => (rest, Scope::Below),
        _ => (pattern, scope),
    };
    if pattern.contains(['/', ':', '?', '=', '&']) {
        return Line::Skip(Skip::Path);
    }
    if pattern.contains(['*', '^', '|']) || pattern.is_empty() {
        return Line::Skip(Skip::Pattern);
    }
    if pattern.contains(char::is_whitespace) {
        return Line::Skip(Skip::Unrecognised);
    }
    if is_address(pattern) {
        return Line::Skip(Skip::Address);
    }
    let mut rule = Rule {
        allow,
        ..Rule::block(pattern, scope)
    };
    if let Some(opts) = opts
        && let Err(kind) = options(&mut rule, opts)
    {
        return Line::Skip(kind);
    }
    Line::Rule(rule)
}

/// A dnsmasq configuration line.
fn dnsmasq(line: &str) -> Line<'_> {
    if line.is_empty() || line.starts_with('#') {
        return Line::Comment;
    }
    let Some((key, value)) = line.split_once('=') else {
        return Line::Skip(Skip::Directive);
    };
    let key = key.trim();
    let value = value.trim();
    // `/a/b/target`: the names between the slashes, the target after the last.
    let Some(inner) = value.strip_prefix('/') else {
        return Line::Skip(Skip::Directive);
    };
    let Some((names, target)) = inner.rsplit_once('/') else {
        return Line::Skip(Skip::Directive);
    };
    if names.is_empty() || names.split('/').any(|n| n.is_empty()) {
        // `//`: unqualified names, not a domain.
        return Line::Skip(Skip::Directive);
    }
    if names.split('/').any(|n| n == "#" || n.contains('*')) {
        return Line::Skip(Skip::Pattern);
    }
    let names = names.strip_prefix('.').unwrap_or(names);
    match key {
        "address" => {
            if target.is_empty() || target == "#" || SINK_ADDRESSES.contains(&target) {
                Line::Rule(Rule::block(names, Scope::Subtree))
            } else {
                Line::Skip(Skip::Redirect)
            }
        }
        "local" => Line::Rule(Rule::block(names, Scope::Subtree)),
        "server" => Line::Rule(Rule {
            allow: true,
            ..Rule::block(names, Scope::Subtree)
        }),
        _ => Line::Skip(Skip::Directive),
    }
}

#[cfg(test)]
mod tests;
