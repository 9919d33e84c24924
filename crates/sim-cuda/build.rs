fn main() {
    // The driver's own lookups (cuGetProcAddress) must hand out its own functions even when an
    // interposer that defines the same names is loaded first.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
}
