//! Module images of every kind, read as the driver receives them: hand-built cubins, PTX and
//! fatbinaries (there is no CUDA compiler here), malformed ones refused by name, and arbitrary
//! bytes that never make the reader panic or read past what it was given.

use gpuslice_cuda_abi::fatbin::{self, EntryKind};
use gpuslice_cuda_abi::imagegen::{self, Pack, Var};
use gpuslice_cuda_abi::modimage::{Image, ImageError, read, read_ptr};
use gpuslice_cuda_abi::zstd;
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

fn var(name: &str, bytes: u64) -> Var<'_> {
    Var {
        name,
        bytes,
        init: false,
    }
}

fn module(i: &Image) -> &gpuslice_cuda_abi::image::Module {
    i.for_device(9, 0).expect("a module for sm_90")
}

#[test]
fn a_cubin_declares_its_kernels_and_its_zero_filled_and_initialised_variables() {
    let img = imagegen::cubin(
        &["train", "infer"],
        &["helper"],
        &[
            var("weights", 2 * GIB),
            Var {
                name: "table",
                bytes: 100,
                init: true,
            },
            var("bias", 10),
        ],
    );
    // The file is small: the 2 GiB is a section header's word, not bytes.
    assert!(img.len() < 4096, "{}", img.len());
    let i = read(&img).unwrap();
    assert!(matches!(i, Image::Cubin(_)));
    let m = module(&i);
    assert_eq!(
        m.kernels,
        ["train", "infer"],
        "device functions are not kernels"
    );
    let v = |n: &str| m.globals.vars.iter().find(|v| v.name == n).unwrap().clone();
    // .nv.global.init (100 B) first, then .nv.global at the next 256-byte boundary.
    assert_eq!((v("table").offset, v("table").bytes), (0, 100));
    assert_eq!((v("weights").offset, v("weights").bytes), (256, 2 * GIB));
    assert_eq!(v("bias").offset, 256 + 2 * GIB);
    assert_eq!(
        m.globals.footprint,
        (256 + 2 * GIB + 10).next_multiple_of(4096)
    );
    assert_eq!(i.charge().bytes, m.globals.footprint);
    // The same bytes through a pointer, sized by the cubin's own headers.
    assert_eq!(unsafe { read_ptr(img.as_ptr().cast()) }, Some(Ok(i)));
}

#[test]
fn a_cubin_without_variables_costs_nothing() {
    let i = read(&imagegen::cubin(&["k"], &[], &[])).unwrap();
    assert_eq!(i.charge().bytes, 0);
    assert_eq!(module(&i).kernels, ["k"]);
}

#[test]
fn ptx_declares_entries_and_global_arrays() {
    let text = imagegen::ptx(&["saxpy", "fill"], &[("big", 2 * GIB), ("small", 3)]);
    let i = read(text.as_bytes()).unwrap();
    assert!(matches!(i, Image::Ptx(_)));
    let m = module(&i);
    assert_eq!(m.kernels, ["saxpy", "fill"]);
    assert_eq!(m.globals.vars[0].bytes, 2 * GIB);
    assert_eq!(m.globals.vars[1].offset, 2 * GIB);
    assert_eq!(m.globals.footprint, 2 * GIB + 4096);
    let c = std::ffi::CString::new(text).unwrap();
    assert_eq!(unsafe { read_ptr(c.as_ptr().cast()) }, Some(Ok(i)));
}

#[test]
fn ptx_declarations_in_the_forms_compilers_write() {
    let text = r#"
        // comment with .global .b8 fake[99999];
        .version 8.4
        .target sm_90, debug
        .address_size 64
        .file 1 "kernel.cu"
        .extern .global .align 4 .u32 elsewhere[1000000];
        .visible .global .align 4 .u32 counter;
        .global .align 16 .v4 .f32 quads[0x10];
        .global .f64 grid[4][8];
        .global .u32 table[] = {1, 2, 3, 4, 5};
        .global .attribute(.managed) .align 8 .u64 managed_ptr = 0;
        .const .align 4 .b8 constants[65536];
        /* .global .b8 commented[1000000]; */
        .visible .func helper(.param .b32 x) { ld.global.u32 %r1, [counter]; ret; }
        .weak .entry
            mine (.param .u64 p)
        {
            .reg .pred %p;
            { .reg .b32 inner; }
            ret;
        }
    "#;
    let i = read(text.as_bytes()).unwrap();
    let m = module(&i);
    assert_eq!(m.kernels, ["mine"]);
    let got: Vec<(&str, u64, u64)> = m
        .globals
        .vars
        .iter()
        .map(|v| (v.name.as_str(), v.offset, v.bytes))
        .collect();
    assert_eq!(
        got,
        [
            ("counter", 0, 4),
            ("quads", 16, 256),
            ("grid", 272, 256),
            ("table", 528, 20),
            ("managed_ptr", 552, 8),
        ]
    );
    assert_eq!(m.globals.footprint, 4096);
}

#[test]
fn ptx_that_cannot_be_sized_is_refused_by_name() {
    for (decl, says) in [
        (".global .b8 a[];", "empty dimension"),
        (".global .b8 a[lots];", "dimension lots"),
        (".global .b8 a[0xffffffffffffffff][2];", "overflows"),
        (".global .weird a;", ".weird"),
        (".global .align 3 .b8 a;", ".align"),
        (".global .b8 a", "no ';'"),
        (".entry k() { ret;", "not closed"),
    ] {
        let text = format!(".version 8.0\n.target sm_90\n{decl}\n");
        let e = read(text.as_bytes()).unwrap_err();
        assert!(e.to_string().contains(says), "{decl}: {e}");
    }
    assert_eq!(read(b"image"), Err(ImageError::Unrecognized));
    assert_eq!(read(b""), Err(ImageError::Unrecognized));
}

#[test]
fn a_fatbinary_loads_the_entry_for_the_gpu_and_is_charged_its_largest() {
    let small = imagegen::cubin(&["k"], &[], &[var("v", 4096)]);
    let large = imagegen::cubin(&["k"], &[], &[var("v", GIB)]);
    let ptx = imagegen::ptx(&["k"], &[("v", 2 * GIB)]);
    let fb = imagegen::fatbin(
        &[
            (EntryKind::Cubin, 80, &large),
            (EntryKind::Cubin, 90, &small),
            (EntryKind::Ptx, 90, ptx.as_bytes()),
        ],
        false,
    );
    let i = read(&fb).unwrap();
    assert_eq!(
        module(&i).globals.footprint,
        4096,
        "an sm_90 GPU loads the sm_90 cubin"
    );
    assert_eq!(
        i.for_device(8, 6).unwrap().globals.footprint,
        GIB,
        "an sm_86 GPU runs the sm_80 cubin"
    );
    assert_eq!(
        i.for_device(10, 0).unwrap().globals.footprint,
        2 * GIB,
        "a newer GPU compiles the PTX"
    );
    assert_eq!(i.for_device(7, 0), None, "nothing runs on sm_70");
    let c = i.charge();
    assert_eq!(c.bytes, 2 * GIB);
    assert!(c.note.unwrap().contains("largest"));
    // As the bare fatbinary and through nvcc's wrapper.
    assert_eq!(unsafe { read_ptr(fb.as_ptr().cast()) }, Some(Ok(i.clone())));
    let w = imagegen::wrapper(&fb);
    assert_eq!(
        unsafe { read_ptr((&w as *const imagegen::Wrapper).cast()) },
        Some(Ok(i))
    );
}

#[test]
fn compressed_entries_are_read_whole() {
    let cubin = imagegen::cubin(
        &["k"],
        &["h"],
        &[
            var("v", GIB),
            Var {
                name: "t",
                bytes: 3000,
                init: true,
            },
        ],
    );
    let ptx = imagegen::ptx(&["p"], &[("g", 12345)]);
    let plain = read(&imagegen::fatbin(
        &[
            (EntryKind::Cubin, 90, &cubin),
            (EntryKind::Ptx, 90, ptx.as_bytes()),
        ],
        false,
    ))
    .unwrap();
    let packed = imagegen::fatbin(
        &[
            (EntryKind::Cubin, 90, &cubin),
            (EntryKind::Ptx, 90, ptx.as_bytes()),
        ],
        true,
    );
    assert!(
        packed.len() < cubin.len(),
        "the runs of the initialiser compress"
    );
    assert_eq!(read(&packed).unwrap(), plain);
    assert_eq!(
        fatbin::lz4_block(&imagegen::lz4(&[7; 1000]), 1000).unwrap(),
        [7; 1000]
    );
}

/// `nvcc --compress-mode=size|balance` (CUDA 13's default) stores entries as zstd frames.
#[test]
fn zstd_entries_are_read_like_plain_ones() {
    let cubin = imagegen::cubin(&["k"], &[], &[var("v", 64), var("w", 1 << 20)]);
    let entries = [(EntryKind::Cubin, 90, &cubin[..])];
    let plain = read(&imagegen::fatbin_packed(&entries, Pack::Plain)).unwrap();
    let packed = imagegen::fatbin_packed(&entries, Pack::Zstd);
    assert_eq!(read(&packed).unwrap(), plain);
    // A real compressor's frame of the same cubin (levels 3 and 19 of the zstd CLI are
    // exercised on cubin-like data in tests/zstd.rs).
    assert_eq!(
        zstd::decompress(&imagegen::zstd_raw(&cubin), 1 << 30).unwrap(),
        cubin
    );
    // The header's uncompressed size must be what the frames hold.
    let mut lying = packed.clone();
    let n = u64::from_le_bytes(lying[16 + 56..16 + 64].try_into().unwrap());
    lying[16 + 56..16 + 64].copy_from_slice(&(n + 8).to_le_bytes());
    assert!(
        matches!(read(&lying), Err(ImageError::Malformed(m)) if m.contains("uncompressedSize"))
    );
    // A flipped frame byte is an error, not a wrong size.
    let mut broken = packed;
    broken[16 + 64] ^= 0xff;
    assert!(matches!(read(&broken), Err(ImageError::Malformed(m)) if m.contains("zstd")));
}

#[test]
fn lying_headers_are_refused() {
    let cubin = imagegen::cubin(&["k"], &[], &[var("v", 64)]);

    // A fatbinary whose fatSize runs past the bytes.
    let mut fb = imagegen::fatbin(&[(EntryKind::Cubin, 90, &cubin)], false);
    fb[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(read(&fb), Err(ImageError::Malformed(m)) if m.contains("past")));
    // An entry whose payload runs past the container.
    let mut fb = imagegen::fatbin(&[(EntryKind::Cubin, 90, &cubin)], false);
    fb[16 + 8..16 + 16].copy_from_slice(&(cubin.len() as u64 + 4096).to_le_bytes());
    assert!(matches!(read(&fb), Err(ImageError::Malformed(m)) if m.contains("past")));
    // A compressed entry that claims more than it expands to.
    let mut fb = imagegen::fatbin(&[(EntryKind::Cubin, 90, &cubin)], true);
    let n = u64::from_le_bytes(fb[16 + 56..16 + 64].try_into().unwrap());
    fb[16 + 56..16 + 64].copy_from_slice(&(n + 1).to_le_bytes());
    assert!(read(&fb).is_err());

    // A cubin whose section table lies past its end, and one whose variable lies outside its
    // section.
    let mut c = cubin.clone();
    let n = c.len() as u64;
    c[40..48].copy_from_slice(&n.to_le_bytes());
    assert!(matches!(read(&c), Err(ImageError::Malformed(m)) if m.contains("past")));
    // The symbol table comes before the section headers: the first 0x12345 is st_size.
    let mut c = imagegen::cubin(&[], &[], &[var("v", 0x12345)]);
    let sym = c
        .windows(8)
        .position(|w| w == 0x12345u64.to_le_bytes())
        .unwrap();
    c[sym..sym + 8].copy_from_slice(&0x12346u64.to_le_bytes());
    assert!(matches!(read(&c), Err(ImageError::Malformed(m)) if m.contains("outside")));
    // Not for the CUDA machine, or 32-bit.
    let mut c = cubin.clone();
    c[18] = 62;
    assert!(matches!(read(&c), Err(ImageError::Malformed(m)) if m.contains("EM_CUDA")));
    let mut c = cubin.clone();
    c[4] = 1;
    assert!(matches!(read(&c), Err(ImageError::Unsupported(_))));
}

/// Every image of every kind, cut short anywhere, is refused or read; never a panic.
#[test]
fn truncated_images_are_refused_not_overread() {
    let cubin = imagegen::cubin(
        &["k"],
        &["h"],
        &[
            var("v", GIB),
            Var {
                name: "t",
                bytes: 40,
                init: true,
            },
        ],
    );
    let ptx = imagegen::ptx(&["p"], &[("g", 12345)]);
    let fb = imagegen::fatbin(
        &[
            (EntryKind::Cubin, 90, &cubin),
            (EntryKind::Ptx, 90, ptx.as_bytes()),
        ],
        true,
    );
    for img in [&cubin, ptx.as_bytes(), &fb] {
        for n in 0..img.len() {
            // An exact-size copy: any read past `n` would be caught by the slice bounds.
            let cut = img[..n].to_vec();
            let _ = read(&cut);
        }
    }
    for n in 0..cubin.len() - 1 {
        assert!(read(&cubin[..n]).is_err(), "a cubin cut to {n} bytes");
    }
    for n in 0..fb.len() - 8 {
        assert!(read(&fb[..n]).is_err(), "a fatbinary cut to {n} bytes");
    }
}

fn mutate(mut base: Vec<u8>, edits: &[(usize, u8)]) -> Vec<u8> {
    for &(at, b) in edits {
        if !base.is_empty() {
            let n = base.len();
            base[at % n] = b;
        }
    }
    base
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes, and each kind's magic followed by arbitrary bytes: never a panic (the
    /// reader works on the slice, so it cannot read past its length).
    #[test]
    fn arbitrary_bytes_never_panic(
        magic in 0usize..5,
        tail in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut b: Vec<u8> = match magic {
            0 => vec![],
            1 => vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0x33],
            2 => fatbin::MAGIC.to_le_bytes().into(),
            3 => b".version 8.0\n".to_vec(),
            _ => b"gpuslice-sim-image\n".to_vec(),
        };
        b.extend_from_slice(&tail);
        let _ = read(&b);
    }

    /// Real images with random bytes overwritten: refused or read, never a panic, and a
    /// charge never below what the parts that were read declare.
    #[test]
    fn mutated_images_never_panic(
        which in 0usize..4,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let cubin = imagegen::cubin(&["k"], &["h"], &[var("v", 1 << 20), Var { name: "t", bytes: 40, init: true }]);
        let ptx = imagegen::ptx(&["p"], &[("g", 12345)]);
        let base = match which {
            0 => cubin,
            1 => ptx.into_bytes(),
            2 => imagegen::fatbin(&[(EntryKind::Cubin, 90, &cubin), (EntryKind::Ptx, 90, ptx.as_bytes())], false),
            _ => imagegen::fatbin(&[(EntryKind::Cubin, 90, &cubin), (EntryKind::Ptx, 90, ptx.as_bytes())], true),
        };
        if let Ok(i) = read(&mutate(base, &edits)) {
            let c = i.charge();
            if let Image::Fatbin(e) = &i {
                prop_assert!(e.iter().all(|e| e.module.globals.footprint <= c.bytes));
            }
        }
    }

    /// LZ4 blocks of arbitrary bytes: an error or exactly the size asked for.
    #[test]
    fn lz4_of_arbitrary_bytes(src in proptest::collection::vec(any::<u8>(), 0..300), want in 0u64..5000) {
        if let Ok(out) = fatbin::lz4_block(&src, want) {
            prop_assert_eq!(out.len() as u64, want);
        }
    }

    /// The encoder used by the tests round-trips through the decoder.
    #[test]
    fn lz4_round_trip(data in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..2000)) {
        prop_assert_eq!(fatbin::lz4_block(&imagegen::lz4(&data), data.len() as u64).unwrap(), data);
    }
}

/// An image read through a pointer is read to exactly the end its headers give: placed so it
/// ends at an unreadable page, every kind is read whole without touching that page.
#[test]
fn images_read_through_a_pointer_stop_at_their_own_end() {
    let page = 4096usize;
    let cubin = imagegen::cubin(
        &["k"],
        &["h"],
        &[
            var("v", GIB),
            Var {
                name: "t",
                bytes: 40,
                init: true,
            },
        ],
    );
    let ptx = std::ffi::CString::new(imagegen::ptx(&["p"], &[("g", 12345)])).unwrap();
    let fb = imagegen::fatbin(
        &[
            (EntryKind::Cubin, 90, &cubin),
            (EntryKind::Ptx, 90, ptx.as_bytes()),
        ],
        true,
    );
    for img in [&cubin[..], ptx.as_bytes_with_nul(), &fb[..]] {
        let pages = img.len().div_ceil(page) + 1;
        // SAFETY: a fresh private mapping; the last page is made unreadable.
        let base = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                pages * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(
                libc::mprotect(
                    p.cast::<u8>().add((pages - 1) * page).cast(),
                    page,
                    libc::PROT_NONE
                ),
                0
            );
            p.cast::<u8>()
        };
        let at = (pages - 1) * page - img.len();
        // SAFETY: `at..at + len` lies in the readable pages.
        let placed = unsafe {
            std::ptr::copy_nonoverlapping(img.as_ptr(), base.add(at), img.len());
            base.add(at)
        };
        let direct = read(img).unwrap();
        assert_eq!(unsafe { read_ptr(placed.cast()) }, Some(Ok(direct)));
        unsafe { libc::munmap(base.cast(), pages * page) };
    }
}
