//! The CUDA driver and NVML ABI as gpuslice's C-facing crates see it: result codes, handle and
//! struct layouts, and the table of driver entry points by name and CUDA version.
//!
//! `modimage` reads module images of every kind the driver loads (`image`: the simulator's
//! own, `cubin`, `ptx`, `fatbin`) for their kernels and `__device__` variables.
//!
//! `generated` is produced from NVIDIA's `cuda.h`/`cudaTypedefs.h` by `tools/cuda-gen`; `driver`
//! and `nvml` hold the few hand-written types the interposer and the simulator need.
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]

pub mod array;
mod bytes;
pub mod cubin;
pub mod driver;
pub mod fatbin;
pub mod generated;
pub mod image;
pub mod imagegen;
pub mod modimage;
pub mod nvml;
pub mod ptx;
pub mod zstd;
