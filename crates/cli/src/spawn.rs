//! Starting the tenant's command: the way `posix_spawn` does (the child shares the supervisor's
//! memory until it execs, so nothing is copied), with what `posix_spawn` cannot do in between:
//! `PR_SET_PDEATHSIG`, so that the command never outlives its supervisor. `Command::pre_exec`
//! would fork instead, copying the page tables of a large multi-threaded process on every
//! `gpuslice run` (about a millisecond).
//!
//! The child also gets the default disposition of every signal and the supervisor's signal
//! mask from before the spawn: the supervisor ignores SIGINT and SIGQUIT (the terminal sends
//! them to the whole foreground group, the command among it), and an ignored signal would
//! otherwise stay ignored across `execve`, leaving Ctrl-C without effect on the command.

use std::ffi::{CString, OsStr, OsString, c_char, c_int, c_void};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// What the child needs, built before it starts: it may only make system calls.
struct Plan {
    path: CString,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    /// The signal mask to restore in the child (the parent blocks everything around the clone).
    mask: libc::sigset_t,
    /// Where the child leaves `execve`'s errno if it fails (shared memory until then).
    errno: c_int,
}

/// Finds `program` the way `execvp` does: as given if it names a path, else the first
/// executable of that name on `PATH`.
fn resolve(program: &OsStr) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
                return false;
            };
            // SAFETY: a valid C string; access only reads it.
            p.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
        })
}

fn cstring(s: &OsStr) -> std::io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an argument or environment entry contains a NUL byte",
        )
    })
}

/// Starts `program` with `args` and this process's environment with `set` applied; returns
/// its pid. The child is this process's own (wait for it with `waitpid`).
pub fn spawn(program: &OsStr, args: &[OsString], set: &[(&str, OsString)]) -> std::io::Result<u32> {
    let path = resolve(program)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "not found on PATH"))?;
    let path = cstring(path.as_os_str())?;
    let mut owned: Vec<CString> = Vec::new();
    owned.push(cstring(program)?);
    for a in args {
        owned.push(cstring(a)?);
    }
    let argc = owned.len();
    for (k, v) in std::env::vars_os() {
        if set.iter().any(|(name, _)| OsStr::new(name) == k) {
            continue;
        }
        let mut e = k.into_vec();
        e.push(b'=');
        e.extend_from_slice(v.as_bytes());
        owned.push(cstring(OsStr::from_bytes(&e))?);
    }
    for (k, v) in set {
        let mut e = k.as_bytes().to_vec();
        e.push(b'=');
        e.extend_from_slice(v.as_bytes());
        owned.push(cstring(OsStr::from_bytes(&e))?);
    }
    let mut argv: Vec<*const c_char> = owned[..argc].iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = owned[argc..].iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    let mut plan = Plan {
        path,
        argv,
        envp,
        // SAFETY: sigset_t is plain data, filled in below.
        mask: unsafe { std::mem::zeroed() },
        errno: 0,
    };
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: the stack grows down on the platforms we build for; its top, 16-byte aligned.
    let top = unsafe { stack.as_mut_ptr().add(stack.len()) }.map_addr(|a| a & !15);
    // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask only write the sets we own.
    // With every signal blocked, no handler of ours can run in the child, which shares our
    // memory until it execs.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut plan.mask);
    }
    // SAFETY: CLONE_VM | CLONE_VFORK suspends this thread until the child has exec'd or exited,
    // so `plan` and `stack` outlive its use of them; the child only makes system calls.
    let pid = unsafe {
        libc::clone(
            child,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut plan as *mut Plan).cast(),
        )
    };
    let spawn_error = std::io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &plan.mask, std::ptr::null_mut()) };
    drop(stack);
    if pid < 0 {
        return Err(spawn_error);
    }
    // SAFETY: written by the child before it exited; it has (CLONE_VFORK).
    let errno = unsafe { std::ptr::read_volatile(&plan.errno) };
    if errno != 0 {
        // SAFETY: reaps the child that failed to exec.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(std::io::Error::from_raw_os_error(errno));
    }
    Ok(pid as u32)
}

/// The child, on its own stack, sharing the parent's memory: system calls only.
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `Plan`, alive while the parent is suspended (CLONE_VFORK).
    let plan = unsafe { &mut *arg.cast::<Plan>() };
    // SAFETY: each call takes plain values or pointers into `plan`; none allocates.
    unsafe {
        let parent = libc::getppid();
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The supervisor may have died between the clone and the prctl.
        if libc::getppid() != parent {
            libc::_exit(127);
        }
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        libc::sigprocmask(libc::SIG_SETMASK, &plan.mask, std::ptr::null_mut());
        libc::execve(plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        std::ptr::write_volatile(&mut plan.errno, *libc::__errno_location());
        libc::_exit(127)
    }
}
