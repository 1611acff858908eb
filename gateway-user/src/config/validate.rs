//! From the configuration as written to a `Config`: every check types cannot express, each
//! failure located, all of them reported.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use gateway_common::{
    maps::{
        DeviceName, MAX_CIDR_IDS, MAX_DEVICES, MAX_IP_IDS, MAX_MAC_IDS, MAX_POLICIES, MAX_RESOLVERS,
    },
    packet::{IPPROTO_TCP, IPPROTO_UDP},
};
use toml::Spanned;

use super::*;
use super::{
    devices::DeviceIndex,
    fleet,
    inventory::inventory_devices,
    lists,
    locate::Locator,
    policy::{parse_days, parse_time},
    raw::RawConfig,
    remote, telemetry,
};

/// TCP and UDP port of DNS over TLS and DNS over QUIC, which the built-in `dns-bypass` category
/// blocks.
const DOT_PORT: u16 = 853;

/// An address of `dns_resolvers` (IPv4 or IPv6) as IPv6 or IPv4-mapped bytes.
fn resolver_address(s: &str) -> Result<[u8; 16], String> {
    match s.trim().parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => Ok(a.to_ipv6_mapped().octets()),
        Ok(std::net::IpAddr::V6(a)) => Ok(a.octets()),
        Err(_) => Err(format!(
            "\"{s}\" is not an IP address (expected e.g. \"10.0.0.1\" or \"fd00::53\")"
        )),
    }
}

/// The addresses of a `dns_resolvers` list (`key` names it in errors).
fn resolvers(
    list: &[Spanned<String>],
    key: &str,
    loc: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) -> BTreeSet<[u8; 16]> {
    let mut out = BTreeSet::new();
    for entry in list {
        match resolver_address(entry.get_ref()) {
            Ok(a) => {
                out.insert(a);
            }
            Err(why) => errors.push(loc.at(entry, format!("{key}: {why}"))),
        }
    }
    out
}

pub(super) fn validate(raw: RawConfig, loc: &Locator<'_>) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    // Every file this configuration is made of (watched for changes by the daemon).
    let mut files = vec![loc.file.clone()];

    let bpffs = match &raw.gateway.bpffs {
        Some(p) if !p.get_ref().is_absolute() => {
            errors.push(loc.at(
                p,
                format!(
                    "bpffs: \"{}\" must be an absolute path",
                    p.get_ref().display()
                ),
            ));
            PathBuf::from(DEFAULT_BPFFS)
        }
        Some(p) => p.get_ref().clone(),
        None => PathBuf::from(DEFAULT_BPFFS),
    };

    let mut interfaces: Vec<Interface> = Vec::new();
    for i in &raw.interfaces {
        let name = i.name.get_ref();
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            errors.push(loc.at(&i.name, format!("interface name \"{name}\" is not a valid interface name (1-15 characters, no '/' or spaces)")));
        } else if interfaces.iter().any(|x| &x.name == name) {
            errors.push(loc.at(&i.name, format!("interface \"{name}\" is listed twice")));
        } else {
            interfaces.push(Interface {
                name: name.clone(),
                link: i.link,
            });
        }
    }

    let base = loc.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let state_dir = raw.gateway.state_dir.as_ref().map_or_else(
        || PathBuf::from(DEFAULT_STATE_DIR),
        |p| base.join(p.get_ref()),
    );
    // Lists by URL, each once (the daemon downloads them).
    let mut remote_lists: Vec<remote::RemoteList> = Vec::new();
    let mut categories: Vec<Category> = Vec::new();
    for c in &raw.categories {
        let name = c.name.get_ref();
        if let Err(why) =
            check_new_name("category", name, categories.iter().map(|x| x.name.as_str()))
        {
            errors.push(loc.at(&c.name, why));
            continue;
        }
        let mut cat = Category {
            name: name.clone(),
            sources: Vec::new(),
            lists: Vec::new(),
            as_read: Vec::new(),
        };
        for list in &c.lists {
            let entry = match remote::resolve(list.get_ref(), &base, &state_dir) {
                Ok(e) => e,
                Err(why) => {
                    errors.push(loc.at(list, format!("category \"{name}\": list: {why}")));
                    continue;
                }
            };
            files.push(entry.path.clone());
            remote_lists.extend(entry.remote.clone());
            match remote::read(&entry) {
                Ok((domains, stats)) => {
                    cat.sources.push(domains);
                    if stats.invalid > 0 {
                        tracing::warn!(list = %stats.url.as_deref().unwrap_or(&stats.path), invalid = stats.invalid, examples = ?stats.invalid_examples, "list lines that are not domain names were skipped");
                    }
                    cat.lists.push(stats);
                }
                Err(e) => errors.push(loc.at(
                    list,
                    format!("category \"{name}\": list {}: {e}", entry.path.display()),
                )),
            }
        }
        let mut inline = Domains::default();
        for d in &c.domains {
            match lists::normalised(d.get_ref()) {
                Ok(n) => {
                    inline.block.insert(n);
                }
                Err(why) => errors.push(loc.at(
                    d,
                    format!(
                        "category \"{name}\": \"{}\" is not a domain: {why}",
                        d.get_ref()
                    ),
                )),
            }
        }
        if !c.domains.is_empty() {
            cat.sources.push(Arc::new(inline));
        }
        let as_read = cat.sources.clone();
        let removed = lists::across(&mut cat.sources);
        if removed > 0 {
            tracing::info!(
                category = name.as_str(),
                rules = removed,
                "$badfilter and $important rules of one list removed rules of another"
            );
            cat.as_read = as_read;
        }
        if c.lists.is_empty() && c.domains.is_empty() {
            errors.push(loc.at(
                &c.name,
                format!("category \"{name}\" is empty: give lists or domains"),
            ));
        }
        categories.push(cat);
    }
    if !categories.iter().any(|c| c.name == DNS_BYPASS_CATEGORY) {
        categories.push(Category {
            name: DNS_BYPASS_CATEGORY.into(),
            sources: vec![lists::dns_bypass()],
            lists: Vec::new(),
            as_read: Vec::new(),
        });
    }
    if categories.len() > MAX_CATEGORIES {
        errors.push(loc.error(0, format!("{} categories defined (with the built-in dns-bypass); at most {MAX_CATEGORIES} are supported", categories.len())));
    }

    let safe_search =
        super::safe_search::validate(&raw.safe_search, &base, loc, &mut errors, &mut files);
    let mut policies: Vec<Policy> = Vec::new();
    for p in &raw.policies {
        let name = p.name.get_ref();
        if let Err(why) = check_new_name("policy", name, policies.iter().map(|x| x.name.as_str())) {
            errors.push(loc.at(&p.name, why));
            continue;
        }
        let mut pol = Policy::allow_all(name, p.mode.unwrap_or(raw.gateway.mode));
        for c in &p.block_categories {
            match categories.iter().position(|x| &x.name == c.get_ref()) {
                Some(id) if id < MAX_CATEGORIES => {
                    pol.block_categories |= 1 << id;
                    if c.get_ref() == DNS_BYPASS_CATEGORY {
                        // DNS over TLS and over QUIC (RFC 7858, RFC 9250) by their port.
                        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
                            pol.block_ports.insert(BlockedPort { proto, port: DOT_PORT });
                        }
                    }
                }
                Some(_) => {}
                None => errors.push(loc.at(c, format!("policy \"{name}\": block_categories: no category named \"{}\" (defined: {})", c.get_ref(), categories.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")))),
            }
        }
        for (entries, into, key) in [
            (&p.allow, &mut pol.allow, "allow"),
            (&p.block, &mut pol.block, "block"),
        ] {
            for d in entries {
                match lists::normalised(d.get_ref()) {
                    Ok(n) => {
                        into.insert(n);
                    }
                    Err(why) => errors.push(loc.at(
                        d,
                        format!(
                            "policy \"{name}\": {key}: \"{}\" is not a domain: {why}",
                            d.get_ref()
                        ),
                    )),
                }
            }
        }
        for (list_files, allow, key) in [
            (&p.allow_lists, true, "allow_lists"),
            (&p.block_lists, false, "block_lists"),
        ] {
            for f in list_files {
                let entry = match remote::resolve(f.get_ref(), &base, &state_dir) {
                    Ok(e) => e,
                    Err(why) => {
                        errors.push(loc.at(f, format!("policy \"{name}\": {key}: {why}")));
                        continue;
                    }
                };
                files.push(entry.path.clone());
                remote_lists.extend(entry.remote.clone());
                match remote::read(&entry) {
                    Ok((d, _)) => {
                        // A policy's entries cover a name and its subdomains: a rule of a
                        // narrower scope is widened to that.
                        let (blocks, allows) = Domains::clone(&d).widened();
                        // A list's own @@ entries are allows whichever key it is under.
                        pol.allow.extend(allows);
                        if allow {
                            pol.allow.extend(blocks)
                        } else {
                            pol.block.extend(blocks)
                        }
                    }
                    Err(e) => errors.push(loc.at(
                        f,
                        format!("policy \"{name}\": {key}: {}: {e}", entry.path.display()),
                    )),
                }
            }
        }
        pol.default_block = p.default == Some(AllowBlock::Block);
        pol.https_empty = p.https_records == Some(HttpsRecords::Empty);
        pol.dns_answer = p.dns_block_answer.unwrap_or(DnsBlockAnswer::Nxdomain);
        pol.parse_error_block = p.on_parse_error == Some(AllowBlock::Block);
        pol.tls_drop = p.tls_block_answer == Some(TlsBlockAnswer::Drop);
        pol.log = p.log.unwrap_or_default();
        pol.unparsed_tls_block = p.on_unparsed_tls == Some(AllowBlock::Block);
        pol.quic_block = p.quic == Some(AllowBlock::Block);
        pol.safe_search = super::safe_search::policy_engines(
            &p.safe_search,
            &safe_search.engines,
            name,
            loc,
            &mut errors,
        );
        pol.http_drop = p.http_block_answer == Some(TlsBlockAnswer::Drop);
        pol.unparsed_http_block = p.on_unparsed_http == Some(AllowBlock::Block);
        for bp in &p.block_ports {
            match bp.get_ref().parse::<BlockedPort>() {
                Ok(port) => {
                    pol.block_ports.insert(port);
                }
                Err(why) => errors.push(loc.at(
                    bp,
                    format!(
                        "policy \"{name}\": block_ports: \"{}\": {why}",
                        bp.get_ref()
                    ),
                )),
            }
        }
        if let Some(t) = p.block_ttl {
            pol.block_ttl = t;
        }
        if let Some(list) = &p.dns_resolvers {
            pol.dns_resolvers = Some(resolvers(
                list,
                &format!("policy \"{name}\": dns_resolvers"),
                loc,
                &mut errors,
            ));
        }
        if let Some(a) = &p.sinkhole_ipv4 {
            match a.get_ref().parse::<std::net::Ipv4Addr>() {
                Ok(ip) => pol.sinkhole_v4 = ip.octets(),
                Err(_) => errors.push(loc.at(
                    a,
                    format!(
                        "policy \"{name}\": sinkhole_ipv4 \"{}\" is not an IPv4 address",
                        a.get_ref()
                    ),
                )),
            }
        }
        if let Some(a) = &p.sinkhole_ipv6 {
            match a.get_ref().parse::<std::net::Ipv6Addr>() {
                Ok(ip) => pol.sinkhole_v6 = ip.octets(),
                Err(_) => errors.push(loc.at(
                    a,
                    format!(
                        "policy \"{name}\": sinkhole_ipv6 \"{}\" is not an IPv6 address",
                        a.get_ref()
                    ),
                )),
            }
        }
        policies.push(pol);
    }
    // A `default` policy that allows everything always exists, unless the file defines its own.
    if !policies.iter().any(|p| p.name == DEFAULT_POLICY) {
        policies.push(Policy::allow_all(DEFAULT_POLICY, raw.gateway.mode));
    }
    // `[gateway] dns_resolvers`: every policy without its own.
    if let Some(list) = &raw.gateway.dns_resolvers {
        let all = resolvers(list, "dns_resolvers", loc, &mut errors);
        for p in policies.iter_mut().filter(|p| p.dns_resolvers.is_none()) {
            p.dns_resolvers = Some(all.clone());
        }
    }
    // The kernel's table holds every policy's resolvers together.
    let mut distinct = BTreeSet::new();
    let lists = raw
        .policies
        .iter()
        .filter_map(|p| p.dns_resolvers.as_ref())
        .chain(raw.gateway.dns_resolvers.as_ref());
    for entry in lists.flatten() {
        if let Ok(a) = resolver_address(entry.get_ref())
            && distinct.insert(a)
            && distinct.len() > MAX_RESOLVERS as usize
        {
            errors.push(loc.at(
                entry,
                format!(
                    "dns_resolvers: \"{}\" is one address too many: at most {MAX_RESOLVERS} distinct resolvers in all (gateway and policies)",
                    entry.get_ref()
                ),
            ));
        }
    }
    // Schedules, now that every policy name is known.
    for p in &raw.policies {
        let name = p.name.get_ref();
        let Some(id) = policies.iter().position(|q| &q.name == name) else {
            continue;
        };
        for (i, w) in p.schedule.iter().enumerate() {
            let w = w.get_ref();
            let what = format!("policy \"{name}\": schedule[{i}]");
            let days = parse_days(w.days.get_ref())
                .map_err(|why| errors.push(loc.at(&w.days, format!("{what}: days: {why}"))));
            let from = parse_time(w.from.get_ref())
                .map_err(|why| errors.push(loc.at(&w.from, format!("{what}: from: {why}"))));
            let to = parse_time(w.to.get_ref())
                .map_err(|why| errors.push(loc.at(&w.to, format!("{what}: to: {why}"))));
            let target = policies.iter().position(|q| &q.name == w.policy.get_ref());
            let target = match target {
                None => {
                    errors.push(loc.at(
                        &w.policy,
                        format!(
                            "{what}: no policy named \"{}\" (defined: {})",
                            w.policy.get_ref(),
                            list_names(&policies)
                        ),
                    ));
                    continue;
                }
                Some(t) if t == id => {
                    errors.push(loc.at(
                        &w.policy,
                        format!("{what}: a policy cannot schedule itself"),
                    ));
                    continue;
                }
                Some(t) => t,
            };
            if raw
                .policies
                .iter()
                .any(|q| q.name.get_ref() == w.policy.get_ref() && !q.schedule.is_empty())
            {
                errors.push(loc.at(
                    &w.policy,
                    format!(
                        "{what}: \"{}\" has a schedule of its own (schedules do not chain)",
                        w.policy.get_ref()
                    ),
                ));
                continue;
            }
            if let (Ok(days), Ok(from), Ok(to)) = (days, from, to) {
                if from == to {
                    errors.push(loc.at(&w.to, format!("{what}: an empty window (from = to)")));
                    continue;
                }
                if let Some(pol) = policies.get_mut(id) {
                    pol.schedule.push(Window {
                        days,
                        from: from % (24 * 60),
                        to: to % (24 * 60),
                        policy: target,
                    });
                }
            }
        }
    }
    let timezone = match &raw.gateway.timezone {
        None => jiff::tz::TimeZone::system(),
        Some(tz) => match jiff::tz::TimeZone::get(tz.get_ref()) {
            Ok(z) => z,
            Err(_) => {
                errors.push(loc.at(
                    tz,
                    format!(
                        "timezone: \"{}\" is not a time zone (expected an IANA name like Europe/Berlin)",
                        tz.get_ref()
                    ),
                ));
                jiff::tz::TimeZone::UTC
            }
        },
    };
    let unknown_policy = match &raw.gateway.unknown_devices {
        Some(s) => match policies.iter().position(|p| &p.name == s.get_ref()) {
            Some(id) => id,
            None => {
                errors.push(loc.at(
                    s,
                    format!(
                        "unknown_devices: no policy named \"{}\" (defined: {})",
                        s.get_ref(),
                        list_names(&policies)
                    ),
                ));
                0
            }
        },
        None => policies
            .iter()
            .position(|p| p.name == DEFAULT_POLICY)
            .unwrap_or(0),
    };
    if policies.len() > MAX_POLICIES as usize {
        errors.push(loc.error(
            0,
            format!(
                "{} policies defined; at most {MAX_POLICIES} are supported",
                policies.len()
            ),
        ));
    }

    let mut index = DeviceIndex::default();
    for d in &raw.devices {
        index.add(d, loc, &policies, &mut errors);
    }
    for inv in &raw.gateway.inventories {
        let path = base.join(inv.get_ref());
        files.push(path.clone());
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let inv_loc = Locator::new(&text, &path);
                match inventory_devices(&text, &inv_loc) {
                    Ok(list) => {
                        for d in &list {
                            index.add(d, &inv_loc, &policies, &mut errors);
                        }
                    }
                    Err(e) => errors.extend(e),
                }
            }
            Err(e) => errors.push(loc.at(
                inv,
                format!("inventories: {}: cannot read: {e}", path.display()),
            )),
        }
    }
    index.check_overlaps(&policies, &mut errors);
    let DeviceIndex {
        devices,
        macs,
        ips,
        cidrs,
        ..
    } = index;
    if devices.len() > MAX_DEVICES as usize {
        errors.push(loc.error(
            0,
            format!(
                "{} devices defined; at most {MAX_DEVICES} are supported",
                devices.len()
            ),
        ));
    }

    for (what, n, max) in [
        ("MAC addresses", macs.len(), MAX_MAC_IDS),
        ("device addresses", ips.len(), MAX_IP_IDS),
        ("CIDRs", cidrs.len(), MAX_CIDR_IDS),
    ] {
        if n > max as usize {
            errors.push(loc.error(
                0,
                format!("{n} {what} configured; at most {max} are supported"),
            ));
        }
    }

    if let Some(m) = &raw.gateway.max_tls_flows
        && *m.get_ref() == 0
    {
        errors.push(loc.at(m, "max_tls_flows: must be at least 1".to_string()));
    }
    let tls_ports = ports(
        &raw.gateway.tls_ports,
        "tls_ports",
        DEFAULT_TLS_PORT,
        false,
        loc,
        &mut errors,
    );
    let http_ports = ports(
        &raw.gateway.http_ports,
        "http_ports",
        DEFAULT_HTTP_PORT,
        true,
        loc,
        &mut errors,
    );
    for p in tls_ports.intersection(&http_ports) {
        if let Some(list) = &raw.gateway.http_ports {
            errors.push(loc.at(
                list,
                format!("http_ports: {p} is a TLS port too (tls_ports)"),
            ));
        }
    }

    let listen = match &raw.api.listen {
        None => DEFAULT_LISTEN.parse().ok(),
        Some(l) => match l.get_ref().parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(loc.at(
                    l,
                    format!(
                        "api.listen: \"{}\" is not an address and port (expected e.g. {DEFAULT_LISTEN} or [::1]:9477)",
                        l.get_ref()
                    ),
                ));
                None
            }
        },
    };
    let mut bounded = |v: &Option<Spanned<i64>>,
                       key: &str,
                       range: std::ops::RangeInclusive<i64>,
                       default: u64|
     -> u64 {
        match v {
            None => default,
            Some(n) if range.contains(n.get_ref()) => *n.get_ref() as u64,
            Some(n) => {
                errors.push(loc.at(
                    n,
                    format!(
                        "history.{key}: {} is out of range (expected {} to {})",
                        n.get_ref(),
                        range.start(),
                        range.end()
                    ),
                ));
                default
            }
        }
    };
    let history = History {
        enabled: raw.history.enabled.unwrap_or(true),
        retention_days: bounded(
            &raw.history.retention_days,
            "retention_days",
            1..=3650,
            u64::from(DEFAULT_RETENTION_DAYS),
        ) as u32,
        max_rows: bounded(
            &raw.history.max_rows,
            "max_rows",
            1000..=1_000_000_000,
            DEFAULT_MAX_ROWS,
        ),
        max_bytes: bounded(
            &raw.history.max_megabytes,
            "max_megabytes",
            1..=1_000_000,
            DEFAULT_MAX_MEGABYTES,
        ) << 20,
        pseudonymize: raw.history.pseudonymize.unwrap_or(false),
        ship: telemetry::validate_ship(&raw.history, &base, loc, &mut errors),
    };
    let telemetry = raw
        .telemetry
        .as_ref()
        .and_then(|t| telemetry::validate(t, &base, loc, &mut errors));
    files.extend(telemetry.as_ref().and_then(|t| t.ca_file.clone()));
    files.extend(history.ship.as_ref().and_then(|s| s.ca_file.clone()));

    let fleet = raw
        .fleet
        .as_ref()
        .and_then(|f| fleet::validate(f, &base, loc, &mut errors));
    files.extend(fleet.as_ref().and_then(|f| f.local.clone()));
    files.extend(fleet.as_ref().and_then(|f| f.ca_file.clone()));

    if let (true, Some(listen)) = (errors.is_empty(), listen) {
        Ok(Config {
            source: loc.file.clone(),
            mode: raw.gateway.mode,
            bpffs,
            interfaces,
            categories,
            policies,
            max_domains: raw
                .gateway
                .max_domains
                .map_or(DEFAULT_MAX_DOMAINS, |m| *m.get_ref()),
            max_tls_flows: raw
                .gateway
                .max_tls_flows
                .map_or(gateway_common::maps::DEFAULT_TLS_FLOWS, |m| *m.get_ref()),
            tls_ports,
            http_ports,
            safe_search,
            timezone,
            files,
            remote_lists: {
                let mut seen = std::collections::HashSet::new();
                remote_lists.retain(|r| seen.insert(r.cache.clone()));
                remote_lists
            },
            unknown_policy,
            devices,
            state_dir: state_dir.clone(),
            api: Api {
                listen,
                device_labels: raw.api.device_labels.unwrap_or_default(),
                token_file: raw.api.token_file.as_ref().map_or_else(
                    || state_dir.join(DEFAULT_TOKEN_FILE),
                    |p| base.join(p.get_ref()),
                ),
            },
            history,
            lifecycle: Lifecycle {
                hold_checked_in: raw.lifecycle.hold_checked_in.unwrap_or(false),
                overdue: raw.lifecycle.overdue.unwrap_or_default(),
            },
            fleet,
            telemetry,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

pub(super) fn list_names(policies: &[Policy]) -> String {
    if policies.is_empty() {
        return "none".to_string();
    }
    policies
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A category or policy name: valid (`check_name`) and not among those already defined.
fn check_new_name<'a>(
    kind: &str,
    name: &str,
    mut defined: impl Iterator<Item = &'a str>,
) -> Result<(), String> {
    if let Err(why) = check_name(name) {
        return Err(format!("{kind} name \"{name}\" {why}"));
    }
    if defined.any(|x| x == name) {
        return Err(format!("{kind} \"{name}\" is defined twice"));
    }
    Ok(())
}

/// Device and policy names: 1 to 60 bytes, printable, no whitespace.
pub(super) fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > DeviceName::MAX_LEN {
        return Err("is longer than 60 bytes");
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("contains whitespace or control characters");
    }
    Ok(())
}

/// A `[gateway]` port list (`tls_ports`, `http_ports`): `default` alone unless given; an empty
/// list is an error unless `may_be_empty`.
fn ports(
    raw: &Option<Spanned<Vec<Spanned<i64>>>>,
    key: &str,
    default: u16,
    may_be_empty: bool,
    loc: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    let Some(list) = raw else {
        out.insert(default);
        return out;
    };
    if list.get_ref().is_empty() && !may_be_empty {
        errors.push(loc.at(
            list,
            format!("{key}: empty (expected at least one port, e.g. [{default}])"),
        ));
    }
    for p in list.get_ref() {
        match u16::try_from(*p.get_ref()) {
            Ok(port) if port != 0 => {
                out.insert(port);
            }
            _ => errors.push(loc.at(p, format!("{key}: {} is not a port (1-65535)", p.get_ref()))),
        }
    }
    out
}
