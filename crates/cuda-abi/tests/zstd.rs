//! The zstd decompressor against frames made by the reference `zstd` CLI (v1.5.4), stored in
//! `tests/data/zstd/` next to their originals, plus frames crafted here to reach header forms
//! and errors the CLI does not produce.
//!
//! How the vectors were made (`mixed.bin` is 136 KiB shaped like a cubin: an ELF header, x86
//! code and strings from `libgpuslice.so`, 16-byte SASS-like instruction words, zero padding):
//!   zstd -1 / -3 / -19 mixed.bin                     -> mixed.l1.zst, mixed.l3.zst, mixed.l19.zst
//!   zstd --ultra -22 < mixed.bin, zstd --long < ...  -> mixed.l22.zst, mixed.long.zst (no size)
//!   zstd empty.bin / random.bin / repeat.bin         -> *.zst (random: raw blocks)
//!   zstd --zstd=wlog=10 repeat.bin                   -> repeat.wlog10.zst (1 KiB blocks, RLE)
//!   zstd --no-check < repeat.bin                     -> repeat.stream-nocheck.zst
//!   zstd --check / --no-check tiny.txt               -> tiny.check.zst, tiny.nocheck.zst
//!   cat tiny.check.zst repeat.bin.zst                -> multi.zst
//!   skippable frame (magic 0x184D2A5A) + tiny.check.zst -> skippable.zst
//!   zstd --train (200 small text files); zstd -D dict dict.txt -> dict.zst (has a Dictionary_ID)
//!   zstd --zstd=mml=7 alphabet.bin                   -> alphabet.zst (Huffman weights stored
//!                                                       directly: only 12 byte values occur)
//!   zstd small.txt                                   -> small.zst (one Huffman stream)
//! The CLI never emitted RLE literals, RLE sequence codes or an empty sequences section for
//! these inputs, so `crafted-rle-literals.zst` and `crafted-rle-sequences.zst` were written by
//! hand (see their tests) and checked with `zstd -d` to give the `.bin` next to them.

use gpuslice_cuda_abi::zstd::{ZstdError, decompress};

macro_rules! data {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/zstd/",
            $name
        ))
        .as_slice()
    };
}

const NO_LIMIT: usize = usize::MAX;

fn tiny() -> &'static [u8] {
    data!("tiny.txt")
}
fn repeat() -> &'static [u8] {
    data!("repeat.bin")
}
fn mixed() -> &'static [u8] {
    data!("mixed.bin")
}

fn check(zst: &[u8], original: &[u8]) {
    let out = decompress(zst, NO_LIMIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.len(), original.len());
    assert!(
        out == original,
        "decompressed bytes differ from the original"
    );
}

/// The frame's header fields and everything after the header (blocks and checksum).
struct Frame<'a> {
    content_size: Option<u64>,
    checksum: bool,
    body: &'a [u8],
}

fn split_frame(zst: &[u8]) -> Frame<'_> {
    assert_eq!(zst[..4], [0x28, 0xB5, 0x2F, 0xFD]);
    let fhd = zst[4];
    let single = fhd & 0x20 != 0;
    let mut pos = 5 + usize::from(!single);
    pos += [0, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_len = match fhd >> 6 {
        0 => usize::from(single),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let mut fcs = 0u64;
    for (i, &b) in zst[pos..pos + fcs_len].iter().enumerate() {
        fcs |= u64::from(b) << (8 * i);
    }
    let content_size = match fcs_len {
        0 => None,
        2 => Some(fcs + 256),
        _ => Some(fcs),
    };
    Frame {
        content_size,
        checksum: fhd & 4 != 0,
        body: &zst[pos + fcs_len..],
    }
}

/// Rebuilds a frame header around `body`: `fcs_flag` selects the Frame_Content_Size width,
/// `window` is a Window_Descriptor (None: Single_Segment), the dictionary id takes
/// `dict_len` bytes.
fn reframe(
    frame: &Frame,
    fcs_flag: u8,
    window: Option<u8>,
    dict_len: usize,
    dict_id: u32,
) -> Vec<u8> {
    let dict_flag = match dict_len {
        0 => 0,
        1 => 1,
        2 => 2,
        _ => 3,
    };
    let fhd = (fcs_flag << 6)
        | if window.is_none() { 0x20 } else { 0 }
        | if frame.checksum { 4 } else { 0 }
        | dict_flag;
    let mut out = vec![0x28, 0xB5, 0x2F, 0xFD, fhd];
    out.extend(window);
    out.extend_from_slice(&dict_id.to_le_bytes()[..dict_len]);
    let size = frame.content_size.expect("frame has a content size");
    match (fcs_flag, window) {
        (0, None) => out.push(u8::try_from(size).unwrap()),
        (0, Some(_)) => {}
        (1, _) => out.extend_from_slice(&u16::try_from(size - 256).unwrap().to_le_bytes()),
        (2, _) => out.extend_from_slice(&u32::try_from(size).unwrap().to_le_bytes()),
        _ => out.extend_from_slice(&size.to_le_bytes()),
    }
    out.extend_from_slice(frame.body);
    out
}

/// Block_Type of each block in a single-frame input, to show what a vector exercises.
fn block_types(zst: &[u8]) -> Vec<u8> {
    let frame = split_frame(zst);
    let mut types = Vec::new();
    let mut pos = 0;
    loop {
        let b = frame.body;
        let header = u32::from(b[pos]) | u32::from(b[pos + 1]) << 8 | u32::from(b[pos + 2]) << 16;
        let kind = ((header >> 1) & 3) as u8;
        types.push(kind);
        pos += 3 + if kind == 1 { 1 } else { (header >> 3) as usize };
        if header & 1 != 0 {
            return types;
        }
    }
}

/// A fixed-seed xorshift64, so the fuzz loops are the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn empty_input_gives_empty_output() {
    assert_eq!(decompress(&[], 0), Ok(Vec::new()));
}

#[test]
fn empty_frame() {
    check(data!("empty.bin.zst"), data!("empty.bin"));
}

#[test]
fn tiny_text_with_and_without_checksum() {
    check(data!("tiny.check.zst"), tiny());
    check(data!("tiny.nocheck.zst"), tiny());
    assert!(split_frame(data!("tiny.check.zst")).checksum);
    assert!(!split_frame(data!("tiny.nocheck.zst")).checksum);
}

#[test]
fn repetitive_data() {
    check(data!("repeat.bin.zst"), repeat());
}

#[test]
fn small_window_gives_rle_blocks() {
    let zst = data!("repeat.wlog10.zst");
    let types = block_types(zst);
    assert!(types.contains(&1), "expected RLE blocks, got {types:?}");
    assert!(
        types.contains(&2),
        "expected compressed blocks, got {types:?}"
    );
    check(zst, repeat());
}

#[test]
fn streamed_frame_without_content_size_or_checksum() {
    let zst = data!("repeat.stream-nocheck.zst");
    let frame = split_frame(zst);
    assert_eq!(frame.content_size, None);
    assert!(!frame.checksum);
    check(zst, repeat());
}

#[test]
fn random_bytes_give_raw_blocks() {
    let zst = data!("random.bin.zst");
    assert_eq!(block_types(zst), [0]);
    check(zst, data!("random.bin"));
}

#[test]
fn mixed_level_1() {
    check(data!("mixed.l1.zst"), mixed());
}

#[test]
fn mixed_level_3() {
    let zst = data!("mixed.l3.zst");
    assert_eq!(block_types(zst), [2, 1]);
    check(zst, mixed());
}

#[test]
fn mixed_level_19() {
    check(data!("mixed.l19.zst"), mixed());
}

#[test]
fn mixed_ultra_22() {
    check(data!("mixed.l22.zst"), mixed());
}

#[test]
fn mixed_long() {
    check(data!("mixed.long.zst"), mixed());
}

#[test]
fn huffman_weights_stored_directly() {
    check(data!("alphabet.zst"), data!("alphabet.bin"));
}

#[test]
fn single_huffman_stream() {
    check(data!("small.zst"), data!("small.txt"));
}

/// One compressed block: RLE literals ("Q" x 20) and Number_of_Sequences = 0.
#[test]
fn crafted_rle_literals_without_sequences() {
    check(
        data!("crafted-rle-literals.zst"),
        data!("crafted-rle-literals.bin"),
    );
}

/// One compressed block: raw literals "abcdef" and two sequences whose three codes are all
/// RLE_Mode (LL code 3, OF code 2, ML code 2), so the bitstream holds only offset extra bits.
#[test]
fn crafted_rle_sequence_codes() {
    check(
        data!("crafted-rle-sequences.zst"),
        data!("crafted-rle-sequences.bin"),
    );
}

#[test]
fn concatenated_frames() {
    let expected = [tiny(), repeat()].concat();
    check(data!("multi.zst"), &expected);
}

#[test]
fn skippable_frames_are_skipped() {
    check(data!("skippable.zst"), tiny());
    // Every one of the 16 skippable magic numbers, alone and around a frame.
    for nibble in 0..16u32 {
        let mut skip = (0x184D_2A50 | nibble).to_le_bytes().to_vec();
        skip.extend_from_slice(&3u32.to_le_bytes());
        skip.extend_from_slice(b"xyz");
        assert_eq!(decompress(&skip, NO_LIMIT), Ok(Vec::new()));
        let input = [skip.as_slice(), data!("tiny.check.zst"), &skip].concat();
        check(&input, tiny());
    }
}

#[test]
fn skippable_frame_longer_than_input_is_an_error() {
    let mut skip = 0x184D_2A50u32.to_le_bytes().to_vec();
    skip.extend_from_slice(&100u32.to_le_bytes());
    skip.extend_from_slice(b"short");
    assert_eq!(decompress(&skip, NO_LIMIT), Err(ZstdError::Truncated));
}

#[test]
fn every_content_size_width() {
    let tiny_frame = split_frame(data!("tiny.check.zst"));
    // 1 byte (as made by the CLI), 4 and 8 bytes, single segment.
    for fcs_flag in [0, 2, 3] {
        check(&reframe(&tiny_frame, fcs_flag, None, 0, 0), tiny());
    }
    // The 2-byte form stores size - 256, so it needs a larger frame.
    let repeat_frame = split_frame(data!("repeat.bin.zst"));
    for fcs_flag in [1, 2, 3] {
        check(&reframe(&repeat_frame, fcs_flag, None, 0, 0), repeat());
    }
    // With a Window_Descriptor (128 KiB) instead of Single_Segment, including no size at all.
    let mixed_frame = split_frame(data!("mixed.l3.zst"));
    for fcs_flag in [0, 2, 3] {
        check(
            &reframe(&mixed_frame, fcs_flag, Some(7 << 3), 0, 0),
            mixed(),
        );
    }
}

#[test]
fn zero_dictionary_id_is_accepted() {
    let frame = split_frame(data!("tiny.check.zst"));
    for dict_len in [1, 2, 4] {
        check(&reframe(&frame, 0, None, dict_len, 0), tiny());
    }
}

#[test]
fn dictionary_frames_are_refused() {
    assert_eq!(
        split_frame(data!("dict.zst")).content_size,
        Some(data!("dict.txt").len() as u64)
    );
    let err = decompress(data!("dict.zst"), NO_LIMIT).unwrap_err();
    assert!(
        matches!(err, ZstdError::DictionaryUnsupported(id) if id != 0),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("dictionaries are not supported"),
        "{err}"
    );

    let frame = split_frame(data!("tiny.check.zst"));
    for (len, id) in [(1, 7), (2, 0x1234), (4, 0xDEAD_BEEF)] {
        let err = decompress(&reframe(&frame, 0, None, len, id), NO_LIMIT).unwrap_err();
        assert_eq!(err, ZstdError::DictionaryUnsupported(id));
    }
}

#[test]
fn truncated_input_is_an_error() {
    let vectors: [&[u8]; 10] = [
        data!("empty.bin.zst"),
        data!("small.zst"),
        data!("alphabet.zst"),
        data!("crafted-rle-sequences.zst"),
        data!("tiny.check.zst"),
        data!("tiny.nocheck.zst"),
        data!("repeat.bin.zst"),
        data!("repeat.wlog10.zst"),
        data!("random.bin.zst"),
        data!("mixed.l19.zst"),
    ];
    for zst in vectors {
        // Every cut of the small vectors; about 60 spread over the larger ones.
        let step = (zst.len() / 60).max(1);
        for cut in (1..zst.len()).step_by(step).chain([zst.len() - 1]) {
            let result = decompress(&zst[..cut], NO_LIMIT);
            assert!(result.is_err(), "cut at {cut} of {} decoded", zst.len());
        }
    }
}

#[test]
fn corrupted_content_fails_the_checksum() {
    let zst = data!("tiny.check.zst");
    // A raw block: magic, descriptor, size, block header, then the text itself.
    assert_eq!(block_types(zst), [0]);
    let mut bad = zst.to_vec();
    bad[12] ^= 0x20;
    let err = decompress(&bad, NO_LIMIT).unwrap_err();
    assert!(matches!(err, ZstdError::ChecksumMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("checksum"), "{err}");

    let mut bad = zst.to_vec();
    *bad.last_mut().unwrap() ^= 1;
    assert!(matches!(
        decompress(&bad, NO_LIMIT),
        Err(ZstdError::ChecksumMismatch { .. })
    ));
}

#[test]
fn flipped_bytes_in_compressed_frames_are_errors() {
    for zst in [
        data!("mixed.l19.zst"),
        data!("repeat.bin.zst"),
        data!("mixed.l1.zst"),
    ] {
        for at in (16..zst.len()).step_by(zst.len() / 40 + 1) {
            let mut bad = zst.to_vec();
            bad[at] ^= 0x5A;
            assert!(
                decompress(&bad, NO_LIMIT).is_err(),
                "flip at {at} of {} decoded",
                zst.len()
            );
        }
    }
}

#[test]
fn output_limit() {
    let n = mixed().len();
    // With a Frame_Content_Size the frame is refused up front; without one, part way.
    for zst in [data!("mixed.l3.zst"), data!("mixed.l22.zst")] {
        assert_eq!(decompress(zst, n - 1), Err(ZstdError::OutputLimit(n - 1)));
        assert_eq!(decompress(zst, n).map(|v| v.len()), Ok(n));
    }
    assert_eq!(
        decompress(data!("repeat.stream-nocheck.zst"), 100),
        Err(ZstdError::OutputLimit(100))
    );
    // The limit covers all frames together.
    let both = tiny().len() + repeat().len();
    assert_eq!(
        decompress(data!("multi.zst"), both - 1),
        Err(ZstdError::OutputLimit(both - 1))
    );
    assert_eq!(
        decompress(data!("multi.zst"), both).map(|v| v.len()),
        Ok(both)
    );
    let err = decompress(data!("mixed.l3.zst"), 10).unwrap_err();
    assert_eq!(
        err.to_string(),
        "zstd: decompressed data exceeds the limit of 10 bytes"
    );
}

#[test]
fn malformed_headers() {
    assert_eq!(
        decompress(b"\x7fELF\x02\x01\x01\x00", NO_LIMIT),
        Err(ZstdError::BadMagic(0x464C_457F))
    );
    assert_eq!(decompress(b"\x28\xb5", NO_LIMIT), Err(ZstdError::Truncated));
    // Trailing garbage after a good frame is not a frame.
    let input = [data!("tiny.check.zst"), b"\0\0\0\0"].concat();
    assert_eq!(decompress(&input, NO_LIMIT), Err(ZstdError::BadMagic(0)));

    let mut reserved_bit = data!("tiny.check.zst").to_vec();
    reserved_bit[4] |= 0x08;
    assert!(matches!(
        decompress(&reserved_bit, NO_LIMIT),
        Err(ZstdError::Corrupt(_))
    ));

    // Block type 3 is reserved.
    let mut reserved_block = data!("tiny.check.zst").to_vec();
    reserved_block[6] |= 0x06;
    let err = decompress(&reserved_block, NO_LIMIT).unwrap_err();
    assert_eq!(err.to_string(), "zstd: corrupt data: reserved block type");

    // A raw block larger than the frame's window (here the 41-byte content).
    let mut big_block = data!("tiny.check.zst").to_vec();
    big_block[6] = (big_block[6] & 7) | (42 << 3);
    let err = decompress(&big_block, NO_LIMIT).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("zstd: corrupt data: block size exceeds"),
        "{err}"
    );
}

#[test]
fn fuzzed_frames_never_panic() {
    let vectors: [&[u8]; 12] = [
        data!("tiny.check.zst"),
        data!("small.zst"),
        data!("alphabet.zst"),
        data!("crafted-rle-literals.zst"),
        data!("crafted-rle-sequences.zst"),
        data!("repeat.bin.zst"),
        data!("repeat.wlog10.zst"),
        data!("repeat.stream-nocheck.zst"),
        data!("multi.zst"),
        data!("mixed.l1.zst"),
        data!("mixed.l19.zst"),
        data!("mixed.long.zst"),
    ];
    let limit = 1 << 20;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..2000 {
        let mut input = vectors[rng.below(vectors.len())].to_vec();
        // Mostly near the start, where the headers and tables are.
        let span = if rng.below(2) == 0 {
            input.len().min(64)
        } else {
            input.len()
        };
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(span);
            match rng.below(3) {
                0 => input[at] ^= 1 << rng.below(8),
                1 => input[at] = rng.next() as u8,
                _ => input[at] = input[at].wrapping_add(1),
            }
        }
        if rng.below(8) == 0 {
            input.truncate(rng.below(input.len()));
        }
        if let Ok(out) = decompress(&input, limit) {
            assert!(out.len() <= limit);
        }
    }
}

#[test]
fn random_frames_never_panic() {
    // A valid magic number and random everything else, to reach the header and table paths.
    let mut rng = XorShift(12345);
    for _ in 0..2000 {
        let mut input = vec![0x28, 0xB5, 0x2F, 0xFD];
        input.extend((0..rng.below(200)).map(|_| rng.next() as u8));
        let _ = decompress(&input, 1 << 16);
    }
}
