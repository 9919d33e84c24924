// Programs dlopen "libnvidia-ml.so.1"; the SONAME lets the built file stand in for it through a
// symlink or an ld.so.conf entry. -Bsymbolic keeps this library's own calls bound to its own
// definitions even when an interposer exporting the same names is loaded first.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
    println!("cargo:rerun-if-changed=build.rs");
}
