//! `libgpuslice.so`: loaded into CUDA programs (by `LD_PRELOAD` or `/etc/ld.so.preload`), it
//! intercepts the CUDA driver API and NVML and enforces the tenant's limits recorded in its
//! ledger. Enforcement only: the limits come from whoever created the ledger.
//!
//! It depends on libc and the ledger and nothing heavier: it runs inside every tenant process.
#![allow(non_snake_case, clippy::missing_safety_doc)]
#![deny(unsafe_op_in_unsafe_fn)]

mod book;
mod compute;
mod context;
mod graphmem;
mod launch;
mod lookup;
mod memory;
mod modules;
mod nvml;
mod real;
mod shared;
mod tenant;

/// Exported `dlsym`. `RTLD_NEXT` means "after the caller", and glibc finds the caller from the
/// return address, so those lookups jump straight to the real `dlsym` with the caller's return
/// address intact. Every other lookup goes through our hook.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(
    _handle: *mut std::ffi::c_void,
    _symbol: *const std::ffi::c_char,
) -> *mut std::ffi::c_void {
    std::arch::naked_asm!(
        "cmp rdi, -1",
        "jne {hook}",
        "mov rax, qword ptr [rip + {real}]",
        "test rax, rax",
        "jz {hook}",
        "jmp rax",
        hook = sym lookup::gpuslice_dlsym_hook,
        real = sym real::GPUSLICE_REAL_DLSYM,
    )
}

#[cfg(not(target_arch = "x86_64"))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(
    handle: *mut std::ffi::c_void,
    symbol: *const std::ffi::c_char,
) -> *mut std::ffi::c_void {
    unsafe { lookup::gpuslice_dlsym_hook(handle, symbol) }
}

extern "C" fn on_load() {
    real::init_real_dlsym();
    unsafe { libc::pthread_atfork(None, None, Some(tenant::after_fork_in_child)) };
}

// Runs when the library is loaded, before the program can call `dlsym`. Does no tenant work:
// programs that never touch CUDA pay nothing.
#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = on_load;
