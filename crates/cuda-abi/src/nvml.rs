//! NVML types and codes (hand-written).
