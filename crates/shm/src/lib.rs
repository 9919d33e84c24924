//! Lock-free shared-memory primitives, and the Unix sockets that pass descriptors of them
//! ([`sock`]).
//!
//! Everything that several processes share in gpuslice (a tenant's ledger, the simulated GPU)
//! is a file mapped `MAP_SHARED` and updated only with atomics. Three pieces:
//!
//! * [`MappedFile`]: a file created fully initialised (written aside, then `link`ed into place,
//!   so no reader ever sees a half-made region) and mapped read-write.
//! * Process slots ([`MappedFile::claim_slot`], [`MappedFile::slot_is_live`]): a process owns slot
//!   `i` while it holds a POSIX record lock on byte `LOCK_BASE + i` of the file. The kernel drops
//!   that lock when the process dies, however it dies, and a forked child does not inherit it.
//!   Liveness therefore needs no PIDs (which differ across PID namespaces) and no lock that a
//!   SIGKILL can strand: every lock operation here is non-blocking.
//! * [`Counter`] and [`try_reserve`]: capacity accounting where each process charges only its own
//!   slot and the total is the sum over slots. A dead process's charge is exactly its slot, so
//!   reclaiming it is a plain reset with no ambiguity about half-finished updates.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod sock;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Record locks that mark slot ownership live far beyond any data, so they never overlap it.
const LOCK_BASE: i64 = 1 << 40;

/// A shared, writable mapping of a whole file. The descriptor stays open for the mapping's
/// life: closing any descriptor of the file would drop this process's slot locks on it.
pub struct MappedFile {
    ptr: *mut u8,
    len: usize,
    fd: libc::c_int,
    path: PathBuf,
}

// The mapping is plain shared memory accessed through atomics.
unsafe impl Send for MappedFile {}
unsafe impl Sync for MappedFile {}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl MappedFile {
    /// Opens an existing file and maps all of it. Fails if it is shorter than `min_len`.
    pub fn open(path: &Path, min_len: usize) -> io::Result<Self> {
        let c = cpath(path)?;
        // SAFETY: `c` is a NUL-terminated path; the result is checked.
        let fd = cvt(unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
        // SAFETY: `fd` was just opened and nothing else owns it.
        Self::from_fd(unsafe { OwnedFd::from_raw_fd(fd) }, min_len, path)
    }

    /// Maps all of the file behind `fd`, which the mapping then owns (a descriptor handed over by
    /// the tenant's authority, or opened by path). `label` names it in messages. Fails if the
    /// file is shorter than `min_len`.
    pub fn from_fd(fd: OwnedFd, min_len: usize, label: &Path) -> io::Result<Self> {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is an open descriptor and `st` is a valid out-pointer.
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
        let len = st.st_size as usize;
        if len < min_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is {len} bytes, expected at least {min_len}",
                    label.display()
                ),
            ));
        }
        Self::map(fd.into_raw_fd(), len, label)
    }

    /// Opens `path`, or creates it with `len` zeroed bytes passed through `init` first. Creation
    /// is atomic: the file appears under `path` only once `init` has run, and when several
    /// processes race, exactly one file wins and everybody maps that one.
    pub fn open_or_create(
        path: &Path,
        len: usize,
        mode: u32,
        init: impl FnOnce(&Self),
    ) -> io::Result<Self> {
        match Self::open(path, len) {
            Ok(m) => return Ok(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let nonce = unique_nonce();
        let tmp = dir.join(format!(".{name}.{}.{nonce:x}.tmp", std::process::id()));
        let ctmp = cpath(&tmp)?;
        let fd = cvt(unsafe {
            libc::open(
                ctmp.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })?;
        // The umask must not narrow a region meant for several users.
        unsafe { libc::fchmod(fd, mode as libc::mode_t) };
        if let Err(e) = cvt(unsafe { libc::ftruncate(fd, len as libc::off_t) }) {
            unsafe {
                libc::close(fd);
                libc::unlink(ctmp.as_ptr())
            };
            return Err(e);
        }
        let m = match Self::map(fd, len, path) {
            Ok(m) => m,
            Err(e) => {
                unsafe { libc::unlink(ctmp.as_ptr()) };
                return Err(e);
            }
        };
        init(&m);
        let cfinal = cpath(path)?;
        let linked = unsafe { libc::link(ctmp.as_ptr(), cfinal.as_ptr()) };
        let link_err = io::Error::last_os_error();
        unsafe { libc::unlink(ctmp.as_ptr()) };
        if linked == 0 {
            return Ok(m);
        }
        drop(m);
        if link_err.raw_os_error() == Some(libc::EEXIST) {
            return Self::open(path, len);
        }
        Err(link_err)
    }

    fn map(fd: libc::c_int, len: usize, path: &Path) -> io::Result<Self> {
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            unsafe { libc::close(fd) };
            return Err(e);
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// A reference to a `T` at `offset`.
    ///
    /// # Safety
    /// `T` must be valid for any bit pattern the region may hold (atomics and plain integers),
    /// `offset` must be aligned for `T`, and `offset + size_of::<T>()` must lie inside the map.
    pub unsafe fn at<T>(&self, offset: usize) -> &T {
        assert!(
            offset + std::mem::size_of::<T>() <= self.len,
            "shared region too small"
        );
        assert_eq!(
            offset % std::mem::align_of::<T>(),
            0,
            "misaligned shared object"
        );
        unsafe { &*(self.ptr.add(offset) as *const T) }
    }

    fn lock_op(&self, slot: usize, kind: libc::c_short) -> io::Result<bool> {
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = LOCK_BASE + slot as i64;
        fl.l_len = 1;
        loop {
            let r = unsafe { libc::fcntl(self.fd, libc::F_SETLK, &fl) };
            if r == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::EACCES) => return Ok(false),
                _ => return Err(e),
            }
        }
    }

    /// Tries to take slot `slot` for this process; `true` if it is now ours. Never blocks.
    /// Taking a slot this process already holds also answers `true`: callers skip their own.
    pub fn claim_slot(&self, slot: usize) -> io::Result<bool> {
        self.lock_op(slot, libc::F_WRLCK as libc::c_short)
    }

    /// Gives slot `slot` back.
    pub fn release_slot(&self, slot: usize) -> io::Result<()> {
        self.lock_op(slot, libc::F_UNLCK as libc::c_short)
            .map(|_| ())
    }

    /// Whether some *other* live process holds slot `slot`. Never blocks.
    pub fn slot_is_live(&self, slot: usize) -> io::Result<bool> {
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = LOCK_BASE + slot as i64;
        fl.l_len = 1;
        cvt(unsafe { libc::fcntl(self.fd, libc::F_GETLK, &mut fl) })?;
        Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
    }

    /// The pid of the *other* live process holding slot `slot`, as the kernel reports it: in the
    /// caller's PID namespace, or 0 when the holder is not visible there. `None` when no other
    /// process holds it. Unlike a pid a process writes into shared memory, this cannot be forged.
    pub fn slot_holder(&self, slot: usize) -> io::Result<Option<u32>> {
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = LOCK_BASE + slot as i64;
        fl.l_len = 1;
        // SAFETY: `fl` is a valid flock the kernel fills in; the descriptor is ours and open.
        cvt(unsafe { libc::fcntl(self.fd, libc::F_GETLK, &mut fl) })?;
        if fl.l_type == libc::F_UNLCK as libc::c_short {
            return Ok(None);
        }
        Ok(Some(fl.l_pid.max(0) as u32))
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        unsafe {
            libc::munmap(self.ptr.cast(), self.len.max(1));
            libc::close(self.fd);
        }
    }
}

fn unique_nonce() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_007)
        ^ ts.tv_nsec as u64
        ^ ((&ts as *const _ as u64) << 20)
}

/// A random 64-bit value for ids (not for secrets): clock, pid and ASLR mixed.
pub fn random_u64() -> u64 {
    let mut x = unique_nonce() ^ (std::process::id() as u64).rotate_left(40);
    // splitmix64 finaliser
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One process's charge against a shared capacity: what it holds, and what it is in the middle
/// of claiming. Only the owning process (or a reclaimer, once the owner is dead) writes it.
#[repr(C)]
#[derive(Default, Debug)]
pub struct Counter {
    pub held: AtomicU64,
    pub claiming: AtomicU64,
}

impl Counter {
    /// Everything this counter charges, in-flight claims included.
    pub fn charged(&self) -> u64 {
        self.held
            .load(Ordering::SeqCst)
            .saturating_add(self.claiming.load(Ordering::SeqCst))
    }

    /// Gives back `n` of what this counter holds; never goes below zero.
    pub fn release(&self, n: u64) {
        let _ = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                Some(h.saturating_sub(n))
            });
    }

    /// Adds `n` unconditionally (for charges that are facts, not requests).
    pub fn add(&self, n: u64) {
        self.held.fetch_add(n, Ordering::SeqCst);
    }

    /// Drops everything: only for a reclaimer that owns the dead process's slot.
    pub fn reset(&self) -> u64 {
        let h = self.held.swap(0, Ordering::SeqCst);
        let c = self.claiming.swap(0, Ordering::SeqCst);
        h.saturating_add(c)
    }
}

/// What [`try_reserve`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// `n` now counts in `mine.held`; `total` is the sum the grant was checked against, `n`
    /// included (for high-water marks, without summing again).
    Granted { total: u64 },
    /// Granting would exceed the capacity; `used` is what the others held (settled claims only).
    Refused { used: u64 },
}

/// Sum of every counter's charge.
pub fn total<'a>(all: impl IntoIterator<Item = &'a Counter>) -> u64 {
    all.into_iter()
        .fold(0u64, |s, c| s.saturating_add(c.charged()))
}

/// Charges `n` to `mine` if the sum over `all` (which includes `mine`) stays within `capacity`.
///
/// The claim is published first and the total read afterwards (all SeqCst): of two racing
/// claims, the one whose read comes later sees both, so together they can never pass the
/// capacity. Two claims that each fit alone may momentarily see each other and both back off;
/// such a refusal is retried briefly, so only a real shortage is reported.
pub fn try_reserve<'a, F, I>(mine: &Counter, all: F, capacity: u64, n: u64) -> Reservation
where
    F: Fn() -> I,
    I: IntoIterator<Item = &'a Counter>,
{
    const RETRIES: u32 = 64;
    for attempt in 0..=RETRIES {
        mine.claiming.fetch_add(n, Ordering::SeqCst);
        let sum = total(all());
        if sum <= capacity {
            // Held first, then the claim withdrawn: a reader in between over-counts, never under.
            mine.held.fetch_add(n, Ordering::SeqCst);
            mine.claiming.fetch_sub(n, Ordering::SeqCst);
            return Reservation::Granted { total: sum };
        }
        mine.claiming.fetch_sub(n, Ordering::SeqCst);
        let settled: u64 = all()
            .into_iter()
            .fold(0u64, |s, c| s.saturating_add(c.held.load(Ordering::SeqCst)));
        let in_flight = sum.saturating_sub(settled).saturating_sub(n);
        if settled.saturating_add(n) > capacity || in_flight == 0 || attempt == RETRIES {
            return Reservation::Refused { used: settled };
        }
        // Someone else's claim is in flight and we might fit without it: let it settle.
        if attempt < 8 {
            std::hint::spin_loop()
        } else {
            std::thread::yield_now()
        }
    }
    unreachable!()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "gpuslice-shm-test-{}-{:x}",
            std::process::id(),
            unique_nonce()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn create_is_atomic_and_shared() {
        let d = tmpdir();
        let p = d.join("region");
        let a = MappedFile::open_or_create(&p, 4096, 0o600, |m| {
            unsafe { m.at::<AtomicU64>(0) }.store(7, Ordering::SeqCst)
        })
        .unwrap();
        let b = MappedFile::open_or_create(&p, 4096, 0o600, |_| {
            panic!("second creator must not initialise")
        })
        .unwrap();
        unsafe { b.at::<AtomicU64>(8) }.store(9, Ordering::SeqCst);
        assert_eq!(unsafe { a.at::<AtomicU64>(0) }.load(Ordering::SeqCst), 7);
        assert_eq!(unsafe { a.at::<AtomicU64>(8) }.load(Ordering::SeqCst), 9);
        assert!(
            MappedFile::open(&p, 8192).is_err(),
            "a short file is refused"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != "region")
            .collect();
        assert!(leftovers.is_empty(), "no temporary files remain");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn reservations_never_exceed_capacity_under_threads() {
        let counters: Arc<Vec<Counter>> = Arc::new((0..8).map(|_| Counter::default()).collect());
        let cap = 1000;
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let cs = counters.clone();
                std::thread::spawn(move || {
                    let mut got = 0;
                    for _ in 0..10_000 {
                        if matches!(
                            try_reserve(&cs[i], || cs.iter(), cap, 7),
                            Reservation::Granted { .. }
                        ) {
                            got += 7;
                            assert!(total(cs.iter()) <= cap + 8 * 7, "in-flight claims bounded");
                            if got > 70 {
                                cs[i].release(7);
                                got -= 7;
                            }
                        }
                    }
                    got
                })
            })
            .collect();
        let held: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert!(held <= cap);
        assert_eq!(total(counters.iter()), held);
    }

    #[test]
    fn last_bytes_go_to_exactly_one_racer() {
        for _ in 0..200 {
            let cs: Arc<Vec<Counter>> = Arc::new((0..4).map(|_| Counter::default()).collect());
            let barrier = Arc::new(std::sync::Barrier::new(4));
            let hs: Vec<_> = (0..4)
                .map(|i| {
                    let (cs, b) = (cs.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        b.wait();
                        matches!(
                            try_reserve(&cs[i], || cs.iter(), 100, 100),
                            Reservation::Granted { .. }
                        )
                    })
                })
                .collect();
            let wins = hs
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|&w| w)
                .count();
            assert_eq!(
                wins, 1,
                "the capacity fits exactly one claim, and one must get it"
            );
        }
    }

    #[test]
    fn release_saturates() {
        let c = Counter::default();
        c.add(5);
        c.release(9);
        assert_eq!(c.charged(), 0);
    }

    #[test]
    fn slot_liveness_follows_the_owning_process() {
        let d = tmpdir();
        let p = d.join("slots");
        let m = MappedFile::open_or_create(&p, 4096, 0o600, |_| {}).unwrap();
        assert!(!m.slot_is_live(3).unwrap());
        // A child takes slot 3, reports, then waits to be killed.
        let mut fds = [0; 2];
        unsafe { libc::pipe(fds.as_mut_ptr()) };
        let (rd, wr) = (fds[0], fds[1]);
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let child = MappedFile::open(&p, 4096).unwrap();
            let ok = child.claim_slot(3).unwrap();
            unsafe { libc::write(wr, [ok as u8].as_ptr().cast(), 1) };
            loop {
                unsafe { libc::pause() };
            }
        }
        let mut b = [0u8];
        unsafe { libc::read(rd, b.as_mut_ptr().cast(), 1) };
        assert_eq!(b[0], 1);
        assert!(m.slot_is_live(3).unwrap(), "held by a live child");
        assert!(
            !m.claim_slot(3).unwrap(),
            "cannot take a live process's slot"
        );
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0)
        };
        assert!(
            !m.slot_is_live(3).unwrap(),
            "freed by the kernel when the holder died"
        );
        assert!(m.claim_slot(3).unwrap());
        unsafe {
            libc::close(rd);
            libc::close(wr)
        };
        std::fs::remove_dir_all(d).unwrap();
    }
}
