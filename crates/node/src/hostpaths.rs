//! The host directories behind every path the agent hands out.
//!
//! The agent makes tenant directories, ledgers, the interposer copy, the preload file, the
//! compute regions and CDI specs from inside its own container, but kubelet and the container
//! runtime resolve those paths on the host. Each directory below must therefore be a hostPath
//! volume mounted at the same path in the agent: otherwise the bind source is missing on the
//! host (containers fail to start) or is not the agent's (limits not shared). The deploy
//! manifests are checked against this list (`tests/manifests.rs`), and the Allocate tests
//! check that every path in an answer lies under it.

use std::path::{Path, PathBuf};

use crate::allocate::Paths;

impl Paths {
    /// What [`Paths::prepare`] lays out for these directories, without touching the disk.
    pub fn layout(state: &Path, cdi: &Path, compute: &Path) -> Paths {
        let lib = state.join("lib");
        Paths {
            tenants: state.join("tenants"),
            cdi: cdi.to_path_buf(),
            interposer: lib.join("libgpuslice.so"),
            preload: lib.join("ld.so.preload"),
            compute: compute.to_path_buf(),
        }
    }

    /// Every host directory that a mount source in an Allocate answer or a CDI spec lies
    /// under, and the CDI directory the runtime reads specs from, each with what it holds.
    pub fn host_roots(&self) -> Vec<(PathBuf, &'static str)> {
        let parent = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut v = vec![
            (self.tenants.clone(), "tenant directories and ledgers"),
            (parent(&self.interposer), "the interposer"),
            (parent(&self.preload), "the ld.so.preload file"),
            (self.compute.clone(), "the compute regions"),
            (self.cdi.clone(), "CDI specs"),
        ];
        v.dedup_by(|a, b| a.0 == b.0);
        v
    }

    /// The root `host_path` lies under, if any.
    pub fn root_of(&self, host_path: &Path) -> Option<PathBuf> {
        self.host_roots()
            .into_iter()
            .map(|(r, _)| r)
            .find(|r| host_path.starts_with(r))
    }
}

/// The host roots of an agent started with these flags, and the compute directory it would
/// use (`GPUSLICE_COMPUTE_DIR` in its environment, else the default).
pub fn host_roots(
    state_dir: &Path,
    cdi_dir: &Path,
    compute_env: Option<&str>,
) -> Vec<(PathBuf, &'static str)> {
    let compute = match compute_env {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(gpuslice_compute::DEFAULT_DIR),
    };
    Paths::layout(state_dir, cdi_dir, &compute).host_roots()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `layout` is what `prepare` makes, so the roots the manifests are checked against are
    /// the ones the agent really uses.
    #[test]
    fn layout_matches_prepare() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src.so");
        std::fs::write(&src, b"x").unwrap();
        let state = t.path().join("state");
        let cdi = t.path().join("cdi");
        let p = Paths::prepare(&state, &cdi, &src).unwrap();
        let l = Paths::layout(&state, &cdi, &gpuslice_compute::configured_dir());
        assert_eq!(
            (&p.tenants, &p.cdi, &p.interposer, &p.preload, &p.compute),
            (&l.tenants, &l.cdi, &l.interposer, &l.preload, &l.compute)
        );
        assert_eq!(
            p.host_roots().into_iter().map(|r| r.0).collect::<Vec<_>>(),
            [
                state.join("tenants"),
                state.join("lib"),
                gpuslice_compute::configured_dir(),
                cdi
            ]
        );
    }
}
