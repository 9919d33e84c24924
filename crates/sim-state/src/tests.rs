use super::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn state_path(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "gpuslice-sim-test-{tag}-{}-{}",
        std::process::id(),
        Sim::now_ns()
    ));
    let _ = std::fs::remove_file(&p);
    p
}

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn sim(tag: &str, cfg: &str) -> (Sim, Tmp) {
    let p = state_path(tag);
    let s = Sim::open(&p, &parse_devices(cfg).unwrap()).unwrap();
    (s, Tmp(p))
}

/// Runs `f` in a forked child that reports one u64 through a pipe, then waits to be killed.
fn child_holding(f: impl FnOnce() -> u64) -> (libc::pid_t, u64) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let v = f();
        unsafe { libc::write(fds[1], (&v as *const u64).cast(), 8) };
        loop {
            unsafe { libc::pause() };
        }
    }
    let mut v = 0u64;
    assert_eq!(
        unsafe { libc::read(fds[0], (&mut v as *mut u64).cast(), 8) },
        8
    );
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1])
    };
    (pid, v)
}

fn kill(pid: libc::pid_t) {
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

#[test]
fn parses_configs() {
    let d = parse_devices("").unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].name, "NVIDIA H100 80GB HBM3");
    assert_eq!(d[0].memory_bytes, 80 * GIB);
    assert_eq!(d[0].sm_count, 132);
    assert_eq!(d[0].context_bytes, 256 * MIB);
    assert!(d[0].uuid.starts_with("GPU-5e1f0000-"));

    let d = parse_devices("count=2,memory=40GiB,sms=108,name=NVIDIA A100-SXM4-40GB").unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d[1].memory_bytes, 40 * GIB);
    assert_eq!(d[1].sm_count, 108);
    assert_eq!(d[1].name, "NVIDIA A100-SXM4-40GB");
    assert_ne!(d[0].uuid, d[1].uuid);
    assert_ne!(d[0].pci_bus_id, d[1].pci_bus_id);

    let d = parse_devices("memory=1073741824;memory=512MiB,context=16MiB").unwrap();
    assert_eq!(
        d.iter().map(|d| d.memory_bytes).collect::<Vec<_>>(),
        vec![GIB, 512 * MIB]
    );
    assert_eq!(d[1].context_bytes, 16 * MIB);

    for (bad, field) in [
        ("memory=lots", "memory"),
        ("count=0", "count"),
        ("sms=x", "sms"),
        ("colour=red", "colour"),
        ("memory", "memory"),
    ] {
        let e = parse_devices(bad).unwrap_err().to_string();
        assert!(e.contains(field), "{bad}: {e}");
    }
}

#[test]
fn second_opener_sees_the_first_devices() {
    let p = state_path("devices");
    let _t = Tmp(p.clone());
    let a = Sim::open(&p, &parse_devices("count=2,memory=8GiB").unwrap()).unwrap();
    let b = Sim::open(&p, &parse_devices("count=1,memory=1GiB").unwrap()).unwrap();
    assert_eq!(b.device_count(), 2);
    assert_eq!(b.spec(1), a.spec(1));
    assert_eq!(b.memory_total(0), 8 * GIB);
    let mode = std::fs::metadata(&p)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap();
    assert_eq!(mode & 0o777, 0o666);
}

#[test]
fn allocation_is_capped_at_device_memory() {
    let (s, _t) = sim("cap", "memory=1GiB,context=0");
    assert!(s.try_alloc(0, 600 * MIB));
    assert!(!s.try_alloc(0, 600 * MIB), "over the device size");
    assert_eq!(s.memory_used(0), 600 * MIB, "a refusal charges nothing");
    assert!(s.try_alloc(0, 424 * MIB));
    assert_eq!(s.memory_used(0), GIB);
    assert!(!s.try_alloc(0, 1));
    s.free(0, 600 * MIB);
    assert_eq!(s.memory_used(0), 424 * MIB);
    let ps = s.processes(0);
    assert_eq!(
        ps,
        vec![ProcessUsage {
            pid: std::process::id(),
            used_bytes: 424 * MIB
        }]
    );
}

#[test]
fn processes_share_the_device_and_a_killed_process_gives_memory_back() {
    let (s, _t) = sim("fork", "count=2,memory=1GiB,context=0");
    assert!(s.try_alloc(0, 100 * MIB));
    // The child inherits our handle but must charge its own slot.
    let (pid, child_slot) = child_holding(|| {
        assert!(s.try_alloc(0, 700 * MIB));
        assert!(
            !s.try_alloc(0, 300 * MIB),
            "parent's 100 MiB + 700 MiB + 300 MiB > 1 GiB"
        );
        assert!(s.try_alloc(1, 50 * MIB));
        s.current_slot().unwrap() as u64
    });
    assert_ne!(Some(child_slot as usize), s.current_slot());
    assert_eq!(s.memory_used(0), 800 * MIB);
    assert_eq!(s.memory_used(1), 50 * MIB);
    let mut ps = s.processes(0);
    ps.sort_by_key(|p| p.used_bytes);
    assert_eq!(
        ps,
        vec![
            ProcessUsage {
                pid: std::process::id(),
                used_bytes: 100 * MIB
            },
            ProcessUsage {
                pid: pid as u32,
                used_bytes: 700 * MIB
            },
        ]
    );
    assert!(
        !s.try_alloc(0, 300 * MIB),
        "the child is alive and holds its memory"
    );
    kill(pid);
    // Refusing would be wrong now: the allocation path reclaims before it says no.
    assert!(s.try_alloc(0, 300 * MIB));
    assert_eq!(s.memory_used(0), 400 * MIB);
    assert_eq!(s.memory_used(1), 0);
    assert_eq!(s.processes(0).len(), 1);
}

#[test]
fn processes_are_reported_by_their_real_pid() {
    let (s, _t) = sim("realpid", "memory=1GiB,context=0");
    let (pid, _) = child_holding(|| {
        assert!(s.try_alloc(0, 300 * MIB));
        // A process rewriting its slot's pid word cannot pass for another process.
        let slot = s.current_slot().unwrap();
        s.sh().slots[slot].pid.store(1, Ordering::SeqCst);
        0
    });
    assert_eq!(
        s.processes(0),
        vec![ProcessUsage {
            pid: pid as u32,
            used_bytes: 300 * MIB
        }]
    );
    kill(pid);
    assert!(s.processes(0).is_empty());
}

/// A process in a child PID namespace (as in a container) is reported by the pid the caller
/// sees (the host's, here), not by the pid it has in its own namespace.
#[test]
fn processes_in_another_pid_namespace_are_reported_by_the_callers_pid() {
    let (s, _t) = sim("pidns", "memory=1GiB,context=0");
    let (child, grandchild) = child_holding(|| {
        // SAFETY: plain syscalls in a freshly forked, single-threaded child.
        unsafe {
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID) != 0 {
                return 0;
            }
            let mut fds = [0; 2];
            libc::pipe(fds.as_mut_ptr());
            let pid = libc::fork();
            if pid == 0 {
                assert_eq!(std::process::id(), 1, "init of its own namespace");
                assert!(s.try_alloc(0, 200 * MIB));
                libc::write(fds[1], b"x".as_ptr().cast(), 1);
                loop {
                    libc::pause();
                }
            }
            let mut b = [0u8];
            libc::read(fds[0], b.as_mut_ptr().cast(), 1);
            pid as u64
        }
    });
    if grandchild == 0 {
        kill(child);
        eprintln!("skipped: no unprivileged user and PID namespaces here");
        return;
    }
    let got = s.processes(0);
    unsafe { libc::kill(grandchild as i32, libc::SIGKILL) };
    kill(child);
    assert_eq!(
        got,
        vec![ProcessUsage {
            pid: grandchild as u32,
            used_bytes: 200 * MIB
        }]
    );
}

#[test]
fn queries_reclaim_dead_processes() {
    let (s, _t) = sim("reclaim", "memory=1GiB,context=0");
    let (pid, _) = child_holding(|| s.try_alloc(0, 512 * MIB) as u64);
    // Another opener of the same file (a separate mapping) sees it too.
    let other = Sim::open(s.path(), &[]).err();
    assert!(
        other.is_some(),
        "an empty spec list is refused before touching the file"
    );
    assert_eq!(s.memory_used(0), 512 * MIB);
    kill(pid);
    assert_eq!(s.memory_used(0), 0);
    assert!(s.processes(0).is_empty());
}

#[test]
fn timeline_serializes_work() {
    let (s, _t) = sim("timeline", "");
    let t0 = Sim::now_ns();
    let e1 = s.run_busy(0, 0, 10_000_000);
    let e2 = s.run_busy(0, 0, 10_000_000);
    assert!(e1 >= t0 + 10_000_000);
    assert_eq!(e2, e1 + 10_000_000, "the second waits for the first");
    // Work that may not start before a later time leaves a gap.
    let e3 = s.run_busy(0, e2 + 5_000_000, 1_000_000);
    assert_eq!(e3, e2 + 6_000_000);
    assert_eq!(s.busy_until(0), e3);
    // Zero-length work does not touch the device.
    assert!(s.run_busy(0, 0, 0) < e3);
    assert_eq!(s.busy_until(0), e3);
}

#[test]
fn timeline_is_shared_across_processes() {
    let (s, _t) = sim("timeline-fork", "");
    let (pid, child_end) = child_holding(|| s.run_busy(0, 0, 50_000_000));
    let mine = s.run_busy(0, 0, 50_000_000);
    assert_eq!(
        mine,
        child_end + 50_000_000,
        "queued behind the other process's work"
    );
    kill(pid);
    while Sim::now_ns() < mine {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let busy = s.process_busy(0, 0);
    assert_eq!(busy.len(), 2);
    assert!(busy.iter().any(|b| b.0 == pid as u32));
}

#[test]
fn utilization_over_a_window() {
    let (s, _t) = sim("util", "");
    let t0 = Sim::now_ns();
    let e1 = s.run_busy(0, t0, 250_000_000);
    let e2 = s.run_busy(0, t0 + 500_000_000, 250_000_000);
    assert!(e1 - t0 < 250_000_000 + 5_000_000);
    assert_eq!(e2, t0 + 750_000_000);
    let end = t0 + 1_000_000_000;
    while Sim::now_ns() < end {
        std::thread::sleep(std::time::Duration::from_nanos(end - Sim::now_ns()));
    }
    let u = s.utilization(0, 1_000_000_000);
    assert!((u - 0.5).abs() <= 0.02, "utilisation {u}");
    let b = s.process_busy(0, t0);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].0, std::process::id());
    assert_eq!(b[0].1, 500_000_000);
    assert_eq!(b[0].2, e2);
    // Pending work counts only once it has run.
    let e = s.run_busy(0, 0, 200_000_000);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let u_now = s.utilization(0, 50_000_000);
    assert!(u_now > 0.9, "the device is busy right now: {u_now}");
    assert!(
        s.process_busy(0, e).is_empty(),
        "nothing has run after its end yet"
    );
}

#[test]
fn two_copies_in_one_process_keep_apart() {
    // As when libcuda and libnvidia-ml, each with its own copy of this crate, share a process.
    let (a, _t) = sim("twocopies", "memory=1GiB,context=0");
    let b = Sim::open(a.path(), &parse_devices("").unwrap()).unwrap();
    assert!(a.try_alloc(0, 100 * MIB));
    assert!(b.try_alloc(0, 200 * MIB));
    assert_ne!(a.current_slot(), b.current_slot());
    assert_eq!(b.reclaim_dead(), 0);
    assert_eq!(a.reclaim_dead(), 0);
    assert_eq!(a.memory_used(0), 300 * MIB);
    assert_eq!(b.memory_used(0), 300 * MIB);
    assert_eq!(
        a.processes(0),
        vec![ProcessUsage {
            pid: std::process::id(),
            used_bytes: 300 * MIB
        }]
    );
}

#[test]
fn mig_state_round_trips_and_is_shared() {
    let (a, tmp) = sim("mig", "count=2");
    let b = Sim::open(&tmp.0, &parse_devices("").unwrap()).unwrap();
    assert_eq!(a.mig(0), MigState::default());
    let want = MigState {
        enabled: true,
        serial: 7,
        gis: vec![
            MigGi {
                id: 1,
                profile_id: 9,
                start: 0,
                size: 4,
                cis: vec![MigCi {
                    id: 0,
                    profile_id: 2,
                    start: 0,
                    size: 3,
                    serial: 7,
                }],
            },
            MigGi {
                id: 13,
                profile_id: 19,
                start: 6,
                size: 1,
                cis: vec![],
            },
        ],
    };
    let w = want.clone();
    assert_eq!(
        a.mig_update(1, move |s| {
            *s = w;
            Ok::<_, ()>(())
        }),
        Ok(Ok(()))
    );
    assert_eq!(b.mig(1), want, "another attachment sees the commit");
    assert_eq!(b.mig(0), MigState::default(), "devices are separate");
    // A refused change commits nothing.
    assert_eq!(
        b.mig_update(1, |s| {
            s.gis.clear();
            Err::<(), _>("no")
        }),
        Ok(Err("no"))
    );
    assert_eq!(a.mig(1), want);
}

#[test]
fn a_writer_killed_mid_update_strands_nothing() {
    let (s, tmp) = sim("mig-kill", "");
    let path = tmp.0.clone();
    // The child takes the writer lock and stays inside the update until it is killed.
    let (pid, _) = child_holding(move || {
        let c: &'static Sim = Box::leak(Box::new(
            Sim::open(&path, &parse_devices("").unwrap()).unwrap(),
        ));
        std::thread::spawn(move || {
            c.mig_update(0, |st| {
                st.enabled = true;
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
                #[allow(unreachable_code)]
                Ok::<_, ()>(())
            })
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        0
    });
    // Writers here give up with MigBusy; readers go on.
    assert_eq!(s.mig(0), MigState::default());
    assert_eq!(s.mig_update(0, |_| Ok::<_, ()>(())), Err(MigBusy));
    kill(pid);
    assert_eq!(
        s.mig(0),
        MigState::default(),
        "the dead writer committed nothing"
    );
    assert_eq!(
        s.mig_update(0, |st| {
            st.enabled = true;
            Ok::<_, ()>(())
        }),
        Ok(Ok(()))
    );
    assert!(s.mig(0).enabled);
}

#[test]
fn events_reach_readers_in_other_processes_and_wake_waiters() {
    let (s, _t) = sim("events", "count=2");
    let uuid1 = s.spec(1).uuid;
    assert_eq!(s.device_by_uuid(&uuid1), Some(1));
    assert!(s.inject_xid("GPU-nope", 79).is_err());
    // Only what happens after a reader starts is its to see.
    s.inject_xid(&uuid1, 13).unwrap();
    let from = s.event_head(1);
    assert_eq!(s.events_since(1, from), (vec![], from));

    // A waiter here is woken by an event raised in another process.
    let seen = s.event_generation();
    let (pid, _) = child_holding(|| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        s.inject_ecc_dbe(&s.spec(1).uuid).unwrap()
    });
    let t0 = std::time::Instant::now();
    while s.event_head(1) == from {
        s.wait_events(seen, std::time::Duration::from_secs(10));
    }
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
    kill(pid);
    s.raise(
        1,
        GpuEvent::Xid {
            code: 94,
            gpu_instance: Some(1),
            compute_instance: Some(0),
        },
    );
    let (evs, next) = s.events_since(1, from);
    assert_eq!(
        evs,
        [
            GpuEvent::EccDoubleBit,
            GpuEvent::Xid {
                code: 94,
                gpu_instance: Some(1),
                compute_instance: Some(0)
            }
        ]
    );
    assert_eq!(next, from + 2);
    assert_eq!(s.events_since(0, s.event_head(0)).0, []);

    // A reader that falls a whole ring behind loses the oldest events, not the newest.
    for code in 0..(EVENT_RING as u64 + 5) {
        s.inject_xid(&uuid1, 1000 + code).unwrap();
    }
    let (evs, _) = s.events_since(1, next);
    assert_eq!(evs.len(), EVENT_RING);
    assert_eq!(
        evs.last(),
        Some(&GpuEvent::Xid {
            code: 1000 + EVENT_RING as u64 + 4,
            gpu_instance: None,
            compute_instance: None
        })
    );

    assert!(!s.is_lost(1));
    s.set_lost(1, true);
    assert!(s.is_lost(1) && !s.is_lost(0));
}

#[test]
fn shared_memory_stays_until_every_holder_lets_go_and_counts_once() {
    let (s, tmp) = sim("shared", "memory=4GiB");
    assert!(s.try_alloc(0, GIB));
    let h = s.share_export(0, GIB, 0).unwrap();
    assert_eq!(s.memory_used(0), GIB, "moved into the object, counted once");
    let me = std::process::id();
    assert_eq!(
        s.processes(0),
        vec![ProcessUsage {
            pid: me,
            used_bytes: GIB
        }],
        "attributed to the allocating process"
    );
    let path = tmp.0.clone();
    let specs = parse_devices("memory=4GiB").unwrap();
    let (pid, joined) = child_holding(move || {
        let c = Sim::open(&path, &specs).unwrap();
        let n = c.share_open(h).map(|i| i.bytes).unwrap_or(0);
        // Kept mapped: closing the file would give up the process's slot.
        std::mem::forget(c);
        n
    });
    assert_eq!(joined, GIB);
    assert_eq!(s.memory_used(0), GIB, "an importer adds nothing");
    s.share_release(h.index);
    assert_eq!(s.memory_used(0), GIB, "the importer keeps it alive");
    assert_eq!(
        s.processes(0),
        vec![ProcessUsage {
            pid: pid as u32,
            used_bytes: GIB
        }],
        "shown under the holder once the allocator let go"
    );
    assert!(s.share_open(h).is_ok(), "still live: it can be joined");
    s.share_release(h.index);
    kill(pid);
    assert_eq!(
        s.memory_used(0),
        0,
        "the last holder died: the memory is gone"
    );
    assert_eq!(s.share_open(h), Err(ShareError::Invalid));
    assert_eq!(s.share_lookup(h), Err(ShareError::Invalid));
}

#[test]
fn a_dead_exporter_leaves_shared_memory_to_its_importer() {
    let (s, tmp) = sim("shared-dead", "memory=4GiB");
    let specs = parse_devices("memory=4GiB").unwrap();
    let path = tmp.0.clone();
    let (pid, packed) = child_holding(move || {
        let c = Sim::open(&path, &specs).unwrap();
        assert!(c.try_alloc(0, 512 * MIB));
        let h = c.share_export(0, 512 * MIB, 42).unwrap();
        std::mem::forget(c);
        u64::from(h.index)
    });
    let info = s.share_find_ino(42).unwrap();
    assert_eq!(info.handle.index as u64, packed);
    s.share_open(info.handle).unwrap();
    kill(pid);
    assert_eq!(s.memory_used(0), 512 * MIB);
    assert_eq!(
        s.processes(0),
        vec![ProcessUsage {
            pid: std::process::id(),
            used_bytes: 512 * MIB
        }]
    );
    s.share_release(info.handle.index);
    assert_eq!(s.memory_used(0), 0);
}
