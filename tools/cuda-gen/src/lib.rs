//! Generates gpuslice's CUDA driver tables from NVIDIA's `cuda.h` and `cudaTypedefs.h`.
//!
//! * `crates/cuda-abi/src/generated.rs`: the exported driver symbols and the `cuGetProcAddress`
//!   version table with its resolver.
//! * `crates/sim-cuda/src/stubs.rs`: `CUDA_ERROR_NOT_SUPPORTED` answers for every exported symbol
//!   the simulated driver does not implement itself.
//!
//! The headers come from the `nvidia-cuda-runtime-cu12` wheel (`scripts/fetch-cuda-runtime.sh`)
//! and are never committed; the generated files are.

pub mod emit;
pub mod header;
pub mod lex;
pub mod stubs;
pub mod table;

use std::path::{Path, PathBuf};

pub use table::Model;

/// The repository root (this crate lives at `tools/cuda-gen`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// Where `scripts/fetch-cuda-runtime.sh` unpacks the headers.
pub fn default_include() -> PathBuf {
    repo_root().join(".cache/cuda-runtime/include")
}

pub const ABI_OUT: &str = "crates/cuda-abi/src/generated.rs";
pub const STUBS_OUT: &str = "crates/sim-cuda/src/stubs.rs";
pub const SIM_SRC: &str = "crates/sim-cuda/src";

/// Declarations, in include order: the interop headers build on cuda.h's macros. libcuda.so.1
/// exports the OpenGL, EGL and VDPAU interop entry points too.
pub const HEADERS: &[&str] = &["cuda.h", "cudaGL.h", "cudaEGL.h", "cudaVDPAU.h"];

/// The PFN typedefs for `cuGetProcAddress`. The profiler's declarations (cudaProfiler.h) are not
/// in the wheel; its three functions have one version each and are exported under their names.
pub const TYPEDEF_HEADERS: &[&str] = &[
    "cudaTypedefs.h",
    "cudaGLTypedefs.h",
    "cudaEGLTypedefs.h",
    "cudaVDPAUTypedefs.h",
    "cudaProfilerTypedefs.h",
];

/// Parses the headers in `include` and derives the tables.
pub fn load(include: &Path) -> Result<Model, String> {
    let read = |name: &str| {
        let p = include.join(name);
        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut sources = Vec::new();
    for name in HEADERS {
        sources.push((*name, read(name)?));
    }
    let sources: Vec<(&str, &str)> = sources.iter().map(|(n, s)| (*n, s.as_str())).collect();
    let cuda_h = header::parse_cuda_h(&sources)?;
    let mut typedefs = header::Typedefs::default();
    for name in TYPEDEF_HEADERS {
        let undeclared = *name == "cudaProfilerTypedefs.h";
        header::parse_typedefs(&read(name)?, undeclared, &mut typedefs)
            .map_err(|e| format!("{name}: {e}"))?;
    }
    table::build(&cuda_h, &typedefs)
}

/// The text `crates/cuda-abi/src/generated.rs` should have.
pub fn generate_abi(include: &Path) -> Result<String, String> {
    Ok(emit::abi(&load(include)?))
}

/// The text `crates/sim-cuda/src/stubs.rs` should have, given the simulator sources in `sim_src`.
pub fn generate_stubs(model: &Model, sim_src: &Path) -> Result<String, String> {
    let implemented = stubs::implemented(sim_src)?;
    Ok(emit::stubs(model, &implemented))
}
