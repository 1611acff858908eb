//! Device identities: MAC, address and CIDR parsing, and the index that checks every device of
//! the configuration and its inventories is named once and owns its identifiers alone.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
};

use super::{
    Cidr, ConfigError, Device, Policy,
    locate::Locator,
    raw::RawDevice,
    validate::{check_name, list_names},
};

/// The devices read so far (from gateway.toml and the inventories), and which device owns each
/// name, MAC, address and CIDR.
#[derive(Default)]
pub(super) struct DeviceIndex {
    pub(super) devices: Vec<Device>,
    pub(super) names: HashMap<String, usize>,
    pub(super) macs: HashMap<[u8; 6], String>,
    pub(super) ips: HashMap<[u8; 16], String>,
    pub(super) cidrs: HashMap<Cidr, String>,
    /// Where each CIDR was given.
    pub(super) cidr_at: HashMap<Cidr, ConfigError>,
}

impl DeviceIndex {
    /// Validates one device (`loc` locates it in its file) and adds it, or records why not.
    pub(super) fn add(
        &mut self,
        d: &RawDevice,
        loc: &Locator<'_>,
        policies: &[Policy],
        errors: &mut Vec<ConfigError>,
    ) {
        let Self {
            devices,
            names,
            macs,
            ips,
            cidrs,
            cidr_at,
        } = self;
        let name = d.name.get_ref();
        if let Err(why) = check_name(name) {
            errors.push(loc.at(&d.name, format!("device name \"{name}\" {why}")));
            return;
        }
        if names.insert(name.clone(), devices.len()).is_some() {
            errors.push(loc.at(&d.name, format!("device \"{name}\" is defined twice")));
            return;
        }
        let policy = match policies.iter().position(|p| &p.name == d.policy.get_ref()) {
            Some(id) => id,
            None => {
                errors.push(loc.at(
                    &d.policy,
                    format!(
                        "device \"{name}\": no policy named \"{}\" (defined: {})",
                        d.policy.get_ref(),
                        list_names(policies)
                    ),
                ));
                0
            }
        };
        let mut dev = Device {
            name: name.clone(),
            macs: Vec::new(),
            ips: Vec::new(),
            cidrs: Vec::new(),
            policy,
            suspended: d.suspended,
            metadata: BTreeMap::new(),
        };
        if let Some(list) = &d.mac {
            for (i, s) in list.get_ref().items().into_iter().enumerate() {
                match parse_mac(s) {
                    Ok(mac) => match macs.get(&mac) {
                        Some(other) => errors.push(loc.at(
                            list,
                            format!(
                                "device \"{name}\": mac[{i}] {s} is already device \"{other}\"'s"
                            ),
                        )),
                        None => {
                            macs.insert(mac, name.clone());
                            dev.macs.push(mac);
                        }
                    },
                    Err(why) => errors
                        .push(loc.at(list, format!("device \"{name}\": mac[{i}] \"{s}\": {why}"))),
                }
            }
        }
        if let Some(list) = &d.ip {
            for (i, s) in list.get_ref().items().into_iter().enumerate() {
                match s.parse::<IpAddr>() {
                    Ok(ip) if ip.is_unspecified() || ip.is_multicast() => errors.push(loc.at(
                        list,
                        format!(
                            "device \"{name}\": ip[{i}] {s} cannot be a device's source address"
                        ),
                    )),
                    Ok(ip) => {
                        let addr = mapped(ip);
                        match ips.get(&addr) {
                            Some(other) => errors.push(loc.at(
                                list,
                                format!(
                                    "device \"{name}\": ip[{i}] {s} is already device \"{other}\"'s"
                                ),
                            )),
                            None => {
                                ips.insert(addr, name.clone());
                                dev.ips.push(addr);
                            }
                        }
                    }
                    Err(_) => errors.push(loc.at(
                        list,
                        format!(
                            "device \"{name}\": ip[{i}] \"{s}\" is not an IPv4 or IPv6 address"
                        ),
                    )),
                }
            }
        }
        if let Some(list) = &d.cidr {
            for (i, s) in list.get_ref().items().into_iter().enumerate() {
                match parse_cidr(s) {
                    Ok(c) => match cidrs.get(&c) {
                        Some(other) => errors.push(loc.at(
                            list,
                            format!(
                                "device \"{name}\": cidr[{i}] {s} is already device \"{other}\"'s"
                            ),
                        )),
                        None => {
                            cidrs.insert(c, name.clone());
                            cidr_at.insert(c, loc.at(list, String::new()));
                            dev.cidrs.push(c);
                        }
                    },
                    Err(why) => errors
                        .push(loc.at(list, format!("device \"{name}\": cidr[{i}] \"{s}\": {why}"))),
                }
            }
        }
        if dev.macs.is_empty()
            && dev.ips.is_empty()
            && dev.cidrs.is_empty()
            && d.mac.is_none()
            && d.ip.is_none()
            && d.cidr.is_none()
        {
            errors.push(loc.at(
                &d.name,
                format!("device \"{name}\" has no identifier: give mac, ip or cidr"),
            ));
        }
        for (key, value) in [
            ("imei", &d.imei),
            ("mdn", &d.mdn),
            ("iccid", &d.iccid),
            ("nickname", &d.nickname),
            ("type", &d.kind),
            ("notes", &d.notes),
        ] {
            if let Some(v) = value {
                dev.metadata.insert(key.to_string(), v.clone());
            }
        }
        devices.push(dev);
    }

    /// Nested CIDRs of devices with different policies: which policy applies to an address in
    /// both would depend on the prefix lengths, which is rarely what the operator meant.
    pub(super) fn check_overlaps(&self, policies: &[Policy], errors: &mut Vec<ConfigError>) {
        let policy_of: HashMap<&str, usize> = self
            .devices
            .iter()
            .map(|d| (d.name.as_str(), d.policy))
            .collect();
        let mut found = Vec::new();
        for (c, owner) in &self.cidrs {
            for len in (0..c.prefix).rev() {
                let outer = c.truncated(len);
                if let Some(other) = self.cidrs.get(&outer)
                    && policy_of.get(other.as_str()) != policy_of.get(owner.as_str())
                {
                    let at = self.cidr_at.get(c).cloned().unwrap_or(ConfigError {
                        file: PathBuf::new(),
                        line: 0,
                        column: 0,
                        message: String::new(),
                    });
                    found.push((at, format!(
                        "device \"{owner}\": cidr {c} lies inside device \"{other}\"'s {outer}, which has another policy ({} vs {})",
                        policies.get(policy_of[owner.as_str()]).map_or("?", |p| p.name.as_str()),
                        policies.get(policy_of[other.as_str()]).map_or("?", |p| p.name.as_str()),
                    )));
                }
            }
        }
        found.sort_by(|a, b| (a.0.line, a.0.column, &a.1).cmp(&(b.0.line, b.0.column, &b.1)));
        for (at, message) in found {
            errors.push(ConfigError { message, ..at });
        }
    }
}

/// `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`, any case.
pub fn parse_mac(s: &str) -> Result<[u8; 6], &'static str> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err("expected six hex octets like 02:00:00:00:00:17");
    }
    let mut mac = [0u8; 6];
    for (out, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return Err("expected six hex octets like 02:00:00:00:00:17");
        }
        *out = u8::from_str_radix(part, 16)
            .map_err(|_| "expected six hex octets like 02:00:00:00:00:17")?;
    }
    if mac == [0; 6] || mac[0] & 1 == 1 {
        return Err("not a unicast device address");
    }
    Ok(mac)
}

/// `10.0.1.0/24` or `fd00::/64`; host bits must be zero.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or("expected ADDRESS/PREFIX, like 10.0.1.0/24")?;
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("\"{addr}\" is not an IPv4 or IPv6 address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("prefix \"{len}\" is not a number"))?;
    let (max, offset) = if ip.is_ipv4() { (32, 96) } else { (128, 0) };
    if len > max {
        return Err(format!("prefix /{len} is longer than /{max}"));
    }
    let prefix = len + offset;
    let addr = mapped(ip);
    let masked = mask(&addr, prefix);
    if masked != addr {
        let net = match ip {
            IpAddr::V4(_) => IpAddr::from([masked[12], masked[13], masked[14], masked[15]]),
            IpAddr::V6(_) => IpAddr::from(masked),
        };
        return Err(format!("host bits are set; the network is {net}/{len}"));
    }
    Ok(Cidr { addr, prefix })
}

/// IPv4 as IPv4-mapped IPv6; IPv6 as is.
pub fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub(super) fn mask(addr: &[u8; 16], prefix: u8) -> [u8; 16] {
    let mut out = *addr;
    for (i, b) in out.iter_mut().enumerate() {
        let bits = (prefix as usize).saturating_sub(i * 8).min(8);
        *b &= if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
    out
}

/// Renders an IPv4-mapped or IPv6 address the way people write it.
pub fn display_addr(addr: &[u8; 16]) -> String {
    let v6 = std::net::Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => v6.to_string(),
    }
}
