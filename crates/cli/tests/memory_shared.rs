//! Memory that crosses processes stays charged for as long as the device holds it: IPC memory
//! handles and VMM shareable handles, within a tenant and across tenants, with exporters and
//! importers SIGKILLed at every point. Each tenant runs `gpuslice-probe share-agent`s under
//! `gpuslice run`; after every step the tenant's ledger (read from its file, dead processes
//! reclaimed as the supervisor does) is compared with what the simulated device says the
//! tenant's live processes hold (NVML's per-process accounting, past the interposer).

mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

struct Agent {
    sock: PathBuf,
    pid: u32,
}

impl Agent {
    fn cmd(&self, line: &str) -> Value {
        let mut s = UnixStream::connect(&self.sock)
            .unwrap_or_else(|e| panic!("{}: {e}", self.sock.display()));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut out = String::new();
        BufReader::new(&s).read_line(&mut out).unwrap();
        serde_json::from_str(&out).unwrap_or_else(|_| panic!("{line}: {out:?}"))
    }

    fn r(&self, line: &str) -> u64 {
        u(&self.cmd(line), "r")
    }

    fn kill(&self) {
        // SAFETY: signals a process this test started (through `gpuslice run`).
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(30);
        // Dead once it is gone or a zombie: the kernel has released its locks by then.
        loop {
            let st = std::fs::read_to_string(format!("/proc/{}/stat", self.pid));
            match st {
                Err(_) => return,
                Ok(s)
                    if s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z') =>
                {
                    return;
                }
                _ => {}
            }
            assert!(Instant::now() < deadline, "{} did not die", self.pid);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

struct Tenant {
    name: String,
    child: Child,
    agents: Vec<Agent>,
}

impl Drop for Tenant {
    fn drop(&mut self) {
        for a in &self.agents {
            // SAFETY: as in `Agent::kill`.
            unsafe { libc::kill(a.pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

/// A tenant capped at `cap` whose command runs `n` agents.
fn tenant(m: &Machine, name: &str, cap: &str, n: usize) -> Tenant {
    let p = probe();
    let socks: Vec<PathBuf> = (0..n)
        .map(|i| m.dir.join(format!("{name}-{i}.sock")))
        .collect();
    let script: String = socks
        .iter()
        .map(|s| format!("'{p}' share-agent '{}' & ", s.display()))
        .collect::<String>()
        + "wait";
    let child = m.tenant(name, cap, &["sh", "-c", &script]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let agents = socks
        .into_iter()
        .map(|sock| {
            while !sock.exists() {
                assert!(
                    Instant::now() < deadline,
                    "{} never listened",
                    sock.display()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let mut a = Agent { sock, pid: 0 };
            a.pid = u(&a.cmd("pid"), "pid") as u32;
            a
        })
        .collect();
    Tenant {
        name: name.into(),
        child,
        agents,
    }
}

fn sim(m: &Machine) -> gpuslice_sim_state::Sim {
    let specs = gpuslice_sim_state::parse_devices("").unwrap();
    gpuslice_sim_state::Sim::open(&m.dir.join("sim-gpu"), &specs).unwrap()
}

/// (ledger, device) for tenant `t`: the ledger's charge after reclaiming dead processes, and
/// what the device reports for the tenant's live processes.
fn charge(m: &Machine, s: &gpuslice_sim_state::Sim, t: &Tenant) -> (u64, u64) {
    let l = m.ledger(&t.name).expect("ledger");
    l.reclaim_dead(None);
    let ledger = l.devices().iter().map(|d| d.used).sum();
    let pids = l.live_pids();
    let device = s
        .processes(0)
        .iter()
        .filter(|p| pids.contains(&p.pid))
        .map(|p| p.used_bytes)
        .sum();
    (ledger, device)
}

/// The ledger equals the device and stays within `cap`; returns the charge.
fn exact(m: &Machine, s: &gpuslice_sim_state::Sim, t: &Tenant, cap: u64, at: &str) -> u64 {
    let (l, d) = charge(m, s, t);
    assert_eq!(
        l, d,
        "{}: the ledger disagrees with the device at {at}",
        t.name
    );
    assert!(
        d <= cap,
        "{}: the device passed the cap at {at}: {d}",
        t.name
    );
    l
}

#[test]
fn ipc_memory_is_charged_once_within_a_tenant_and_released_with_its_last_holder() {
    let m = Machine::new("shared-ipc");
    let s = sim(&m);
    let t = tenant(&m, "ipc", "1GiB", 2);
    let (a, b) = (&t.agents[0], &t.agents[1]);
    let base = exact(&m, &s, &t, GIB, "start");
    assert_eq!(base, 2 * CTX);
    let p = u(&a.cmd(&format!("alloc {}", 512 * MIB)), "ptr");
    assert_eq!(exact(&m, &s, &t, GIB, "alloc"), base + 512 * MIB);
    let got = a.cmd(&format!("ipc-get {p}"));
    assert_eq!(u(&got, "r"), 0, "{got}");
    let h = got["handle"].as_str().unwrap().to_string();
    assert_eq!(exact(&m, &s, &t, GIB, "export"), base + 512 * MIB);
    assert_eq!(
        a.r(&format!("ipc-open {h}")),
        201,
        "own handle: invalid context"
    );
    let opened = b.cmd(&format!("ipc-open {h}"));
    assert_eq!(u(&opened, "r"), 0, "{opened}");
    let q = u(&opened, "ptr");
    assert_eq!(
        exact(&m, &s, &t, GIB, "import"),
        base + 512 * MIB,
        "an importer of the same tenant is not charged again"
    );
    let again = b.cmd(&format!("ipc-open {h}"));
    assert_eq!((u(&again, "r"), u(&again, "ptr")), (0, q), "{again}");
    assert_eq!(
        a.r(&format!("alloc {}", 512 * MIB)),
        2,
        "the shared memory fills the cap"
    );
    assert_eq!(a.r(&format!("free {p}")), 0);
    assert_eq!(
        exact(&m, &s, &t, GIB, "exporter freed"),
        base + 512 * MIB,
        "the importer keeps the memory on the device, so the tenant keeps paying"
    );
    assert_eq!(a.r(&format!("alloc {}", 512 * MIB)), 2, "still full");
    assert_eq!(b.r(&format!("ipc-close {q}")), 0);
    assert_eq!(exact(&m, &s, &t, GIB, "first close"), base + 512 * MIB);
    assert_eq!(b.r(&format!("ipc-close {q}")), 0);
    assert_eq!(exact(&m, &s, &t, GIB, "last close"), base);
    assert_eq!(
        b.r(&format!("ipc-close {q}")),
        1,
        "closing twice is an error"
    );
    assert_eq!(b.r(&format!("ipc-open {h}")), 1, "the memory is gone");
    assert_eq!(exact(&m, &s, &t, GIB, "end"), base);
}

#[test]
fn a_killed_exporter_cannot_hand_its_memory_back_to_the_tenant() {
    // The escape: allocate to the cap, export, let another process hold it, die, repeat.
    let m = Machine::new("shared-escape");
    let s = sim(&m);
    let cap = 4 * GIB;
    let t = tenant(&m, "escape", "4GiB", 4);
    let holder = &t.agents[3];
    let base = exact(&m, &s, &t, cap, "start");
    assert_eq!(base, 4 * CTX);
    let size = 3 * GIB;
    let mut held = Vec::new();
    for (i, a) in t.agents[..3].iter().enumerate() {
        let got = a.cmd(&format!("alloc {size}"));
        if i > 0 {
            assert_eq!(u(&got, "r"), 2, "round {i}: the cap is still held: {got}");
            continue;
        }
        assert_eq!(u(&got, "r"), 0, "{got}");
        let h = a.cmd(&format!("ipc-get {}", u(&got, "ptr")));
        let opened = holder.cmd(&format!("ipc-open {}", h["handle"].as_str().unwrap()));
        assert_eq!(u(&opened, "r"), 0, "{opened}");
        held.push(u(&opened, "ptr"));
        exact(&m, &s, &t, cap, "held by two");
        a.kill();
        assert_eq!(
            exact(&m, &s, &t, cap, "exporter killed"),
            3 * CTX + size,
            "the dead exporter's memory stays charged while the holder keeps it"
        );
    }
    assert!(
        s.memory_used(0) <= cap,
        "the device never holds more than the cap"
    );
    assert_eq!(holder.r(&format!("ipc-close {}", held[0])), 0);
    assert_eq!(exact(&m, &s, &t, cap, "holder closed"), 3 * CTX);
}

#[test]
fn a_killed_importer_lets_go_whoever_allocated_the_memory() {
    let m = Machine::new("shared-killed-importer");
    let s = sim(&m);
    let t = tenant(&m, "imp", "1GiB", 3);
    let (a, b, c) = (&t.agents[0], &t.agents[1], &t.agents[2]);
    let base = exact(&m, &s, &t, GIB, "start");
    // Killed while the exporter still holds it: the exporter keeps paying.
    let p = u(&a.cmd(&format!("alloc {}", 256 * MIB)), "ptr");
    let h = a.cmd(&format!("ipc-get {p}"))["handle"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(b.r(&format!("ipc-open {h}")), 0);
    b.kill();
    assert_eq!(
        exact(&m, &s, &t, GIB, "importer killed"),
        base - CTX + 256 * MIB
    );
    // Killed after the exporter let go: the memory leaves the device and the ledger with it.
    assert_eq!(c.r(&format!("ipc-open {h}")), 0);
    assert_eq!(a.r(&format!("free {p}")), 0);
    assert_eq!(
        exact(&m, &s, &t, GIB, "exporter freed"),
        base - CTX + 256 * MIB,
        "the importer holds it"
    );
    c.kill();
    assert_eq!(exact(&m, &s, &t, GIB, "last holder killed"), CTX);
}

#[test]
fn another_tenants_import_is_charged_to_the_importer_and_refused_over_its_cap() {
    let m = Machine::new("shared-cross");
    let s = sim(&m);
    let ta = tenant(&m, "owner", "2GiB", 1);
    let tb = tenant(&m, "taker", "1GiB", 1);
    let (a, b) = (&ta.agents[0], &tb.agents[0]);
    let big = u(&a.cmd(&format!("alloc {GIB}")), "ptr");
    let hbig = a.cmd(&format!("ipc-get {big}"))["handle"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        b.r(&format!("ipc-open {hbig}")),
        2,
        "1 GiB does not fit beside the importer's context under its 1 GiB cap"
    );
    assert_eq!(exact(&m, &s, &tb, GIB, "refused"), CTX, "nothing leaks");
    let small = u(&a.cmd(&format!("alloc {}", 512 * MIB)), "ptr");
    let hsmall = a.cmd(&format!("ipc-get {small}"))["handle"]
        .as_str()
        .unwrap()
        .to_string();
    let opened = b.cmd(&format!("ipc-open {hsmall}"));
    assert_eq!(u(&opened, "r"), 0, "{opened}");
    // Fail closed: while the owner holds it too, both tenants pay (the device shows it under
    // the allocating process).
    let (lb, db) = charge(&m, &s, &tb);
    assert_eq!(
        (lb, db),
        (CTX + 512 * MIB, CTX),
        "the importer pays in full"
    );
    assert_eq!(exact(&m, &s, &ta, 2 * GIB, "owner"), CTX + GIB + 512 * MIB);
    // The owner's tenant ends: the memory stays on the device, held by the other tenant.
    a.kill();
    assert_eq!(
        exact(&m, &s, &tb, GIB, "owner gone"),
        CTX + 512 * MIB,
        "the memory is the importer's now, on the device and in its ledger"
    );
    assert_eq!(
        s.memory_used(0),
        CTX + 512 * MIB,
        "only the importer's is left"
    );
    assert_eq!(b.r(&format!("ipc-close {}", u(&opened, "ptr"))), 0);
    assert_eq!(exact(&m, &s, &tb, GIB, "closed"), CTX);
    assert_eq!(s.memory_used(0), CTX);
}

/// A shareable descriptor names neither the allocation nor its size (a real driver's is an open
/// file of its device node), so each importing process pays for the whole allocation, sized by
/// the driver itself, until it lets go of its handle and mappings.
#[test]
fn vmm_shareable_imports_are_charged_to_each_holder_until_it_lets_go() {
    let m = Machine::new("shared-vmm");
    let s = sim(&m);
    let t = tenant(&m, "vmm", "1GiB", 2);
    let (a, b) = (&t.agents[0], &t.agents[1]);
    // Not a power of two of the granularity, so that the measured size cannot be right by luck.
    let size = 130 * MIB;
    let h = u(&a.cmd(&format!("vmm-create {size}")), "handle");
    assert_eq!(a.r(&format!("vmm-export {h}")), 0);
    assert_eq!(exact(&m, &s, &t, GIB, "export"), 2 * CTX + size);
    let imported = b.cmd(&format!("vmm-import {}", a.sock.display()));
    assert_eq!(u(&imported, "r"), 0, "{imported}");
    let hb = u(&imported, "handle");
    assert_eq!(
        charge(&m, &s, &t),
        (2 * CTX + 2 * size, 2 * CTX + size),
        "the importer pays the allocation's size, measured from the driver"
    );
    let mapped = b.cmd(&format!("vmm-map {hb} {size}"));
    assert_eq!(u(&mapped, "r"), 0, "{mapped}");
    assert_eq!(a.r(&format!("vmm-release {h}")), 0);
    assert_eq!(
        exact(&m, &s, &t, GIB, "exporter released"),
        2 * CTX + size,
        "the exporter's charge leaves with its handle"
    );
    assert_eq!(b.r(&format!("vmm-release {hb}")), 0);
    assert_eq!(
        exact(&m, &s, &t, GIB, "released, still mapped"),
        2 * CTX + size,
        "a mapping keeps the memory"
    );
    assert_eq!(
        a.r(&format!("alloc {}", 512 * MIB)),
        2,
        "the cap is still held"
    );
    b.kill();
    assert_eq!(exact(&m, &s, &t, GIB, "mapper killed"), CTX);
    assert_eq!(a.r(&format!("alloc {}", 512 * MIB)), 0);
}

#[test]
fn a_vmm_import_over_the_cap_is_refused_and_leaks_nothing() {
    let m = Machine::new("shared-vmm-cap");
    let s = sim(&m);
    let ta = tenant(&m, "big", "2GiB", 1);
    let tb = tenant(&m, "small", "1GiB", 1);
    let (a, b) = (&ta.agents[0], &tb.agents[0]);
    let h = u(&a.cmd(&format!("vmm-create {GIB}")), "handle");
    assert_eq!(a.r(&format!("vmm-export {h}")), 0);
    let got = b.cmd(&format!("vmm-import {}", a.sock.display()));
    assert_eq!(u(&got, "r"), 2, "{got}");
    assert_eq!(exact(&m, &s, &tb, GIB, "refused"), CTX);
    assert_eq!(exact(&m, &s, &ta, 2 * GIB, "owner"), CTX + GIB);
    assert_eq!(a.r(&format!("vmm-release {h}")), 0);
    assert_eq!(
        s.memory_used(0),
        2 * CTX,
        "the refused import holds nothing on the device"
    );
}
