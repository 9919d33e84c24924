//! `src/generated.rs` must be what `cargo run -p cuda-gen` produces from the pinned headers.
//! Skipped when the headers have not been fetched (`scripts/fetch-cuda-runtime.sh`).

#[test]
fn generated_rs_matches_the_headers() {
    let include = cuda_gen::default_include();
    if !include.join("cuda.h").exists() {
        eprintln!(
            "skipped: {} has no cuda.h; run scripts/fetch-cuda-runtime.sh to enable this check",
            include.display()
        );
        return;
    }
    let expected = cuda_gen::generate_abi(&include).expect("headers parse");
    let path = cuda_gen::repo_root().join(cuda_gen::ABI_OUT);
    let actual = std::fs::read_to_string(&path).expect("generated.rs is readable");
    assert!(
        actual == expected,
        "{} is stale; regenerate it with `cargo run -p cuda-gen`",
        path.display()
    );
}
