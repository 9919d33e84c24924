//! Compiles kubelet's protos (the device plugin API v1beta1 and the pod resources API v1) with
//! protox (pure Rust; no protoc binary needed).
fn main() {
    println!("cargo:rerun-if-changed=proto/api.proto");
    println!("cargo:rerun-if-changed=proto/podresources.proto");
    let fds = protox::compile(["proto/api.proto", "proto/podresources.proto"], ["proto"])
        .expect("kubelet's protos");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)
        .expect("generating kubelet's APIs");
}
