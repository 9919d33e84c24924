//! Real module images under the cap: cubins, PTX and fatbinaries (bare, wrapped, compressed),
//! loaded from memory and from files, as modules and as libraries. Their `__device__`
//! variables are charged from load to unload, a load past the cap is refused with
//! `CUDA_ERROR_OUT_OF_MEMORY` before the driver places anything, and a tenant that rewrites its
//! image while it loads cannot slip past the charge. Every step is checked from both sides:
//! the tenant's ledger and the simulated device's own count.

mod common;
use common::*;
use serde_json::Value;

/// Runs `gpuslice-probe exact ARGS` as a tenant capped at 1 GiB; its steps and stderr.
fn scenario(m: &Machine, name: &str, args: &[&str]) -> (Vec<Value>, String) {
    let p = probe();
    let mut all = vec![p.as_str(), "exact"];
    all.extend_from_slice(args);
    let out = m.tenant(name, "1GiB", &all).output().unwrap();
    let r = report(&out);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{name}: {r}\n{err}");
    (r["steps"].as_array().unwrap().clone(), err)
}

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {steps:?}"))
}

const KINDS: [&str; 8] = [
    "cubin",
    "ptx",
    "fatbin",
    "fatbin_zstd",
    "wrapper",
    "cubin_file",
    "library",
    "library_file",
];

#[test]
fn real_module_images_are_charged_refused_past_the_cap_and_given_back() {
    let m = Machine::new("module-images");
    let (steps, err) = scenario(&m, "images", &["images", "2GiB", "256MiB", "600MiB"]);
    for s in &steps {
        let name = s["step"].as_str().unwrap();
        assert!(u(s, "device") <= GIB, "the device passed the cap at {s}");
        if name != "mixed_load" {
            assert_eq!(
                u(s, "ledger"),
                u(s, "device"),
                "ledger and device differ at {s}"
            );
        }
    }
    for kind in KINDS {
        let big = step(&steps, &format!("{kind}_load_big"));
        assert_eq!(
            (u(big, "r"), u(big, "ledger")),
            (2, CTX),
            "{kind}: 2 GiB of variables under a 1 GiB cap is refused with OUT_OF_MEMORY"
        );
        let small = step(&steps, &format!("{kind}_load_small"));
        assert_eq!(
            (u(small, "r"), u(small, "ledger")),
            (0, CTX + 256 * MIB),
            "{kind}"
        );
        assert_eq!(u(step(&steps, &format!("{kind}_kernel")), "r"), 0, "{kind}");
        assert_eq!(
            u(step(&steps, &format!("{kind}_missing")), "r"),
            500,
            "{kind}: a name the image holds no kernel of is NOT_FOUND"
        );
        let got = step(&steps, &format!("{kind}_global_{}", 256 * MIB));
        assert_eq!(
            u(got, "r"),
            0,
            "{kind}: the variable is read back with its size"
        );
        let unloaded = step(&steps, &format!("{kind}_unload"));
        assert_eq!(
            (u(unloaded, "r"), u(unloaded, "ledger")),
            (0, CTX),
            "{kind}"
        );
    }
    // A fatbinary whose entries differ is charged its largest while loaded; the GPU (sm_90)
    // takes the smaller entry it runs.
    let mixed = step(&steps, "mixed_load");
    assert_eq!(u(mixed, "r"), 0, "{mixed}");
    assert_eq!(u(mixed, "ledger"), CTX + 600 * MIB, "{mixed}");
    assert_eq!(u(mixed, "device"), CTX + 256 * MIB, "{mixed}");
    assert!(err.contains("charging the largest"), "{err}");
    let gone = step(&steps, "mixed_unload");
    assert_eq!((u(gone, "ledger"), u(gone, "device")), (CTX, CTX), "{gone}");
    // What cannot be sized is refused with INVALID_IMAGE before the driver loads it, and says
    // why.
    for name in ["not_an_image", "past_its_end"] {
        let s = step(&steps, &format!("{name}_load"));
        assert_eq!((u(s, "r"), u(s, "ledger")), (200, CTX), "{s}");
    }
    assert!(err.contains("not a module image"), "{err}");
    assert!(err.contains("past the image"), "{err}");
}

#[test]
fn an_image_rewritten_while_it_loads_is_charged_what_the_driver_loads() {
    let m = Machine::new("module-image-race");
    // Another thread flips the cubin's .nv.global between 256 MiB and 2 GiB all along.
    let (steps, _) = scenario(&m, "race", &["image-race", "256MiB", "2GiB", "300"]);
    let mut loaded = 0;
    for s in &steps {
        assert!(u(s, "device") <= GIB, "the device passed the cap at {s}");
        assert_eq!(
            u(s, "ledger"),
            u(s, "device"),
            "ledger and device differ at {s}"
        );
        if s["step"] == "load" {
            match u(s, "r") {
                0 => {
                    loaded += 1;
                    // Charged what it holds: the 2 GiB reading is never the one loaded.
                    assert_eq!(u(s, "ledger"), CTX + 256 * MIB, "{s}");
                }
                2 => {}
                r => panic!("load answered {r}: {s}"),
            }
        }
    }
    assert!(loaded > 0, "some loads saw the small image: {steps:?}");
}
