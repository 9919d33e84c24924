//! Allocations the agent made, persisted so that a restart or crash loses nothing: one JSON file
//! replaced atomically (temporary file, rename) before Allocate answers, and made durable on disk
//! by a background flush right after.
//!
//! Why the fsync is not on Allocate's path: it costs 5–10 ms on a typical node disk, Allocate's
//! budget is 10 ms, and it protects only against a kernel crash or power loss. The rename alone
//! survives the agent crashing or being killed (the new file is in the page cache the moment it
//! returns). A kernel crash or power loss within the flush window (one fsync, a few ms) also
//! kills the containers the lost grants were for; when kubelet restarts them the agent allocates
//! again, and a container started from kubelet's own checkpoint without its ledger fails closed
//! (the interposer refuses CUDA without a ledger), never unlimited.
//!
//! A rename not yet flushed can come back from a power loss as an empty or zero-filled file on
//! some filesystems (XFS, ext4 without `auto_da_alloc`). So each flush also writes what it made
//! durable to `allocations.prev.json`, and a main file that reads as nothing but zero bytes
//! is replaced by that copy, with a warning. Any other unreadable content refuses to start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};

pub const STATE_VERSION: u32 = 1;

/// One container's grant: what its ledger says and where its files are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// Directory name under `<state>/tenants`, also the CDI device name.
    pub tenant: String,
    pub resource: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub pod_uid: String,
    #[serde(default)]
    pub container: String,
    pub gpus: Vec<String>,
    pub memory_bytes: u64,
    pub compute_percent: u32,
    pub device_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StateFile {
    pub version: u32,
    pub allocations: Vec<Allocation>,
}

pub struct Store {
    path: PathBuf,
    pub state: StateFile,
    flusher: Flusher,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("allocations.json");
        let read = match std::fs::read(&path) {
            Ok(b) if b.iter().all(|&x| x == 0) => match std::fs::read(prev_path(&path)) {
                Ok(p) => {
                    tracing::warn!(
                        "{}: empty or zero-filled (a write cut off by a crash); using the last flushed copy",
                        path.display()
                    );
                    Ok(p)
                }
                Err(_) => Ok(b),
            },
            r => r,
        };
        let state = match read {
            Ok(b) => {
                let s: StateFile =
                    serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display()))?;
                if s.version != STATE_VERSION {
                    return Err(format!(
                        "{}: version {} is not supported (this build: {STATE_VERSION})",
                        path.display(),
                        s.version
                    ));
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile {
                version: STATE_VERSION,
                allocations: Vec::new(),
            },
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let flusher = Flusher::start(path.clone());
        Ok(Store {
            path,
            state,
            flusher,
        })
    }

    pub fn find(&self, tenant: &str) -> Option<&Allocation> {
        self.state.allocations.iter().find(|a| a.tenant == tenant)
    }

    pub fn upsert(&mut self, a: Allocation) -> Result<(), String> {
        self.state.allocations.retain(|x| x.tenant != a.tenant);
        self.state.allocations.push(a);
        self.save()
    }

    pub fn remove(&mut self, tenant: &str) -> Result<(), String> {
        self.state.allocations.retain(|x| x.tenant != tenant);
        self.save()
    }

    pub fn save(&self) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(&self.state).expect("state serializes");
        write_replace(&self.path, &bytes, false)?;
        self.flusher.request();
        Ok(())
    }

    /// Waits until every save so far is on disk.
    pub fn flush(&self) {
        self.flusher.wait();
    }

    /// How many fsyncs the background flush has done (saves close together share one).
    pub fn flushes(&self) -> u64 {
        self.flusher.shared.0.lock().unwrap().syncs
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.flusher.wait();
        self.flusher.shared.0.lock().unwrap().stop = true;
        self.flusher.shared.1.notify_all();
    }
}

#[derive(Default)]
struct FlushState {
    requested: u64,
    done: u64,
    syncs: u64,
    stop: bool,
}

/// One thread per store that fsyncs the file and its directory after saves, coalescing saves
/// that arrive while an fsync runs.
struct Flusher {
    shared: Arc<(Mutex<FlushState>, Condvar)>,
}

impl Flusher {
    fn start(path: PathBuf) -> Flusher {
        let shared = Arc::new((Mutex::new(FlushState::default()), Condvar::new()));
        let s = shared.clone();
        std::thread::Builder::new()
            .name("state-flush".into())
            .spawn(move || {
                let (m, cv) = &*s;
                let mut st = m.lock().unwrap();
                loop {
                    while st.requested == st.done && !st.stop {
                        st = cv.wait(st).unwrap();
                    }
                    if st.requested == st.done {
                        return;
                    }
                    let target = st.requested;
                    drop(st);
                    if let Err(e) = sync_file_and_dir(&path) {
                        tracing::warn!("making {} durable: {e}", path.display());
                    }
                    st = m.lock().unwrap();
                    st.done = target;
                    st.syncs += 1;
                    cv.notify_all();
                }
            })
            .expect("spawning the state flush thread");
        Flusher { shared }
    }

    fn request(&self) {
        self.shared.0.lock().unwrap().requested += 1;
        self.shared.1.notify_all();
    }

    fn wait(&self) {
        let (m, cv) = &*self.shared;
        let mut st = m.lock().unwrap();
        let target = st.requested;
        while st.done < target {
            st = cv.wait(st).unwrap();
        }
    }
}

fn prev_path(path: &Path) -> PathBuf {
    path.with_extension("prev.json")
}

/// Makes the file and its name durable, then keeps that version (read from the very file that
/// was synced, not the name, which a later save may have moved on) as the fallback copy.
fn sync_file_and_dir(path: &Path) -> std::io::Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    f.sync_all()?;
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    write_atomic(&prev_path(path), &bytes).map_err(std::io::Error::other)
}

/// Replaces `path` with `bytes` so that readers see the old or the new file, never a torn one,
/// and the new one survives a crash once this returns.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    write_replace(path, bytes, true)
}

/// As [`write_atomic`]; `durable: false` skips the fsyncs for files rebuilt from the state at
/// start (CDI specs, the inventory), which keeps them off Allocate's latency.
pub fn write_replace(path: &Path, bytes: &[u8], durable: bool) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        std::process::id()
    ));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(d.path()).unwrap();
        let a = Allocation {
            tenant: "t".into(),
            resource: "gpuslice.io/gpu".into(),
            namespace: "ns".into(),
            pod: "p".into(),
            pod_uid: "u".into(),
            container: "c".into(),
            gpus: vec!["GPU-a".into()],
            memory_bytes: 1 << 30,
            compute_percent: 25,
            device_ids: vec!["GPU-a::0".into()],
        };
        s.upsert(a.clone()).unwrap();
        // Visible to a restarted agent as soon as save returns, before any fsync.
        let s2 = Store::open(d.path()).unwrap();
        assert_eq!(s2.find("t"), Some(&a));
        for i in 0..50 {
            s.upsert(Allocation {
                tenant: format!("t{i}"),
                ..a.clone()
            })
            .unwrap();
        }
        s.flush();
        let syncs = s.flushes();
        assert!(
            (1..=51).contains(&syncs),
            "51 saves were made durable by {syncs} fsyncs"
        );
        assert_eq!(Store::open(d.path()).unwrap().state.allocations.len(), 51);
        drop(s);
        // A rename cut off by a power loss can leave a zero-filled file: the last flushed copy
        // is used. Anything else unreadable refuses to start.
        let main = d.path().join("allocations.json");
        let len = std::fs::metadata(&main).unwrap().len() as usize;
        std::fs::write(&main, vec![0u8; len]).unwrap();
        assert_eq!(Store::open(d.path()).unwrap().state.allocations.len(), 51);
        std::fs::write(&main, b"").unwrap();
        assert_eq!(Store::open(d.path()).unwrap().state.allocations.len(), 51);
        std::fs::write(&main, b"{\"version\":1,\"alloc").unwrap();
        assert!(Store::open(d.path()).is_err());
        std::fs::write(
            d.path().join("allocations.json"),
            b"{\"version\":7,\"allocations\":[]}",
        )
        .unwrap();
        assert!(Store::open(d.path()).err().unwrap().contains("version 7"));
    }
}
