//! Lines of the block lists people use: hosts files, plain domain lists, and adblock network
//! rules. One line at a time, allocation-free; the daemon detects each file's format, reads it
//! line by line with this, and counts what it skips.

/// The format of a list file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `0.0.0.0 domain`, `127.0.0.1 domain`, `:: domain` (several domains per line allowed).
    Hosts,
    /// One domain a line.
    Domains,
    /// `||domain^` blocks, `@@||domain^` allows; other syntax is skipped.
    Adblock,
}

impl Format {
    pub const fn label(self) -> &'static str {
        match self {
            Format::Hosts => "hosts",
            Format::Domains => "domains",
            Format::Adblock => "adblock",
        }
    }
}

/// What one line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// Blank or a comment.
    Comment,
    /// Domains to block (hosts lines may hold several, separated by whitespace).
    Block(&'a str),
    /// A domain to allow (adblock `@@||d^`).
    Allow(&'a str),
    /// Syntax this filter does not apply at the DNS level (cosmetic rules, paths, options...).
    Unsupported,
}

/// Addresses hosts files use to black-hole a name.
const SINK_ADDRESSES: &[&str] = &[
    "0.0.0.0",
    "127.0.0.1",
    "::",
    "::1",
    "0:0:0:0:0:0:0:0",
    "::0",
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

/// Guesses a file's format from its first meaningful lines.
pub fn detect<'a>(lines: impl Iterator<Item = &'a str>) -> Format {
    let mut hosts = 0;
    let mut adblock = 0;
    let mut domains = 0;
    for line in lines.map(str::trim).filter(|l| !l.is_empty()).take(200) {
        if line.starts_with('!')
            || line.starts_with("[Adblock")
            || line.starts_with("||")
            || line.starts_with("@@")
        {
            adblock += 1;
        } else if line.starts_with('#') {
            continue;
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|w| SINK_ADDRESSES.contains(&w))
        {
            hosts += 1;
        } else {
            domains += 1;
        }
    }
    if adblock >= hosts && adblock >= domains && adblock > 0 {
        Format::Adblock
    } else if hosts >= domains && hosts > 0 {
        Format::Hosts
    } else {
        Format::Domains
    }
}

/// Parses one line of a file in `format`.
pub fn parse(line: &str, format: Format) -> Line<'_> {
    let line = line.trim();
    match format {
        Format::Hosts | Format::Domains => {
            let line = match line.find('#') {
                Some(i) => line[..i].trim(),
                None => line,
            };
            if line.is_empty() {
                return Line::Comment;
            }
            if format == Format::Domains {
                return if line.contains(char::is_whitespace) {
                    Line::Unsupported
                } else {
                    Line::Block(line)
                };
            }
            let mut words = line.split_whitespace();
            match words.next() {
                Some(addr) if SINK_ADDRESSES.contains(&addr) => {
                    let rest = line[addr.len()..].trim();
                    if rest.is_empty() || rest.split_whitespace().all(|n| LOCAL_NAMES.contains(&n))
                    {
                        Line::Comment
                    } else {
                        Line::Block(rest)
                    }
                }
                // A hosts line that maps a name to a real address is not a block rule.
                _ => Line::Unsupported,
            }
        }
        Format::Adblock => {
            if line.is_empty()
                || line.starts_with('!')
                || line.starts_with('[')
                || line.starts_with('#')
            {
                return Line::Comment;
            }
            let (allow, rule) = match line.strip_prefix("@@") {
                Some(r) => (true, r),
                None => (false, line),
            };
            let Some(rule) = rule.strip_prefix("||") else {
                return Line::Unsupported;
            };
            // `||domain^`, optionally with `$important` (the only option that still means
            // "block the whole name" at the DNS level).
            let rule = rule.strip_suffix("$important").unwrap_or(rule);
            let Some(domain) = rule.strip_suffix('^') else {
                return Line::Unsupported;
            };
            if domain.is_empty() || domain.contains(['/', '*', '^', '$', '|', ':']) {
                return Line::Unsupported;
            }
            if allow {
                Line::Allow(domain)
            } else {
                Line::Block(domain)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lines() {
        assert_eq!(
            parse("0.0.0.0 ads.example.com", Format::Hosts),
            Line::Block("ads.example.com")
        );
        assert_eq!(
            parse("127.0.0.1  a.example b.example # two", Format::Hosts),
            Line::Block("a.example b.example")
        );
        assert_eq!(
            parse(":: tracker.example", Format::Hosts),
            Line::Block("tracker.example")
        );
        assert_eq!(parse("127.0.0.1 localhost", Format::Hosts), Line::Comment);
        assert_eq!(parse("0.0.0.0 0.0.0.0", Format::Hosts), Line::Comment);
        assert_eq!(parse("# comment", Format::Hosts), Line::Comment);
        assert_eq!(
            parse("192.168.1.10 printer.lan", Format::Hosts),
            Line::Unsupported
        );
    }

    #[test]
    fn adblock_lines() {
        assert_eq!(
            parse("||ads.example.com^", Format::Adblock),
            Line::Block("ads.example.com")
        );
        assert_eq!(
            parse("@@||ok.example.com^", Format::Adblock),
            Line::Allow("ok.example.com")
        );
        assert_eq!(
            parse("||x.example^$important", Format::Adblock),
            Line::Block("x.example")
        );
        assert_eq!(parse("! comment", Format::Adblock), Line::Comment);
        assert_eq!(parse("[Adblock Plus 2.0]", Format::Adblock), Line::Comment);
        assert_eq!(
            parse("example.com##.banner", Format::Adblock),
            Line::Unsupported
        );
        assert_eq!(
            parse("||example.com/ads/*", Format::Adblock),
            Line::Unsupported
        );
        assert_eq!(
            parse("||example.com^$third-party", Format::Adblock),
            Line::Unsupported
        );
        assert_eq!(parse("/banner\\d+/", Format::Adblock), Line::Unsupported);
    }

    #[test]
    fn detection() {
        assert_eq!(
            detect(["! Title", "||a.example^"].into_iter()),
            Format::Adblock
        );
        assert_eq!(
            detect(["# hosts", "0.0.0.0 a.example", "0.0.0.0 b.example"].into_iter()),
            Format::Hosts
        );
        assert_eq!(
            detect(["# list", "a.example", "b.example"].into_iter()),
            Format::Domains
        );
    }
}
