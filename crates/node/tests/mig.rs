//! The agent on the simulated GPU through NVML (`gpuslice-nvml` loading the simulator's
//! `libnvidia_ml.so`): discovery, then a MIG layout applied out of band showing up as
//! `gpuslice.io/mig-<profile>` resources, and Allocate handing out a MIG device. One test per
//! process: the simulated NVML attaches to one state file per process.

mod common;
use common::{kubelet, sim_nvml};
use std::time::Duration;

use gpuslice_node::agent::{self, Options};
use gpuslice_node::assign::Source;
use gpuslice_node::config::NodeConfig;
use gpuslice_node::gpu::NvmlGpus;
use gpuslice_node::pb;
use gpuslice_node::plugin::{socket_name, unix_channel};
use tokio::sync::mpsc;

const GPU0: &str = "GPU-3a7c0000-0000-4000-8000-3a7c00000000";
const GPU1: &str = "GPU-3a7c0001-0000-4000-8000-3a7c00000001";
const H100: &str = "NVIDIA H100 80GB HBM3";
const DEADLINE: Duration = Duration::from_secs(20);

async fn next(rx: &mut mpsc::UnboundedReceiver<pb::RegisterRequest>) -> String {
    common::next_registration(rx, DEADLINE).await.resource_name
}

async fn devices(sockets: &std::path::Path, resource: &str) -> Vec<pb::Device> {
    let mut c = pb::device_plugin_client::DevicePluginClient::new(
        unix_channel(&sockets.join(socket_name(resource)))
            .await
            .unwrap(),
    );
    c.list_and_watch(pb::Empty {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap()
        .devices
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mig_devices_applied_out_of_band_are_advertised_and_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    // SAFETY: the only test of this process, before anything reads the environment.
    unsafe {
        std::env::set_var(
            "GPUSLICE_SIM_DEVICES",
            format!(
                "memory=80GiB,sms=132,numa=0,uuid={GPU0},name={H100};memory=80GiB,sms=132,numa=1,uuid={GPU1},name={H100}"
            ),
        );
        std::env::set_var("GPUSLICE_SIM_STATE", tmp.path().join("sim-gpu"));
    }
    let lib = sim_nvml();

    // Discovery through gpuslice-nvml reports the simulated devices.
    let source = NvmlGpus::simulated(&lib).unwrap();
    let found = source.gpus().unwrap();
    assert_eq!(found.len(), 2);
    for (g, (uuid, numa)) in found.iter().zip([(GPU0, 0), (GPU1, 1)]) {
        assert_eq!(g.uuid, uuid);
        assert_eq!(g.model, H100);
        assert_eq!(g.memory_bytes, 80 << 30);
        assert_eq!(g.numa, Some(numa));
        assert!(!g.mig_enabled && g.mig.is_empty());
        assert!(g.nvlink_peers.is_empty(), "the simulator models no NVLink");
    }

    let sockets = tmp.path().join("plugins");
    std::fs::create_dir_all(&sockets).unwrap();
    let interposer = tmp.path().join("libgpuslice.so");
    std::fs::write(&interposer, b"\x7fELF stand-in").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _kubelet = kubelet(&sockets, tx);
    let state = tmp.path().join("state");
    let opts = Options {
        node_name: "node-a".into(),
        config_path: None,
        socket_dir: sockets.clone(),
        cdi_dir: tmp.path().join("cdi"),
        state_dir: state.clone(),
        metrics_addr: None,
        interposer,
        extra_tenant_dirs: vec![],
        health_quiet: Duration::from_secs(3600),
        reload_every: Duration::from_millis(100),
        pod_resources_socket: tmp.path().join("no-pod-resources.sock"),
        reconcile_every: Duration::from_secs(30),
        compute_dir: tmp.path().join("compute"),
    };
    let shared = agent::start(
        &opts,
        NodeConfig::parse("version: v1\nslices: 2\n").unwrap(),
        source,
        Source::File(state.join("assignments.json")),
    )
    .unwrap();
    tokio::spawn(agent::run(opts, shared.clone()));
    let mut first: Vec<String> = Vec::new();
    for _ in 0..2 {
        first.push(next(&mut rx).await);
    }
    first.sort();
    assert_eq!(first, ["gpuslice.io/gpu", "gpuslice.io/whole-gpu"]);
    assert_eq!(devices(&sockets, "gpuslice.io/gpu").await.len(), 4);

    // Out of band, as `gpuslice mig apply` would: GPU 0 becomes 3× 1g.10gb + 1× 3g.40gb.
    let nvml = gpuslice_nvml::Nvml::from_path(&lib).unwrap();
    let model = gpuslice_core::mig::model(H100).unwrap();
    nvml.set_mig_mode(0, true).unwrap();
    for (name, start, size) in [
        ("1g.10gb", 0, 1),
        ("1g.10gb", 1, 1),
        ("1g.10gb", 2, 1),
        ("3g.40gb", 4, 4),
    ] {
        let p = model.profile(name).unwrap();
        let gi = nvml.create_gpu_instance(0, p.id, start, size).unwrap();
        nvml.create_compute_instance(0, gi, p.full_compute_profile().id, None)
            .unwrap();
    }
    let mut more = vec![next(&mut rx).await, next(&mut rx).await];
    more.sort();
    assert_eq!(more, ["gpuslice.io/mig-1g.10gb", "gpuslice.io/mig-3g.40gb"]);

    let small = devices(&sockets, "gpuslice.io/mig-1g.10gb").await;
    let big = devices(&sockets, "gpuslice.io/mig-3g.40gb").await;
    assert_eq!((small.len(), big.len()), (3, 1));
    assert!(
        small
            .iter()
            .chain(&big)
            .all(|d| d.health == "Healthy" && d.id.starts_with("MIG-"))
    );
    // The MIG GPU is no longer offered as slices; GPU 1 still is.
    let slices = devices(&sockets, "gpuslice.io/gpu").await;
    assert_eq!(slices.len(), 2);
    assert!(slices.iter().all(|d| d.id.starts_with(GPU1)));

    // The inventory for the scheduler describes the MIG devices as NVML reports them.
    let inv = gpuslice_core::protocol::Inventory::parse(
        &std::fs::read_to_string(state.join("inventory.json")).unwrap(),
    )
    .unwrap();
    let g0 = inv.gpus.iter().find(|g| g.uuid == GPU0).unwrap();
    assert_eq!(g0.mode, gpuslice_core::protocol::GpuMode::Mig);
    assert_eq!(g0.numa, Some(0));
    let truth = nvml.mig_devices(0).unwrap();
    assert_eq!(g0.mig.len(), 4);
    for m in &g0.mig {
        let t = truth
            .iter()
            .find(|t| t.uuid == m.uuid)
            .expect("a MIG UUID NVML knows");
        assert_eq!(m.memory_mib, t.memory_bytes >> 20);
    }
    assert_eq!(g0.mig.iter().filter(|m| m.profile == "1g.10gb").count(), 3);
    // Placements as created above, for the scheduler's MIG layout hint.
    let mut starts: Vec<(&str, Option<u8>)> = g0
        .mig
        .iter()
        .map(|m| (m.profile.as_str(), m.start))
        .collect();
    starts.sort();
    assert_eq!(
        starts,
        [
            ("1g.10gb", Some(0)),
            ("1g.10gb", Some(1)),
            ("1g.10gb", Some(2)),
            ("3g.40gb", Some(4))
        ]
    );
    // H100-80GB: 1g.10gb has 9984 MiB, 3g.40gb 40448 MiB (`nvidia-smi mig -lgip`).
    assert!(
        g0.mig
            .iter()
            .all(|m| m.memory_mib == if m.profile == "1g.10gb" { 9984 } else { 40448 })
    );
    assert_eq!(
        inv.gpus.iter().find(|g| g.uuid == GPU1).unwrap().numa,
        Some(1)
    );

    // Allocate gives the container exactly its MIG device.
    let id = small[1].id.clone();
    let mut c = pb::device_plugin_client::DevicePluginClient::new(
        unix_channel(&sockets.join(socket_name("gpuslice.io/mig-1g.10gb")))
            .await
            .unwrap(),
    );
    let r = c
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_i_ds: vec![id.clone()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let cr = &r.container_responses[0];
    assert_eq!(cr.envs["CUDA_VISIBLE_DEVICES"], id);
    assert_eq!(cr.envs["NVIDIA_VISIBLE_DEVICES"], id);
    assert!(
        !cr.envs.contains_key("LD_PRELOAD"),
        "hardware-isolated: no interposer"
    );
    assert_eq!(cr.cdi_devices.len(), 1);
    let spec_dir = tmp.path().join("cdi");
    let spec: String = std::fs::read_dir(&spec_dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .find(|s| {
            s.contains(
                &cr.cdi_devices[0]
                    .name
                    .rsplit('=')
                    .next()
                    .unwrap()
                    .to_string(),
            )
        })
        .expect("a CDI spec for the device");
    assert!(
        spec.contains(&format!("CUDA_VISIBLE_DEVICES={id}")),
        "{spec}"
    );

    // A device of another profile is refused by name.
    let e = c
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_i_ds: vec![big[0].id.clone()],
            }],
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("3g.40gb"), "{}", e.message());

    // Back to a whole GPU, again without restarting the agent.
    for gi in nvml.gpu_instances(0).unwrap() {
        for ci in &gi.compute_instances {
            nvml.destroy_compute_instance(0, gi.id, ci.id).unwrap();
        }
        nvml.destroy_gpu_instance(0, gi.id).unwrap();
    }
    nvml.set_mig_mode(0, false).unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let s = devices(&sockets, "gpuslice.io/gpu").await;
        let m = devices(&sockets, "gpuslice.io/mig-1g.10gb").await;
        if s.len() == 4 && m.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "MIG off not picked up: {} slices, {} MIG",
            s.len(),
            m.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
