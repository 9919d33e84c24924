//! Compiles the kubelet device plugin proto with protox (pure Rust; no protoc binary needed).
fn main() {
    println!("cargo:rerun-if-changed=proto/api.proto");
    let fds = protox::compile(["proto/api.proto"], ["proto"]).expect("proto/api.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)
        .expect("generating the device plugin API");
}
