//! Device inventories: TOML files of `[[device]]` tables, or CSV files with a header row, each
//! row located for its errors.

use std::collections::HashMap;

use toml::Spanned;

use super::{
    ConfigError,
    locate::Locator,
    raw::{OneOrMany, RawDevice, RawInventory},
};

/// The columns an inventory in CSV may have (a header row names them, in any order).
const CSV_COLUMNS: &[&str] = &[
    "name",
    "mac",
    "ip",
    "cidr",
    "policy",
    "suspended",
    "imei",
    "mdn",
    "iccid",
    "nickname",
    "type",
    "notes",
];

/// The devices of an inventory file: CSV (by its `.csv` extension) or TOML.
pub(super) fn inventory_devices(
    text: &str,
    loc: &Locator<'_>,
) -> Result<Vec<RawDevice>, Vec<ConfigError>> {
    let is_csv = loc
        .file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if !is_csv {
        let raw: RawInventory = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            vec![loc.error(at, e.message().to_string())]
        })?;
        return Ok(raw.devices);
    }
    csv_devices(text, loc)
}

/// Byte offsets, within `line`, where each comma-separated field starts (quotes respected).
fn field_starts(line: &str) -> Vec<usize> {
    let mut starts = vec![0];
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => starts.push(i + 1),
            _ => {}
        }
    }
    starts
}

/// The devices of a CSV inventory: a header row naming the columns, then a device per row.
/// Several MACs, addresses or CIDRs in one cell are separated by spaces or `;`.
fn csv_devices(text: &str, loc: &Locator<'_>) -> Result<Vec<RawDevice>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let header_line = text.lines().next().unwrap_or("");
    let header_starts = field_starts(header_line);
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => return Err(vec![loc.error(0, format!("not CSV: {e}"))]),
    };
    let mut column: HashMap<&str, usize> = HashMap::new();
    for (i, h) in headers.iter().enumerate() {
        let at = header_starts.get(i).copied().unwrap_or(0);
        let h = h.trim();
        match CSV_COLUMNS.iter().find(|c| c.eq_ignore_ascii_case(h)) {
            Some(c) => {
                if column.insert(c, i).is_some() {
                    errors.push(loc.error(at, format!("column \"{h}\" appears twice")));
                }
            }
            None => errors.push(loc.error(
                at,
                format!(
                    "unknown column \"{h}\", expected one of {}",
                    CSV_COLUMNS.join(", ")
                ),
            )),
        }
    }
    for required in ["name", "policy"] {
        if !column.contains_key(required) {
            errors.push(loc.error(0, format!("the header row has no \"{required}\" column")));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut devices = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let at = e.position().map_or(0, |p| p.byte() as usize);
                errors.push(loc.error(at, format!("bad row: {e}")));
                continue;
            }
        };
        let Some(position) = record.position() else {
            continue;
        };
        let row_at = position.byte() as usize;
        let line = text
            .get(row_at..)
            .and_then(|t| t.lines().next())
            .unwrap_or("");
        let starts = field_starts(line);
        // The cell of `name` with its span in the file.
        let cell = |name: &str| -> Option<Spanned<String>> {
            let i = *column.get(name)?;
            let value = record.get(i)?.trim();
            if value.is_empty() {
                return None;
            }
            let at = row_at + starts.get(i).copied().unwrap_or(0);
            Some(Spanned::new(at..at + value.len(), value.to_string()))
        };
        let many = |name: &str| -> Option<Spanned<OneOrMany>> {
            let c = cell(name)?;
            let span = c.span();
            let items = c
                .get_ref()
                .split(|ch: char| ch == ';' || ch.is_whitespace())
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect();
            Some(Spanned::new(span, OneOrMany::Many(items)))
        };
        let Some(name) = cell("name") else {
            errors.push(loc.error(row_at, "a row without a name".to_string()));
            continue;
        };
        let Some(policy) = cell("policy") else {
            errors.push(loc.at(&name, format!("device \"{}\": no policy", name.get_ref())));
            continue;
        };
        let suspended = match cell("suspended") {
            None => false,
            Some(v) => match v.get_ref().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => true,
                "false" | "no" | "0" => false,
                other => {
                    errors.push(loc.at(
                        &v,
                        format!(
                            "device \"{}\": suspended \"{other}\" (expected true or false)",
                            name.get_ref()
                        ),
                    ));
                    continue;
                }
            },
        };
        let text_of = |n: &str| cell(n).map(Spanned::into_inner);
        devices.push(RawDevice {
            name,
            mac: many("mac"),
            ip: many("ip"),
            cidr: many("cidr"),
            policy,
            suspended,
            imei: text_of("imei"),
            mdn: text_of("mdn"),
            iccid: text_of("iccid"),
            nickname: text_of("nickname"),
            kind: text_of("type"),
            notes: text_of("notes"),
        });
    }
    if errors.is_empty() {
        Ok(devices)
    } else {
        Err(errors)
    }
}
