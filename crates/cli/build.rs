//! Links the `gpuslice` binary as a position-dependent executable: it starts every `gpuslice
//! run`, and a position-independent one spends part of each start applying tens of thousands
//! of relocations to its own tables (about 70 pages touched before `main`).
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
