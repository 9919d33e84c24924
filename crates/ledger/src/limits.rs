//! A tenant's limits as its authority hands them to the interposer: the one encoding of cap,
//! context charge, GPU allow-list, compute settings and tenant id, shared by `gpuslice run`'s
//! warden socket and the read-only `limits` file the node agent mounts into containers.
//!
//! The ledger file also records these figures, for readers such as `gpuslice top`, but a
//! tenant's processes can write their ledger; the interposer takes its limits only from here.
//!
//! Encoding (little-endian): `GSLIMIT1`, tenant id u64, memory cap u64, context charge u64,
//! packed compute u64 (0 = none), name length u8 + name bytes, allowed count u8 + 16 bytes each.

use crate::{ComputeSpec, LedgerError, MAX_ALLOWED, NAME_LEN, TenantSpec};

const MAGIC: &[u8; 8] = b"GSLIMIT1";

/// What a tenant may use, as decided by whoever started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub spec: TenantSpec,
    pub compute: Option<ComputeSpec>,
    /// Names the tenant in compute regions and metrics; non-zero.
    pub tenant_id: u64,
}

impl Limits {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.spec.name.len() + 16 * self.spec.allowed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.tenant_id.to_le_bytes());
        out.extend_from_slice(&self.spec.memory_cap.to_le_bytes());
        out.extend_from_slice(&self.spec.context_overhead.to_le_bytes());
        out.extend_from_slice(&self.compute.map_or(0, ComputeSpec::pack).to_le_bytes());
        let name = &self.spec.name.as_bytes()[..self.spec.name.len().min(NAME_LEN - 1)];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.push(self.spec.allowed.len() as u8);
        for u in &self.spec.allowed {
            out.extend_from_slice(u);
        }
        out
    }

    /// Refuses anything but a complete, valid record: a tenant must never run on limits read
    /// from a torn or forged-looking record.
    pub fn decode(b: &[u8]) -> Result<Limits, LedgerError> {
        let bad = |what: &str| LedgerError::Invalid(format!("malformed tenant limits: {what}"));
        let mut r = Reader { b, at: 0 };
        if r.take(8).ok_or_else(|| bad("too short"))? != MAGIC {
            return Err(bad("bad magic"));
        }
        let tenant_id = r.u64().ok_or_else(|| bad("too short"))?;
        let memory_cap = r.u64().ok_or_else(|| bad("too short"))?;
        let context_overhead = r.u64().ok_or_else(|| bad("too short"))?;
        let compute =
            ComputeSpec::unpack(r.u64().ok_or_else(|| bad("too short"))?).map_err(|e| bad(&e))?;
        let n = r.u8().ok_or_else(|| bad("too short"))? as usize;
        if n >= NAME_LEN {
            return Err(bad("name too long"));
        }
        let name = std::str::from_utf8(r.take(n).ok_or_else(|| bad("too short"))?)
            .map_err(|_| bad("name is not UTF-8"))?
            .to_string();
        let count = r.u8().ok_or_else(|| bad("too short"))? as usize;
        if count > MAX_ALLOWED {
            return Err(bad("too many allowed GPUs"));
        }
        let mut allowed = Vec::with_capacity(count);
        for _ in 0..count {
            allowed.push(
                r.take(16)
                    .ok_or_else(|| bad("too short"))?
                    .try_into()
                    .expect("16 bytes"),
            );
        }
        if r.at != b.len() {
            return Err(bad("trailing bytes"));
        }
        if memory_cap == 0 {
            return Err(bad("no memory cap"));
        }
        if tenant_id == 0 {
            return Err(bad("no tenant id"));
        }
        Ok(Limits {
            spec: TenantSpec {
                name,
                memory_cap,
                context_overhead,
                allowed,
            },
            compute,
            tenant_id,
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Limits {
        Limits {
            spec: TenantSpec {
                name: "train-a".into(),
                memory_cap: 4 << 30,
                context_overhead: 256 << 20,
                allowed: vec![[7; 16], [9; 16]],
            },
            compute: Some(ComputeSpec {
                quota: 30,
                mode: 1,
                priority: 2,
            }),
            tenant_id: 0xfeed,
        }
    }

    #[test]
    fn limits_round_trip() {
        let l = sample();
        assert_eq!(Limits::decode(&l.encode()).unwrap(), l);
        let mut none = l.clone();
        none.compute = None;
        none.spec.allowed.clear();
        assert_eq!(Limits::decode(&none.encode()).unwrap(), none);
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let b = sample().encode();
        for n in 0..b.len() {
            assert!(
                Limits::decode(&b[..n]).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(Limits::decode(&longer).is_err());
    }

    #[test]
    fn invalid_fields_are_refused() {
        let mut l = sample();
        l.spec.memory_cap = 0;
        assert!(Limits::decode(&l.encode()).is_err());
        let mut l = sample();
        l.tenant_id = 0;
        assert!(Limits::decode(&l.encode()).is_err());
        let mut b = sample().encode();
        // The compute word: a mode code out of range.
        b[32 + 1] = 9;
        assert!(Limits::decode(&b).is_err());
    }
}
