//! What the agent's integration tests share: a fake kubelet speaking the real registration
//! proto on `kubelet.sock`, and where the simulator's NVML was built.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use gpuslice_node::pb;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

struct FakeKubelet(mpsc::UnboundedSender<pb::RegisterRequest>);

#[tonic::async_trait]
impl pb::registration_server::Registration for FakeKubelet {
    async fn register(
        &self,
        r: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let _ = self.0.send(r.into_inner());
        Ok(Response::new(pb::Empty {}))
    }
}

/// Starts a kubelet on `dir/kubelet.sock` (replacing one left there) that sends every
/// registration to `tx`; aborting the task stops it, as a kubelet restart would.
pub fn kubelet(
    dir: &Path,
    tx: mpsc::UnboundedSender<pb::RegisterRequest>,
) -> tokio::task::JoinHandle<()> {
    let sock = dir.join("kubelet.sock");
    let _ = std::fs::remove_file(&sock);
    let l = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(pb::registration_server::RegistrationServer::new(
                FakeKubelet(tx),
            ))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l))
            .await;
    })
}

/// The next registration, within `deadline`.
pub async fn next_registration(
    rx: &mut mpsc::UnboundedReceiver<pb::RegisterRequest>,
    deadline: Duration,
) -> pb::RegisterRequest {
    tokio::time::timeout(deadline, rx.recv())
        .await
        .expect("a registration in time")
        .unwrap()
}

/// The simulator's NVML, built beside the test binary (a dev-dependency).
pub fn sim_nvml() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [
        deps.join("libnvidia_ml.so"),
        deps.parent().unwrap().join("libnvidia_ml.so"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .expect("libnvidia_ml.so next to the test binary (cargo builds gpuslice-sim-nvml for it)")
}
