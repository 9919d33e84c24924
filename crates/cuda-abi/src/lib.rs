//! The CUDA driver and NVML ABI as gpuslice's C-facing crates see it: result codes, handle and
//! struct layouts, and the table of driver entry points by name and CUDA version.
//!
//! `generated` is produced from NVIDIA's `cuda.h`/`cudaTypedefs.h` by `tools/cuda-gen`; `driver`
//! and `nvml` hold the few hand-written types the interposer and the simulator need.
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]

pub mod array;
pub mod driver;
pub mod generated;
pub mod image;
pub mod nvml;
