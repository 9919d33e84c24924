//! `gpuslice top`: per GPU and per tenant, the compute quota, the share achieved over the last
//! interval, priority, memory used against the cap, and time held back by the compute gate.
//! Reads the compute arbiter's status file and the tenants' ledgers; changes nothing. Shares and
//! throttled time are measured as the node agent's metrics measure them
//! (`gpuslice_node::usage::read`, `gpuslice_core::usage`).

use gpuslice_compute::policy;
use gpuslice_core::usage::Usage;
use gpuslice_ledger::{Ledger, format_uuid};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::install::{compute_dir, state_dir};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one frame (measured over one interval) and exit.
    #[arg(long)]
    once: bool,
    /// Seconds between frames; shares are measured over this interval.
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
    interval: f64,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=60.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "'{s}' is not an interval; accepted: seconds from 0.1 to 60, such as 1 or 0.5"
        )),
    }
}

#[derive(Default, Clone)]
struct TenantRow {
    name: String,
    processes: u32,
    quota: u8,
    priority: u8,
    holder: bool,
}

type Sample = BTreeMap<String, (Option<u8>, BTreeMap<u64, TenantRow>)>;

fn sample(dir: &Path) -> Sample {
    let mut out = Sample::new();
    for r in gpuslice_arbiter::status::read(&dir.join(gpuslice_arbiter::status::FILE)) {
        let hex: String = r.gpu.iter().map(|b| format!("{b:02x}")).collect();
        let e = out.entry(hex).or_insert((None, BTreeMap::new()));
        e.0 = Some(r.mode);
        let id = if r.ledger_id != 0 {
            r.ledger_id
        } else {
            r.tenant_id
        };
        let t = e.1.entry(id).or_default();
        t.name = r.name.clone();
        t.processes = r.processes;
        t.quota = r.quota;
        t.priority = r.priority;
        t.holder = r.holder;
    }
    out
}

/// Memory used and cap per (tenant id, GPU UUID hex), from the tenants' ledgers.
fn memory(state: &Path) -> BTreeMap<(u64, String), (u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(state.join("tenants")) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(l) = Ledger::open(&e.path().join("ledger")) else {
            continue;
        };
        for d in l.devices() {
            let hex: String = d.uuid.iter().map(|b| format!("{b:02x}")).collect();
            out.insert((l.tenant_id(), hex), (d.used, d.cap));
        }
    }
    out
}

fn gib(b: u64) -> String {
    format!("{:.2}", b as f64 / (1u64 << 30) as f64)
}

fn frame(state: &Path, usage: &Usage, after: &Sample) -> String {
    let mem = memory(state);
    let window = usage.window().cloned().unwrap_or_default();
    let mut s = String::new();
    if after.is_empty() {
        s.push_str("no tenant has launched work on any GPU\n");
    }
    for (hex, (mode, tenants)) in after {
        let uuid = gpuslice_ledger::parse_uuid(hex)
            .map(|u| format_uuid(&u))
            .unwrap_or(hex.clone());
        s.push_str(&format!(
            "{uuid}  mode {}  busy {:.1}%\n",
            mode.map_or("-", policy::mode_name),
            window.busy(&uuid) * 100.0
        ));
        s.push_str(&format!(
            "  {:<20} {:>8} {:>7} {:>6} {:>7} {:>17} {:>10}  {}\n",
            "TENANT", "PROCS", "PRIO", "QUOTA", "SHARE", "MEM USED/CAP GiB", "THROTTLED", "STATE"
        ));
        for (id, t) in tenants {
            let key = (*id, uuid.clone());
            let thr = window.by.get(&key).map_or(0, |t| t.throttled_ns);
            let (mu, mc) = mem.get(&(*id, hex.clone())).copied().unwrap_or((0, 0));
            let quota = if *mode == Some(policy::MODE_EQUAL) {
                "equal".to_string()
            } else if t.quota == 0 {
                "-".to_string()
            } else {
                format!("{}%", t.quota)
            };
            s.push_str(&format!(
                "  {:<20} {:>8} {:>7} {:>6} {:>6.1}% {:>17} {:>9.2}s  {}\n",
                t.name,
                t.processes,
                policy::priority_name(t.priority),
                quota,
                window.share(&key) * 100.0,
                format!("{}/{}", gib(mu), gib(mc)),
                thr as f64 / 1e9,
                if t.holder { "running" } else { "-" }
            ));
        }
    }
    s
}

/// The watchdog's latest actions, from the node agent's log in the state directory and each
/// `gpuslice run` tenant's.
fn watchdog_rows(state: &Path) -> String {
    use gpuslice_node::watchdog::{LOG_FILE, read_log};
    let mut logs = vec![state.join(LOG_FILE)];
    if let Ok(rd) = std::fs::read_dir(state.join("tenants")) {
        logs.extend(rd.flatten().map(|e| e.path().join(LOG_FILE)));
    }
    let mut recs: Vec<_> = logs.iter().flat_map(|p| read_log(p)).collect();
    if recs.is_empty() {
        return String::new();
    }
    recs.sort_by_key(|r| r.unix_ms);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut s = format!(
        "WATCHDOG  {:>8} {:<20} {:>8} {:<16} {:<7} {:>10} {:>17}  {}\n",
        "AGO", "TENANT", "PID", "REASON", "ACTION", "MEM MiB", "TENANT/CAP MiB", "GPU"
    );
    for r in recs.iter().rev().take(20).rev() {
        let mib = |b: u64| b >> 20;
        s.push_str(&format!(
            "          {:>7.1}s {:<20} {:>8} {:<16} {:<7} {:>10} {:>17}  {}\n",
            now.saturating_sub(r.unix_ms) as f64 / 1000.0,
            if r.tenant.is_empty() { "-" } else { &r.tenant },
            r.pid,
            r.reason,
            r.action,
            mib(r.used_bytes),
            format!("{}/{}", mib(r.tenant_used_bytes), mib(r.cap_bytes)),
            r.gpu
        ));
    }
    s
}

pub fn main(args: Args) -> i32 {
    let state = state_dir();
    let dir = compute_dir();
    let interval = Duration::from_secs_f64(args.interval);
    // Every reading closes a window: shares are over the last interval.
    let mut usage = Usage::new(0);
    let t0 = Instant::now();
    let observe = |u: &mut Usage| {
        let (readings, _) = gpuslice_node::usage::read(&dir);
        u.observe(t0.elapsed().as_nanos() as u64, readings);
    };
    observe(&mut usage);
    loop {
        std::thread::sleep(interval);
        observe(&mut usage);
        let after = sample(&dir);
        let f = frame(&state, &usage, &after) + &watchdog_rows(&state);
        if args.once {
            print!("{f}");
            return 0;
        }
        // Clear the screen and draw the frame from the top.
        print!("\x1b[H\x1b[2J{f}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
}
