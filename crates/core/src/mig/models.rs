//! MIG geometry of the supported GPU models, as data.
//!
//! Sources (facts only, re-expressed as data):
//! - NVIDIA Multi-Instance GPU User Guide, "Supported MIG Profiles" (A30, A100, H100, H200
//!   profile tables: names, `+me` variants, fractions of memory/SMs, instance counts) and
//!   "Concepts → Partitioning" (compute instances inside a GPU instance, e.g. `3c.4g.20gb`).
//! - `nvidia-smi mig -lgip` / `-lgipp` output for each model (profile IDs, memory in GiB,
//!   SM counts, placements). The guide gives fractions, not MiB, SM counts or placements, so
//!   those columns are taken from what nvidia-smi shows; `memory_mib` is the `-lgip` GiB
//!   figure × 1024, which is also what `nvidia-smi` prints as a MIG device's total memory.
//!   Memory figures drift a little between driver branches (e.g. H100 NVL 1g.12gb reads
//!   10.62 GiB on older drivers and 10.75 GiB on R560); the newer figure is used.
//! - PCI device IDs: the `device-filter` groups of NVIDIA mig-parted's
//!   `deployments/systemd/config-default.yaml` (which IDs share a profile table), with board
//!   names from the "Compatible GPUs" table of NVIDIA's open-gpu-kernel-modules README (which
//!   of a mixed group is an A100/A800 and which an H100/H800). `tests.rs` keeps that table.
//! - `+gfx` profiles are listed by the guide only for RTX PRO Blackwell parts, none of which
//!   are modelled here, so no model below has one.
//!
//! Placements are `(start, size)` in memory slices, as `-lgipp` prints them.

use serde::Serialize;

/// A contiguous run of memory slices a GPU instance may occupy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Placement {
    pub start: u8,
    pub size: u8,
}

impl Placement {
    /// Bit mask of the memory slices covered (slice `i` is bit `i`).
    pub const fn mask(&self) -> u16 {
        (((1u32 << self.size) - 1) << self.start) as u16
    }
}

/// A compute-instance profile available inside a GPU instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CiProfile {
    /// `1c.3g.40gb`; the CI that takes the whole GI carries the GI's own name.
    pub name: &'static str,
    /// Compute-instance profile ID as `nvidia-smi mig -lcip` shows it.
    pub id: u32,
    pub compute_slices: u8,
    pub max_instances: u8,
}

/// A GPU-instance profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GiProfile {
    pub name: &'static str,
    /// Profile ID as `nvidia-smi mig -lgip` shows it and `-cgi` accepts.
    pub id: u32,
    pub compute_slices: u8,
    pub memory_slices: u8,
    pub memory_mib: u64,
    pub sm_count: u32,
    pub max_instances: u8,
    pub placements: &'static [Placement],
    pub compute_profiles: &'static [CiProfile],
}

impl GiProfile {
    /// Media-extension profiles (`+me`) all draw on the GPU's single set of JPEG/OFA engines,
    /// so at most one of them can exist on a GPU at a time.
    pub fn media_extension(&self) -> bool {
        self.name.ends_with("+me")
    }

    pub fn allows_start(&self, start: u8) -> bool {
        self.placements.iter().any(|p| p.start == start)
    }

    pub fn placement_at(&self, start: u8) -> Option<Placement> {
        self.placements.iter().copied().find(|p| p.start == start)
    }

    pub fn allowed_starts(&self) -> Vec<u8> {
        self.placements.iter().map(|p| p.start).collect()
    }

    /// The `NVML_GPU_INSTANCE_PROFILE_*` value NVML takes to describe this profile
    /// (`nvmlDeviceGetGpuInstanceProfileInfo`), as opposed to [`GiProfile::id`], which NVML
    /// returns in that info and takes when creating an instance. `nvml.h`: 1 slice = 0,
    /// 2 = 1, 3 = 2, 4 = 3, 7 = 4, 8 = 5, 6 = 6, 1-slice media variant (REV1) = 7, 2-slice
    /// media variant = 8, 1-slice with two memory slices (REV2) = 9.
    pub fn nvml_profile(&self) -> u32 {
        match (
            self.compute_slices,
            self.memory_slices,
            self.media_extension(),
        ) {
            (1, _, true) => 7,
            (2, _, true) => 8,
            (1, 2, false) => 9,
            (1, _, _) => 0,
            (2, _, _) => 1,
            (3, _, _) => 2,
            (4, _, _) => 3,
            (7, _, _) => 4,
            (8, _, _) => 5,
            (6, _, _) => 6,
            (c, _, _) => unreachable!("no NVML profile has {c} compute slices"),
        }
    }

    /// The compute-instance profile that takes the whole GPU instance.
    pub fn full_compute_profile(&self) -> &'static CiProfile {
        self.compute_profiles
            .iter()
            .find(|c| c.compute_slices == self.compute_slices)
            .expect("every GI profile has a whole-instance CI profile")
    }

    pub fn compute_profile_by_id(&self, id: u32) -> Option<&'static CiProfile> {
        self.compute_profiles.iter().find(|c| c.id == id)
    }

    pub fn compute_profile(&self, name: &str) -> Option<&'static CiProfile> {
        let want = super::normalize(name);
        self.compute_profiles
            .iter()
            .find(|c| super::normalize(c.name) == want)
    }
}

/// A MIG-capable GPU model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GpuModel {
    pub name: &'static str,
    /// Other spellings: marketing names, `nvidia-smi` product names, board variants.
    pub aliases: &'static [&'static str],
    /// PCI device IDs as mig-parted's `device-filter` writes them (`0xDDDDVVVV`).
    pub pci_device_ids: &'static [u32],
    pub memory_slices: u8,
    pub compute_slices: u8,
    pub profiles: &'static [GiProfile],
}

impl GpuModel {
    /// Looks a profile up by name, case-insensitively; a leading `MIG ` or `mig-` (as in
    /// `nvidia-smi -L` output or Kubernetes resource names) is accepted.
    pub fn profile(&self, name: &str) -> Option<&'static GiProfile> {
        let want = super::normalize(strip_mig_prefix(name.trim()));
        self.profiles
            .iter()
            .find(|p| super::normalize(p.name) == want)
    }

    pub fn profile_by_id(&self, id: u32) -> Option<&'static GiProfile> {
        self.profiles.iter().find(|p| p.id == id)
    }

    /// The profile NVML describes under `NVML_GPU_INSTANCE_PROFILE_*` value `nvml_profile`.
    pub fn profile_by_nvml(&self, nvml_profile: u32) -> Option<&'static GiProfile> {
        self.profiles
            .iter()
            .find(|p| p.nvml_profile() == nvml_profile)
    }

    pub fn profile_names(&self) -> Vec<&'static str> {
        self.profiles.iter().map(|p| p.name).collect()
    }

    /// True when `name` is this model's name, one of its aliases, or one of its PCI IDs.
    pub fn matches(&self, name: &str) -> bool {
        let want = super::normalize(name.trim());
        if super::normalize(self.name) == want
            || self.aliases.iter().any(|a| super::normalize(a) == want)
        {
            return true;
        }
        parse_pci_id(name).is_some_and(|id| self.pci_device_ids.contains(&id))
    }

    pub(crate) fn profile_index(&self, p: &GiProfile) -> usize {
        self.profiles
            .iter()
            .position(|q| q.name == p.name)
            .expect("profile of this model")
    }
}

fn strip_mig_prefix(s: &str) -> &str {
    for prefix in ["MIG ", "mig ", "mig-", "MIG-"] {
        if let Some(rest) = s.strip_prefix(prefix) {
            return rest.trim_start();
        }
    }
    s
}

fn parse_pci_id(s: &str) -> Option<u32> {
    let s = s.trim();
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    u32::from_str_radix(hex, 16).ok()
}

const fn pl(start: u8, size: u8) -> Placement {
    Placement { start, size }
}

// Placement sets shared by the 8-memory-slice parts (A100, H100, H200) ...
const ONE_OF_SEVEN: &[Placement] = &[
    pl(0, 1),
    pl(1, 1),
    pl(2, 1),
    pl(3, 1),
    pl(4, 1),
    pl(5, 1),
    pl(6, 1),
];
const ONE_DOUBLE_MEM: &[Placement] = &[pl(0, 2), pl(2, 2), pl(4, 2), pl(6, 2)];
const TWO_G: &[Placement] = &[pl(0, 2), pl(2, 2), pl(4, 2)];
const THREE_G: &[Placement] = &[pl(0, 4), pl(4, 4)];
const FOUR_G: &[Placement] = &[pl(0, 4)];
const SEVEN_G: &[Placement] = &[pl(0, 8)];
// ... and by the 4-slice A30.
const A30_ONE: &[Placement] = &[pl(0, 1), pl(1, 1), pl(2, 1), pl(3, 1)];
const A30_TWO: &[Placement] = &[pl(0, 2), pl(2, 2)];
const A30_FOUR: &[Placement] = &[pl(0, 4)];

/// Compute-instance profiles inside a GI with `$g` compute slices. IDs are the `-lcip`
/// profile IDs (1c=0, 2c=1, 3c=2, 4c=3, 7c=4). The guide's partitioning section shows a 4g GI
/// holding 1c/2c/3c/4c CIs; the per-GI instance counts are what `-lcip` lists.
macro_rules! cis {
    (1, $gi:literal) => {
        &[CiProfile {
            name: $gi,
            id: 0,
            compute_slices: 1,
            max_instances: 1,
        }]
    };
    (2, $gi:literal) => {
        &[
            CiProfile {
                name: concat!("1c.", $gi),
                id: 0,
                compute_slices: 1,
                max_instances: 2,
            },
            CiProfile {
                name: $gi,
                id: 1,
                compute_slices: 2,
                max_instances: 1,
            },
        ]
    };
    (3, $gi:literal) => {
        &[
            CiProfile {
                name: concat!("1c.", $gi),
                id: 0,
                compute_slices: 1,
                max_instances: 3,
            },
            CiProfile {
                name: concat!("2c.", $gi),
                id: 1,
                compute_slices: 2,
                max_instances: 1,
            },
            CiProfile {
                name: $gi,
                id: 2,
                compute_slices: 3,
                max_instances: 1,
            },
        ]
    };
    (4, $gi:literal) => {
        &[
            CiProfile {
                name: concat!("1c.", $gi),
                id: 0,
                compute_slices: 1,
                max_instances: 4,
            },
            CiProfile {
                name: concat!("2c.", $gi),
                id: 1,
                compute_slices: 2,
                max_instances: 2,
            },
            CiProfile {
                name: concat!("3c.", $gi),
                id: 2,
                compute_slices: 3,
                max_instances: 1,
            },
            CiProfile {
                name: $gi,
                id: 3,
                compute_slices: 4,
                max_instances: 1,
            },
        ]
    };
    (7, $gi:literal) => {
        &[
            CiProfile {
                name: concat!("1c.", $gi),
                id: 0,
                compute_slices: 1,
                max_instances: 7,
            },
            CiProfile {
                name: concat!("2c.", $gi),
                id: 1,
                compute_slices: 2,
                max_instances: 3,
            },
            CiProfile {
                name: concat!("3c.", $gi),
                id: 2,
                compute_slices: 3,
                max_instances: 2,
            },
            CiProfile {
                name: concat!("4c.", $gi),
                id: 3,
                compute_slices: 4,
                max_instances: 1,
            },
            CiProfile {
                name: $gi,
                id: 4,
                compute_slices: 7,
                max_instances: 1,
            },
        ]
    };
}

/// One GI profile row: name, ID, compute slices, memory slices, MiB, SMs, max, placements.
macro_rules! gi {
    ($name:literal, $id:literal, $c:tt, $m:literal, $mib:literal, $sm:literal, $max:literal, $pl:expr) => {
        GiProfile {
            name: $name,
            id: $id,
            compute_slices: $c,
            memory_slices: $m,
            memory_mib: $mib,
            sm_count: $sm,
            max_instances: $max,
            placements: $pl,
            compute_profiles: cis!($c, $name),
        }
    };
}

/// A100 40GB. `-lgip`: 4.75 / 9.62 / 19.50 / 39.25 GiB; 14 SMs per compute slice, 98 in all.
pub static A100_40GB: GpuModel = GpuModel {
    name: "A100-40GB",
    aliases: &[
        "A100-SXM4-40GB",
        "A100-PCIE-40GB",
        "NVIDIA A100-SXM4-40GB",
        "NVIDIA A100-PCIE-40GB",
        "A100 40GB",
        "A800-40GB",
        "NVIDIA A800 40GB Active",
    ],
    // A100-SXM4-40GB, A100-PCIE-40GB (two IDs), A800 40GB Active.
    pci_device_ids: &[0x20B0_10DE, 0x20B1_10DE, 0x20F1_10DE, 0x20F6_10DE],
    memory_slices: 8,
    compute_slices: 7,
    profiles: &[
        gi!("1g.5gb", 19, 1, 1, 4864, 14, 7, ONE_OF_SEVEN),
        gi!("1g.5gb+me", 20, 1, 1, 4864, 14, 1, ONE_OF_SEVEN),
        // Listed by the guide for A100-40GB; present in nvidia-smi from R525 drivers on.
        gi!("1g.10gb", 15, 1, 2, 9856, 14, 4, ONE_DOUBLE_MEM),
        gi!("2g.10gb", 14, 2, 2, 9856, 28, 3, TWO_G),
        gi!("3g.20gb", 9, 3, 4, 19968, 42, 2, THREE_G),
        gi!("4g.20gb", 5, 4, 4, 19968, 56, 1, FOUR_G),
        gi!("7g.40gb", 0, 7, 8, 40192, 98, 1, SEVEN_G),
    ],
};

/// A100 80GB: the guide names its profiles after the 80GB memory proportion with the same
/// geometry as A100-40GB. `-lgip`: 9.50 / 19.50 / 39.25 / 79.00 GiB.
pub static A100_80GB: GpuModel = GpuModel {
    name: "A100-80GB",
    aliases: &[
        "A100-SXM4-80GB",
        "A100-PCIE-80GB",
        "NVIDIA A100-SXM4-80GB",
        "NVIDIA A100 80GB PCIe",
        "A100 80GB",
        "A800-80GB",
        "A800-SXM4-80GB",
        "NVIDIA A800-SXM4-80GB",
        "NVIDIA A800 80GB PCIe",
    ],
    // A100-SXM4-80GB, A100 80GB PCIe, A800-SXM4-80GB, A800 80GB PCIe.
    pci_device_ids: &[0x20B2_10DE, 0x20B5_10DE, 0x20F3_10DE, 0x20F5_10DE],
    memory_slices: 8,
    compute_slices: 7,
    profiles: &[
        gi!("1g.10gb", 19, 1, 1, 9728, 14, 7, ONE_OF_SEVEN),
        gi!("1g.10gb+me", 20, 1, 1, 9728, 14, 1, ONE_OF_SEVEN),
        gi!("1g.20gb", 15, 1, 2, 19968, 14, 4, ONE_DOUBLE_MEM),
        gi!("2g.20gb", 14, 2, 2, 19968, 28, 3, TWO_G),
        gi!("3g.40gb", 9, 3, 4, 40192, 42, 2, THREE_G),
        gi!("4g.40gb", 5, 4, 4, 40192, 56, 1, FOUR_G),
        gi!("7g.80gb", 0, 7, 8, 80896, 98, 1, SEVEN_G),
    ],
};

/// A30 24GB: 4 compute and 4 memory slices. `-lgip`: 5.81 / 11.69 / 23.44 GiB; `-lgipp`:
/// 1g at {0,1,2,3}:1, 2g at {0,2}:2, 4g at {0}:4. The 1g+me profile needs R470+, the 2g+me
/// one R525+ (guide notes).
pub static A30_24GB: GpuModel = GpuModel {
    name: "A30-24GB",
    aliases: &["A30", "NVIDIA A30", "A30-PCIE-24GB", "NVIDIA A30-PCIE-24GB"],
    pci_device_ids: &[0x20B7_10DE],
    memory_slices: 4,
    compute_slices: 4,
    profiles: &[
        gi!("1g.6gb", 14, 1, 1, 5952, 14, 4, A30_ONE),
        gi!("1g.6gb+me", 21, 1, 1, 5952, 14, 1, A30_ONE),
        gi!("2g.12gb", 5, 2, 2, 11968, 28, 2, A30_TWO),
        gi!("2g.12gb+me", 6, 2, 2, 11968, 28, 1, A30_TWO),
        gi!("4g.24gb", 0, 4, 4, 24000, 56, 1, A30_FOUR),
    ],
};

/// H100 80GB (SXM5 and PCIe share names and geometry). `-lgip` on SXM5: 9.75 / 19.62 / 39.50 /
/// 79.25 GiB. SM counts are the SXM5 ones (132 in all); the guide does not give per-profile
/// SM counts for the PCIe board, which has fewer SMs.
pub static H100_80GB: GpuModel = GpuModel {
    name: "H100-80GB",
    aliases: &[
        "H100-SXM5-80GB",
        "H100 80GB HBM3",
        "NVIDIA H100 80GB HBM3",
        "H100-PCIE-80GB",
        "H100 PCIe",
        "NVIDIA H100 PCIe",
        "H100",
        "H800-80GB",
        "H800",
        "NVIDIA H800",
        "H800 PCIe",
        "NVIDIA H800 PCIe",
    ],
    // H100 80GB HBM3, H100 PCIe, H800 PCIe, H800 (SXM): the H800 shares the H100's geometry.
    pci_device_ids: &[0x2330_10DE, 0x2331_10DE, 0x2322_10DE, 0x2324_10DE],
    memory_slices: 8,
    compute_slices: 7,
    profiles: &[
        gi!("1g.10gb", 19, 1, 1, 9984, 16, 7, ONE_OF_SEVEN),
        gi!("1g.10gb+me", 20, 1, 1, 9984, 16, 1, ONE_OF_SEVEN),
        gi!("1g.20gb", 15, 1, 2, 20096, 26, 4, ONE_DOUBLE_MEM),
        gi!("2g.20gb", 14, 2, 2, 20096, 32, 3, TWO_G),
        gi!("3g.40gb", 9, 3, 4, 40448, 60, 2, THREE_G),
        gi!("4g.40gb", 5, 4, 4, 40448, 64, 1, FOUR_G),
        gi!("7g.80gb", 0, 7, 8, 81152, 132, 1, SEVEN_G),
    ],
};

/// H100 NVL 94GB. `-lgip` (R560): 10.75 / 21.62 / 46.38 / 93.12 GiB; `-lgipp` as H100-80GB.
pub static H100_94GB: GpuModel = GpuModel {
    name: "H100-94GB",
    aliases: &[
        "H100-NVL",
        "H100 NVL",
        "NVIDIA H100 NVL",
        "H100-NVL-94GB",
        "H800 NVL",
        "NVIDIA H800 NVL",
    ],
    // H100 NVL, H800 NVL.
    pci_device_ids: &[0x2321_10DE, 0x233A_10DE],
    memory_slices: 8,
    compute_slices: 7,
    profiles: &[
        gi!("1g.12gb", 19, 1, 1, 11008, 16, 7, ONE_OF_SEVEN),
        gi!("1g.12gb+me", 20, 1, 1, 11008, 16, 1, ONE_OF_SEVEN),
        gi!("1g.24gb", 15, 1, 2, 22144, 26, 4, ONE_DOUBLE_MEM),
        gi!("2g.24gb", 14, 2, 2, 22144, 32, 3, TWO_G),
        gi!("3g.47gb", 9, 3, 4, 47488, 60, 2, THREE_G),
        gi!("4g.47gb", 5, 4, 4, 47488, 64, 1, FOUR_G),
        gi!("7g.94gb", 0, 7, 8, 95360, 132, 1, SEVEN_G),
    ],
};

/// H200 141GB (SXM and NVL share the profile table). `-lgip`: 16.00 / 32.25 / 69.50 / 140.00
/// GiB. The guide's H200 table gives the same slice fractions as H100.
pub static H200_141GB: GpuModel = GpuModel {
    name: "H200-141GB",
    aliases: &[
        "H200",
        "H200-SXM5-141GB",
        "H200 141GB HBM3e",
        "NVIDIA H200 141GB HBM3e",
        "NVIDIA H200",
        "H200 NVL",
        "NVIDIA H200 NVL",
    ],
    // H200 (SXM), H200 NVL.
    pci_device_ids: &[0x2335_10DE, 0x233B_10DE],
    memory_slices: 8,
    compute_slices: 7,
    profiles: &[
        gi!("1g.18gb", 19, 1, 1, 16384, 16, 7, ONE_OF_SEVEN),
        gi!("1g.18gb+me", 20, 1, 1, 16384, 16, 1, ONE_OF_SEVEN),
        gi!("1g.35gb", 15, 1, 2, 33024, 26, 4, ONE_DOUBLE_MEM),
        gi!("2g.35gb", 14, 2, 2, 33024, 32, 3, TWO_G),
        gi!("3g.71gb", 9, 3, 4, 71168, 60, 2, THREE_G),
        gi!("4g.71gb", 5, 4, 4, 71168, 64, 1, FOUR_G),
        gi!("7g.141gb", 0, 7, 8, 143360, 132, 1, SEVEN_G),
    ],
};

/// Every model, in a stable order.
pub static MODELS: &[&GpuModel] = &[
    &A100_40GB,
    &A100_80GB,
    &A30_24GB,
    &H100_80GB,
    &H100_94GB,
    &H200_141GB,
];
