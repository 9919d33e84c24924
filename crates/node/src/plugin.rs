//! The kubelet device plugin: one gRPC server per resource on a Unix socket in kubelet's
//! device-plugin directory, registered with kubelet, re-registered whenever kubelet's socket is
//! recreated (kubelet restarted) or our socket disappears (kubelet clears the directory).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::agent::Shared;
use crate::pb;

pub const API_VERSION: &str = "v1beta1";
pub const KUBELET_SOCKET: &str = "kubelet.sock";

pub fn socket_name(resource: &str) -> String {
    let s: String = resource
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("gpuslice-{s}.sock")
}

pub struct Plugin {
    pub shared: Arc<Shared>,
    pub resource: String,
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<pb::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::device_plugin_server::DevicePlugin for Plugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::DevicePluginOptions>, Status> {
        Ok(Response::new(pb::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let resource = self.resource.clone();
        let rx = self.shared.plan_rx();
        let mut last: Option<Vec<pb::Device>> = None;
        let s = tokio_stream::wrappers::WatchStream::new(rx).filter_map(move |plan| {
            let devices: Vec<pb::Device> = plan
                .resources
                .get(&resource)
                .map(|units| {
                    units
                        .iter()
                        .map(|u| pb::Device {
                            id: u.id.clone(),
                            health: if u.healthy { "Healthy" } else { "Unhealthy" }.into(),
                            topology: u.numa.map(|n| pb::TopologyInfo {
                                nodes: vec![pb::NumaNode { id: n as i64 }],
                            }),
                        })
                        .collect()
                })
                .unwrap_or_default();
            if last.as_ref() == Some(&devices) {
                return None;
            }
            last = Some(devices.clone());
            Some(Ok(pb::ListAndWatchResponse { devices }))
        });
        Ok(Response::new(Box::pin(s)))
    }

    async fn get_preferred_allocation(
        &self,
        req: Request<pb::PreferredAllocationRequest>,
    ) -> Result<Response<pb::PreferredAllocationResponse>, Status> {
        let req = req.into_inner();
        let wanted = self.shared.wanted_gpus(&self.resource, &req).await;
        let container_responses = req
            .container_requests
            .iter()
            .zip(wanted)
            .map(|(c, w)| pb::ContainerPreferredAllocationResponse {
                device_i_ds: crate::devices::preferred(
                    &c.available_device_i_ds,
                    &c.must_include_device_i_ds,
                    c.allocation_size.max(0) as usize,
                    &w,
                ),
            })
            .collect();
        Ok(Response::new(pb::PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        req: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        let mut out = pb::AllocateResponse::default();
        for c in req.into_inner().container_requests {
            match self.shared.allocate(&self.resource, &c.devices_i_ds).await {
                Ok(r) => out.container_responses.push(r),
                Err(msg) => {
                    tracing::warn!(resource = %self.resource, "Allocate refused: {msg}");
                    return Err(Status::failed_precondition(format!("gpuslice: {msg}")));
                }
            }
        }
        Ok(Response::new(out))
    }

    async fn pre_start_container(
        &self,
        _: Request<pb::PreStartContainerRequest>,
    ) -> Result<Response<pb::PreStartContainerResponse>, Status> {
        Ok(Response::new(pb::PreStartContainerResponse {}))
    }
}

/// A gRPC channel over a Unix socket.
pub async fn unix_channel(
    path: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
}

fn identity(p: &Path) -> Option<(u64, u64, i64)> {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime_nsec() + m.ctime() * 1_000_000_000))
}

async fn register(kubelet: &Path, resource: &str, endpoint: &str) -> Result<(), String> {
    let ch = unix_channel(kubelet)
        .await
        .map_err(|e| format!("connecting to {}: {e}", kubelet.display()))?;
    let mut c = pb::registration_client::RegistrationClient::new(ch);
    c.register(pb::RegisterRequest {
        version: API_VERSION.into(),
        endpoint: endpoint.into(),
        resource_name: resource.into(),
        options: Some(pb::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }),
    })
    .await
    .map_err(|e| format!("Register({resource}): {}", e.message()))?;
    Ok(())
}

/// Serves `resource` forever: (re)binds its socket, registers with kubelet, and starts over when
/// kubelet restarts.
pub async fn supervise(shared: Arc<Shared>, resource: String, socket_dir: PathBuf) {
    let name = socket_name(&resource);
    let sock = socket_dir.join(&name);
    let kubelet = socket_dir.join(KUBELET_SOCKET);
    // A resource a reload stops offering (the time-slicing one, when no GPU is time-sliced any
    // more) is withdrawn: its socket goes, and it is not registered again when kubelet
    // restarts, where it would take the name back from another device plugin. The agent starts
    // a new supervisor if it is offered again.
    let offered = |s: &Shared| s.plan().resources.contains_key(&resource);
    loop {
        if !offered(&shared) {
            let _ = std::fs::remove_file(&sock);
            tracing::info!(%resource, "no longer offered; withdrawn from kubelet");
            return;
        }
        let _ = std::fs::remove_file(&sock);
        let listener = match tokio::net::UnixListener::bind(&sock) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("binding {}: {e}", sock.display());
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let svc = pb::device_plugin_server::DevicePluginServer::new(Plugin {
            shared: shared.clone(),
            resource: resource.clone(),
        });
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        let mine = identity(&sock);
        // Register, retrying while kubelet is away.
        let mut backoff = Duration::from_millis(200);
        let registered_with = loop {
            let k = identity(&kubelet);
            if k.is_some() {
                match register(&kubelet, &resource, &name).await {
                    Ok(()) => {
                        tracing::info!(%resource, socket = %sock.display(), "registered with kubelet");
                        break k;
                    }
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            if identity(&sock) != mine || !offered(&shared) {
                break None;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        };
        // Watch for kubelet's restart (a new kubelet.sock) or our socket being removed.
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if !offered(&shared) {
                break;
            }
            if registered_with.is_none()
                || identity(&sock) != mine
                || identity(&kubelet) != registered_with
            {
                tracing::info!(%resource, after = ?started.elapsed(), "kubelet restarted or socket removed; registering again");
                break;
            }
            if server.is_finished() {
                tracing::error!(%resource, "device plugin server stopped; restarting it");
                break;
            }
        }
        server.abort();
        let _ = server.await;
    }
}
