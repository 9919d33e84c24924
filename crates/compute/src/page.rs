//! The grant page: what the arbiter tells one channel (one process on one GPU), in a page the
//! arbiter alone can write. The arbiter creates it as a memfd, maps it read-write, seals it
//! against any further writable mapping (`F_SEAL_FUTURE_WRITE`) and against resizing, and sends
//! the descriptor; the process maps it read-only. Its launch path reads one word of it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Not granted: launches wait.
pub const WAIT: u64 = 0;
/// The tenant holds the GPU: launches go.
pub const GRANTED: u64 = 1;
/// The turn is being taken back: launches wait, work in flight drains, then `RELEASE`.
pub const REVOKED: u64 = 2;

pub const PAGE_LEN: usize = 4096;

/// The page's layout. `word` = state | bound << 8 | epoch << 32; `bound` is the most launches
/// a process may keep in flight (0 = not bounded: nobody else wants the GPU). `seq` is the
/// futex word waiters sleep on; it moves whenever `word` does.
#[repr(C)]
pub struct Page {
    pub seq: AtomicU32,
    _pad: u32,
    pub word: AtomicU64,
}

pub fn state(w: u64) -> u64 {
    w & 0xff
}
pub fn bound(w: u64) -> u32 {
    ((w >> 8) & 0xff) as u32
}
pub fn epoch(w: u64) -> u32 {
    (w >> 32) as u32
}
pub fn pack(state: u64, bound: u32, epoch: u32) -> u64 {
    state | (bound.min(255) as u64) << 8 | (epoch as u64) << 32
}

/// The arbiter's writable mapping of one page.
pub struct PageWriter {
    ptr: *mut Page,
    fd: OwnedFd,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for PageWriter {}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl PageWriter {
    pub fn new() -> io::Result<PageWriter> {
        // SAFETY: the name is a valid C string; flags are plain values.
        let fd = cvt(unsafe {
            libc::memfd_create(
                c"gpuslice-grant".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        })?;
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain syscall on our descriptor.
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), PAGE_LEN as libc::off_t) })?;
        // SAFETY: mapping PAGE_LEN bytes of a file that long; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Our mapping exists before the seal, so it stays writable; nobody can make another.
        // SAFETY: fcntl on our descriptor.
        cvt(unsafe {
            libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_FUTURE_WRITE
                    | libc::F_SEAL_SHRINK
                    | libc::F_SEAL_GROW
                    | libc::F_SEAL_SEAL,
            )
        })?;
        Ok(PageWriter { ptr: p.cast(), fd })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub fn page(&self) -> &Page {
        // SAFETY: mapped for our lifetime; the fields are atomics.
        unsafe { &*self.ptr }
    }

    /// Publishes `w` and wakes every waiter if it changed.
    pub fn set(&self, w: u64) {
        let p = self.page();
        if p.word.load(Ordering::SeqCst) == w {
            return;
        }
        p.word.store(w, Ordering::SeqCst);
        p.seq.fetch_add(1, Ordering::SeqCst);
        futex_wake(&p.seq);
    }
}

impl Drop for PageWriter {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped; nothing refers to it after drop.
        unsafe { libc::munmap(self.ptr.cast(), PAGE_LEN) };
    }
}

/// A process's read-only mapping of its grant page.
pub struct PageReader {
    ptr: *const Page,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for PageReader {}
unsafe impl Sync for PageReader {}

impl PageReader {
    /// Maps the page read-only. A page whose descriptor is not sealed against writers (not the
    /// arbiter's) is refused.
    pub fn map(fd: &OwnedFd) -> io::Result<PageReader> {
        // SAFETY: fcntl on a descriptor we own.
        let seals = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) })?;
        let need = libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SHRINK;
        if seals & need != need {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the grant page is not sealed",
            ));
        }
        // SAFETY: mapping PAGE_LEN bytes of a file that cannot shrink; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_LEN,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(PageReader { ptr: p.cast() })
    }

    #[inline]
    pub fn page(&self) -> &Page {
        // SAFETY: mapped for the process's life (never unmapped); the fields are atomics, and
        // atomic loads from read-only memory are plain loads on the platforms we build for.
        unsafe { &*self.ptr }
    }
}

/// Sleeps while `w` holds `seen`, at most `timeout_ns`. Works on read-only shared mappings.
pub fn futex_wait(w: &AtomicU32, seen: u32, timeout_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `w` is a valid aligned u32; the timespec outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            w.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            &ts as *const libc::timespec,
            0usize,
            0u32,
        );
    }
}

pub fn futex_wake(w: &AtomicU32) {
    // SAFETY: `w` is a valid aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            w.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            0usize,
            0usize,
            0u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_read_only_for_its_receiver_and_cannot_be_remapped_writable() {
        let w = PageWriter::new().unwrap();
        w.set(pack(GRANTED, 2, 9));
        let r = PageReader::map(w.fd()).unwrap();
        let word = r.page().word.load(Ordering::SeqCst);
        assert_eq!((state(word), bound(word), epoch(word)), (GRANTED, 2, 9));
        // SAFETY: a mapping attempt whose failure is the point.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                w.fd().as_raw_fd(),
                0,
            )
        };
        assert_eq!(p, libc::MAP_FAILED, "a writable mapping is refused");
        // SAFETY: plain syscall; must fail.
        let t = unsafe { libc::ftruncate(w.fd().as_raw_fd(), 0) };
        assert!(t < 0, "the page cannot be truncated");
        w.set(pack(REVOKED, 1, 10));
        assert_eq!(state(r.page().word.load(Ordering::SeqCst)), REVOKED);
    }
}
