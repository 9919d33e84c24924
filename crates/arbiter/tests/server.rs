//! The arbiter over its real sockets: registration, channels, turns, and what a hostile
//! process can and cannot do through its own channel.

use gpuslice_arbiter::server::{Handle, Options};
use gpuslice_arbiter::{Registration, Spec, listen};
use gpuslice_compute::page::{self, PageReader};
use gpuslice_compute::wire::{self, Msg};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gpuslice-arbiter-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spec(name: &str, quota: u8, mode: u8, priority: u8) -> Spec {
    Spec {
        name: name.into(),
        quota,
        mode,
        priority,
        ledger_id: 0,
    }
}

fn start(d: &std::path::Path) -> (Handle, PathBuf) {
    let sock = d.join("arbiter.sock");
    let l = listen(&sock, 0o666).unwrap();
    let h = Handle::spawn(
        Some(l),
        Options {
            status: Some(d.join("status")),
            linger: None,
        },
    )
    .unwrap();
    (h, sock)
}

/// Opens GPU `uuid` on channel `c`, returning its page.
fn open(c: &OwnedFd, uuid: [u8; 16]) -> PageReader {
    let (m, fds) = wire::call(c.as_raw_fd(), &Msg::Open { uuid }).unwrap();
    assert_eq!(m, Msg::Opened);
    PageReader::map(&fds[0]).unwrap()
}

fn state(p: &PageReader) -> u64 {
    page::state(p.page().word.load(Ordering::SeqCst))
}

fn wait_state(p: &PageReader, want: u64, what: &str) {
    let t = Instant::now();
    while state(p) != want {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{what}: state {}",
            state(p)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn turns_move_between_tenants_and_a_channel_cannot_lie_its_way_to_more() {
    let d = dir("turns");
    let (_h, sock) = start(&d);
    let a = Registration::register(&sock, &spec("a", 50, 0, 1)).unwrap();
    let b = Registration::register(&sock, &spec("b", 50, 0, 1)).unwrap();
    assert_ne!(a.tenant_id, b.tenant_id);
    let ca = a.attach().unwrap();
    let cb = b.attach().unwrap();
    let pa = open(&ca, [1; 16]);
    let pb = open(&cb, [1; 16]);
    assert_eq!(state(&pa), page::WAIT);
    wire::send_msg(ca.as_raw_fd(), &Msg::Want, &[]).unwrap();
    wait_state(&pa, page::GRANTED, "a alone is granted");
    assert_eq!(page::bound(pa.page().word.load(Ordering::SeqCst)), 0);
    wire::send_msg(cb.as_raw_fd(), &Msg::Want, &[]).unwrap();
    // At the slice's end a is revoked and b granted at once (its work queues behind a's drain).
    wait_state(&pa, page::REVOKED, "a is revoked at its slice's end");
    wait_state(&pb, page::GRANTED, "b starts at a's revoke");
    // b goes idle; a, still draining, gets no new turn until it has released.
    wire::send_msg(cb.as_raw_fd(), &Msg::Idle, &[]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(state(&pa), page::REVOKED, "no new turn before the release");
    let e = page::epoch(pa.page().word.load(Ordering::SeqCst));
    wire::send_msg(ca.as_raw_fd(), &Msg::Release { epoch: e }, &[]).unwrap();
    wait_state(
        &pa,
        page::GRANTED,
        "released and wanting: a gets the idle holder's GPU",
    );
    // Garbage closes only the sender's channel.
    wire::send(cb.as_raw_fd(), &[b"\xff\xff\xff\xffjunk"], &[]).unwrap();
    let t = Instant::now();
    loop {
        let mut p = libc::pollfd {
            fd: cb.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 10) };
        if p.revents & libc::POLLHUP != 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "garbage closes the channel"
        );
    }
    assert_eq!(state(&pa), page::GRANTED, "the other tenant keeps going");
    // A forged token attaches nothing.
    let c = wire::connect_path(&sock).unwrap();
    let (m, _) = wire::call(c.as_raw_fd(), &Msg::Attach { token: [0; 16] }).unwrap();
    assert!(
        matches!(
            m,
            Msg::Refused {
                code: wire::REFUSE_TOKEN,
                ..
            }
        ),
        "{m:?}"
    );
    // The status file names both tenants.
    std::thread::sleep(Duration::from_millis(500));
    let rows = gpuslice_arbiter::status::read(&d.join("status"));
    assert!(
        rows.iter().any(|r| r.name == "a" && r.charged_ns > 0),
        "{rows:?}"
    );
}

#[test]
fn a_conflicting_mode_is_refused_naming_both_and_a_closed_registration_ends_the_tenant() {
    let d = dir("mode");
    let (_h, sock) = start(&d);
    let a = Registration::register(&sock, &spec("a", 30, 1, 1)).unwrap();
    match Registration::register(&sock, &spec("b", 30, 2, 1)) {
        Err(gpuslice_arbiter::RegisterError::Refused { code, text }) => {
            assert_eq!(code, wire::REFUSE_MODE);
            assert!(
                text.contains("fixed")
                    && text.contains("equal")
                    && text.contains("one mode per GPU"),
                "{text}"
            );
        }
        other => panic!("{:?}", other.map(|r| r.tenant_id)),
    }
    let ca = a.attach().unwrap();
    let _pa = open(&ca, [2; 16]);
    drop(a);
    // The tenant is gone: its channel is closed and another mode may start.
    let t = Instant::now();
    loop {
        match Registration::register(&sock, &spec("b", 30, 2, 1)) {
            Ok(_) => break,
            Err(_) if t.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
}
