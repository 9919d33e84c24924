//! The host directories behind every path the agent hands out.
//!
//! The agent makes tenant directories, ledgers, the interposer copy, the preload file, the
//! compute arbiter's sockets and CDI specs from inside its own container, but kubelet and the container
//! runtime resolve those paths on the host. Each directory below must therefore be a hostPath
//! volume mounted at the same path in the agent: otherwise the bind source is missing on the
//! host (containers fail to start) or is not the agent's (limits not shared). The deploy
//! manifests are checked against this list (`tests/manifests.rs`), and the Allocate tests
//! check that every path in an answer lies under it.

use std::path::{Path, PathBuf};

use crate::allocate::Paths;

/// Where the agent keeps what it hands out, as paths only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub tenants: PathBuf,
    pub cdi: PathBuf,
    pub interposer: PathBuf,
    pub preload: PathBuf,
    /// The compute arbiter's directory: its machine-wide socket, which `gpuslice run` tenants
    /// on the host connect to, and its figures.
    pub compute: PathBuf,
}

impl Layout {
    /// What [`Paths::prepare`] lays out for these directories, without touching the disk.
    pub fn new(state: &Path, cdi: &Path, compute: &Path) -> Layout {
        let lib = state.join("lib");
        Layout {
            tenants: state.join("tenants"),
            cdi: cdi.to_path_buf(),
            interposer: lib.join("libgpuslice.so"),
            preload: lib.join("ld.so.preload"),
            compute: compute.to_path_buf(),
        }
    }

    /// Every host directory that a mount source in an Allocate answer or a CDI spec lies
    /// under, the CDI directory the runtime reads specs from, and the arbiter's directory,
    /// each with what it holds.
    pub fn host_roots(&self) -> Vec<(PathBuf, &'static str)> {
        let parent = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut v = vec![
            (
                self.tenants.clone(),
                "tenant directories, ledgers and arbiter sockets",
            ),
            (parent(&self.interposer), "the interposer"),
            (parent(&self.preload), "the ld.so.preload file"),
            (self.compute.clone(), "the compute arbiter's socket"),
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

impl Paths {
    /// The paths this agent uses.
    pub fn layout(&self) -> Layout {
        Layout {
            tenants: self.tenants.clone(),
            cdi: self.cdi.clone(),
            interposer: self.interposer.clone(),
            preload: self.preload.clone(),
            compute: self.arbiter.dir().to_path_buf(),
        }
    }

    /// See [`Layout::host_roots`].
    pub fn host_roots(&self) -> Vec<(PathBuf, &'static str)> {
        self.layout().host_roots()
    }

    /// See [`Layout::root_of`].
    pub fn root_of(&self, host_path: &Path) -> Option<PathBuf> {
        self.layout().root_of(host_path)
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
    Layout::new(state_dir, cdi_dir, &compute).host_roots()
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
        let compute = t.path().join("compute");
        let p = Paths::prepare(&state, &cdi, &src, &compute).unwrap();
        assert_eq!(p.layout(), Layout::new(&state, &cdi, &compute));
        assert_eq!(
            p.host_roots().into_iter().map(|r| r.0).collect::<Vec<_>>(),
            [state.join("tenants"), state.join("lib"), compute, cdi]
        );
    }
}
