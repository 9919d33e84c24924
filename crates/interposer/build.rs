fn main() {
    // Resolve our own symbols inside the library, so that our calls to ourselves (e.g. the
    // legacy entry points delegating to the current ones) never leave it.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libgpuslice.so");
}
