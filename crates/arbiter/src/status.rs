//! The arbiter's published figures: one text file only the arbiter writes (0644), replaced
//! whole by rename so a reader never sees half of it. One line per tenant and GPU:
//! `gpu=<32 hex> tenant=<id> ledger=<id> name=<name> quota=<0-100> mode=<code> priority=<code>
//!  charged_ns=<n> throttled_ns=<n> holder=<0|1> processes=<n>`.

use std::io::{self, Write};

/// The status file's name in the compute directory.
pub const FILE: &str = "status";
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub gpu: [u8; 16],
    pub tenant_id: u64,
    /// The id the tenant's ledger holds (0 if unknown), for joining to it.
    pub ledger_id: u64,
    pub name: String,
    pub quota: u8,
    pub mode: u8,
    pub priority: u8,
    /// GPU time charged to the tenant on this GPU since it first launched there.
    pub charged_ns: u64,
    /// Time it wanted the GPU while another tenant had it.
    pub throttled_ns: u64,
    pub holder: bool,
    pub processes: u32,
}

fn hex(u: &[u8; 16]) -> String {
    u.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut u = [0u8; 16];
    for (k, b) in u.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * k..2 * k + 2], 16).ok()?;
    }
    Some(u)
}

pub fn format(rows: &[Row]) -> String {
    let mut s = String::new();
    for r in rows {
        s.push_str(&format!(
            "gpu={} tenant={} ledger={} name={} quota={} mode={} priority={} charged_ns={} throttled_ns={} holder={} processes={}\n",
            hex(&r.gpu),
            r.tenant_id,
            r.ledger_id,
            r.name,
            r.quota,
            r.mode,
            r.priority,
            r.charged_ns,
            r.throttled_ns,
            u8::from(r.holder),
            r.processes
        ));
    }
    s
}

/// Parses a status file's text; lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|l| {
            let mut kv = std::collections::HashMap::new();
            for w in l.split_whitespace() {
                let (k, v) = w.split_once('=')?;
                kv.insert(k, v);
            }
            Some(Row {
                gpu: unhex(kv.get("gpu")?)?,
                tenant_id: kv.get("tenant")?.parse().ok()?,
                ledger_id: kv.get("ledger")?.parse().ok()?,
                name: kv.get("name")?.to_string(),
                quota: kv.get("quota")?.parse().ok()?,
                mode: kv.get("mode")?.parse().ok()?,
                priority: kv.get("priority")?.parse().ok()?,
                charged_ns: kv.get("charged_ns")?.parse().ok()?,
                throttled_ns: kv.get("throttled_ns")?.parse().ok()?,
                holder: *kv.get("holder")? == "1",
                processes: kv.get("processes")?.parse().ok()?,
            })
        })
        .collect()
}

pub fn write(path: &Path, rows: &[Row]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(format(rows).as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Reads the status file at `path`; empty if there is none.
pub fn read(path: &Path) -> Vec<Row> {
    std::fs::read_to_string(path)
        .map(|t| parse(&t))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let r = Row {
            gpu: [0xab; 16],
            tenant_id: 3,
            ledger_id: 77,
            name: "a30".into(),
            quota: 30,
            mode: 0,
            priority: 1,
            charged_ns: 123,
            throttled_ns: 45,
            holder: true,
            processes: 2,
        };
        assert_eq!(parse(&format(std::slice::from_ref(&r))), vec![r]);
        assert!(parse("garbage\ngpu=zz tenant=1").is_empty());
    }
}
