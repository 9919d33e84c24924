//! A small Zstandard decompressor (RFC 8878), written for fatbinaries.
//!
//! `nvcc --compress-mode=size|balance` stores fatbinary entries as zstd frames. The interposer
//! has to read those entries to find a module's `__device__` variables and size them, and it
//! runs as an `LD_PRELOAD` library that may depend on nothing heavier than libc, so it cannot
//! link libzstd or pull in a crate. This module is therefore a self-contained decoder: safe
//! Rust only, no dependencies, and every malformed input yields a [`ZstdError`] rather than a
//! panic. Output is bounded by the caller's `max_out`, checked before the buffer grows, so a
//! hostile frame cannot make the process allocate without limit.
//!
//! It follows RFC 8878 section 3 (frames, blocks, literals, sequences) and section 4 (FSE and
//! Huffman coding). Dictionaries are not supported: fatbinaries never use them, and a frame
//! naming one is rejected. Section and field names in comments are the RFC's.
#![forbid(unsafe_code)]

use std::fmt;

/// Why a zstd input could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZstdError {
    /// The input ended inside a frame.
    Truncated,
    /// A frame starts with neither the zstd nor a skippable-frame magic number.
    BadMagic(u32),
    /// The data breaks a rule of the format; the text names the rule.
    Corrupt(&'static str),
    /// The frame needs the dictionary with this id.
    DictionaryUnsupported(u32),
    /// The decompressed data would be larger than the caller's limit (in bytes).
    OutputLimit(usize),
    /// The content checksum stored in the frame does not match the decompressed data.
    ChecksumMismatch { stored: u32, computed: u32 },
}

impl fmt::Display for ZstdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZstdError::Truncated => write!(f, "zstd: input ends inside a frame"),
            ZstdError::BadMagic(m) => write!(f, "zstd: not a zstd frame (magic number {m:#010x})"),
            ZstdError::Corrupt(why) => write!(f, "zstd: corrupt data: {why}"),
            ZstdError::DictionaryUnsupported(id) => write!(
                f,
                "zstd: frame needs dictionary {id}; dictionaries are not supported"
            ),
            ZstdError::OutputLimit(limit) => {
                write!(
                    f,
                    "zstd: decompressed data exceeds the limit of {limit} bytes"
                )
            }
            ZstdError::ChecksumMismatch { stored, computed } => write!(
                f,
                "zstd: content checksum mismatch (frame says {stored:#010x}, data hashes to {computed:#010x})"
            ),
        }
    }
}

impl std::error::Error for ZstdError {}

type Result<T> = std::result::Result<T, ZstdError>;

const FRAME_MAGIC: u32 = 0xFD2F_B528;
/// Skippable frames use 16 magic numbers, 0x184D2A50 ..= 0x184D2A5F.
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
/// The absolute cap on a block's size, compressed or not (Block_Maximum_Size's upper bound).
const MAX_BLOCK: usize = 128 * 1024;
/// Largest Huffman code length the format allows (Max_Number_of_Bits).
const MAX_HUFFMAN_BITS: u32 = 11;
/// How much a frame's declared content size may pre-allocate; beyond it the buffer grows as
/// data actually arrives, so a lying header costs nothing.
const MAX_PREALLOC: usize = 1 << 22;

/// Decompresses every frame in `input`, concatenated, skipping skippable frames.
///
/// Fails if the result would exceed `max_out` bytes. An empty input gives an empty output.
pub fn decompress(input: &[u8], max_out: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let magic = read_le(input, pos, 4)? as u32;
        pos += 4;
        if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC {
            let size = read_le(input, pos, 4)? as usize;
            pos = pos
                .checked_add(4 + size)
                .filter(|&end| end <= input.len())
                .ok_or(ZstdError::Truncated)?;
        } else if magic == FRAME_MAGIC {
            pos = decode_frame(input, pos, &mut out, max_out)?;
        } else {
            return Err(ZstdError::BadMagic(magic));
        }
    }
    Ok(out)
}

/// Reads an unsigned little-endian field of `n` (at most 8) bytes at `pos`.
fn read_le(input: &[u8], pos: usize, n: usize) -> Result<u64> {
    let bytes = input.get(pos..pos + n).ok_or(ZstdError::Truncated)?;
    Ok(bytes
        .iter()
        .rev()
        .fold(0, |acc, &b| (acc << 8) | u64::from(b)))
}

/// Makes room for `n` more bytes of output, refusing to pass `max_out`.
fn grow(out: &mut Vec<u8>, n: usize, max_out: usize) -> Result<()> {
    if n > max_out.saturating_sub(out.len()) {
        return Err(ZstdError::OutputLimit(max_out));
    }
    out.try_reserve(n)
        .map_err(|_| ZstdError::Corrupt("cannot allocate the decompressed data"))
}

// ---------------------------------------------------------------------------------------------
// Frames (RFC 8878 section 3.1.1)
// ---------------------------------------------------------------------------------------------

struct FrameHeader {
    window_size: u64,
    content_size: Option<u64>,
    has_checksum: bool,
}

fn parse_frame_header(input: &[u8], mut pos: usize) -> Result<(FrameHeader, usize)> {
    let fhd = read_le(input, pos, 1)? as u8;
    pos += 1;
    let fcs_flag = fhd >> 6;
    let single_segment = fhd & 0x20 != 0;
    if fhd & 0x08 != 0 {
        return Err(ZstdError::Corrupt(
            "reserved bit set in the frame header descriptor",
        ));
    }
    let has_checksum = fhd & 0x04 != 0;

    let mut window_size = 0;
    if !single_segment {
        let wd = read_le(input, pos, 1)?;
        pos += 1;
        let window_log = 10 + (wd >> 3);
        let window_base = 1u64 << window_log;
        window_size = window_base + (window_base / 8) * (wd & 7);
    }

    let dict_id_len = [0, 1, 2, 4][usize::from(fhd & 3)];
    let dict_id = read_le(input, pos, dict_id_len)?;
    pos += dict_id_len;
    // An id of 0 means "no particular dictionary", which needs none.
    if dict_id != 0 {
        return Err(ZstdError::DictionaryUnsupported(dict_id as u32));
    }

    let fcs_len = match fcs_flag {
        0 if single_segment => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let mut content_size = None;
    if fcs_len > 0 {
        let raw = read_le(input, pos, fcs_len)?;
        pos += fcs_len;
        // The 2-byte form is offset so that it never repeats a value the 1-byte form can hold.
        content_size = Some(if fcs_len == 2 { raw + 256 } else { raw });
    }
    if single_segment {
        // The whole content is the window; the descriptor was omitted for that reason.
        window_size = content_size.unwrap_or(0);
    }
    Ok((
        FrameHeader {
            window_size,
            content_size,
            has_checksum,
        },
        pos,
    ))
}

/// State carried from one block to the next within a frame (RFC 8878 section 3.1.1.5 says
/// what may be repeated).
struct FrameState {
    huffman: Option<HuffmanTable>,
    ll_table: Option<FseTable>,
    of_table: Option<FseTable>,
    ml_table: Option<FseTable>,
    repeat_offsets: [usize; 3],
    literals: Vec<u8>,
}

/// Decodes one frame whose magic number ends just before `pos`; returns where it ends.
fn decode_frame(input: &[u8], pos: usize, out: &mut Vec<u8>, max_out: usize) -> Result<usize> {
    let (header, mut pos) = parse_frame_header(input, pos)?;
    let frame_start = out.len();
    if let Some(size) = header.content_size {
        if size > max_out.saturating_sub(out.len()) as u64 {
            return Err(ZstdError::OutputLimit(max_out));
        }
        grow(out, (size as usize).min(MAX_PREALLOC), max_out)?;
    }
    let block_max = header.window_size.min(MAX_BLOCK as u64) as usize;
    let mut state = FrameState {
        huffman: None,
        ll_table: None,
        of_table: None,
        ml_table: None,
        repeat_offsets: [1, 4, 8],
        literals: Vec::new(),
    };

    loop {
        let bh = read_le(input, pos, 3)? as u32;
        pos += 3;
        let last = bh & 1 != 0;
        let size = (bh >> 3) as usize;
        // For raw and compressed blocks Block_Size is what follows; for RLE it is the output.
        if size > block_max {
            return Err(ZstdError::Corrupt(
                "block size exceeds the frame's maximum block size",
            ));
        }
        match (bh >> 1) & 3 {
            0 => {
                let data = input.get(pos..pos + size).ok_or(ZstdError::Truncated)?;
                grow(out, size, max_out)?;
                out.extend_from_slice(data);
                pos += size;
            }
            1 => {
                let byte = *input.get(pos).ok_or(ZstdError::Truncated)?;
                grow(out, size, max_out)?;
                out.resize(out.len() + size, byte);
                pos += 1;
            }
            2 => {
                let data = input.get(pos..pos + size).ok_or(ZstdError::Truncated)?;
                decode_compressed_block(data, &mut state, out, frame_start, max_out, block_max)?;
                pos += size;
            }
            _ => return Err(ZstdError::Corrupt("reserved block type")),
        }
        if last {
            break;
        }
    }

    let produced = out.len() - frame_start;
    if header
        .content_size
        .is_some_and(|size| size != produced as u64)
    {
        return Err(ZstdError::Corrupt(
            "decompressed size differs from Frame_Content_Size",
        ));
    }
    if header.has_checksum {
        let stored = read_le(input, pos, 4)? as u32;
        pos += 4;
        let computed = xxh64(&out[frame_start..], 0) as u32;
        if stored != computed {
            return Err(ZstdError::ChecksumMismatch { stored, computed });
        }
    }
    Ok(pos)
}

// ---------------------------------------------------------------------------------------------
// Compressed blocks (RFC 8878 section 3.1.1.3)
// ---------------------------------------------------------------------------------------------

fn decode_compressed_block(
    block: &[u8],
    state: &mut FrameState,
    out: &mut Vec<u8>,
    frame_start: usize,
    max_out: usize,
    block_max: usize,
) -> Result<()> {
    let literals_len = decode_literals(block, state, block_max)?;
    let seq = &block[literals_len..];
    let block_start = out.len();
    // A block's output is capped like its input; whichever limit is nearer applies.
    let (limit, limit_err) = if block_start.saturating_add(block_max) < max_out {
        (
            block_start + block_max,
            ZstdError::Corrupt("block decompresses past the maximum block size"),
        )
    } else {
        (max_out, ZstdError::OutputLimit(max_out))
    };
    let room = |out: &Vec<u8>, n: usize| {
        if n > limit.saturating_sub(out.len()) {
            Err(limit_err.clone())
        } else {
            Ok(())
        }
    };

    let (&first, rest) = seq.split_first().ok_or(ZstdError::Corrupt(
        "compressed block lacks a sequences section",
    ))?;
    let (nb_seq, rest) = match first {
        0 => {
            if !rest.is_empty() {
                return Err(ZstdError::Corrupt("data after an empty sequences section"));
            }
            room(out, state.literals.len())?;
            out.extend_from_slice(&state.literals);
            return Ok(());
        }
        1..=127 => (usize::from(first), rest),
        128..=254 => {
            let b1 = *rest
                .first()
                .ok_or(ZstdError::Corrupt("sequences header overruns block"))?;
            (
                (usize::from(first - 128) << 8) + usize::from(b1),
                &rest[1..],
            )
        }
        255 => {
            let b = rest
                .get(..2)
                .ok_or(ZstdError::Corrupt("sequences header overruns block"))?;
            (
                usize::from(b[0]) + (usize::from(b[1]) << 8) + 0x7F00,
                &rest[2..],
            )
        }
    };

    let (&modes, mut rest) = rest
        .split_first()
        .ok_or(ZstdError::Corrupt("sequences header overruns block"))?;
    if modes & 3 != 0 {
        return Err(ZstdError::Corrupt(
            "reserved bits set in Symbol_Compression_Modes",
        ));
    }
    // The tables' descriptions come in the order literal lengths, offsets, match lengths.
    rest = select_table(modes >> 6, &LITERAL_LENGTHS, rest, &mut state.ll_table)?;
    rest = select_table((modes >> 4) & 3, &OFFSETS, rest, &mut state.of_table)?;
    rest = select_table((modes >> 2) & 3, &MATCH_LENGTHS, rest, &mut state.ml_table)?;
    let (Some(ll_table), Some(of_table), Some(ml_table)) =
        (&state.ll_table, &state.of_table, &state.ml_table)
    else {
        return Err(ZstdError::Corrupt("missing sequence decoding table"));
    };

    let mut bits = BackwardBits::new(rest)?;
    let mut ll_state = bits.read(ll_table.log) as usize;
    let mut of_state = bits.read(of_table.log) as usize;
    let mut ml_state = bits.read(ml_table.log) as usize;
    let literals = &state.literals;
    let rep = &mut state.repeat_offsets;
    let mut lit_pos = 0;

    for i in 0..nb_seq {
        let of_code = u32::from(of_table.cells[of_state].symbol);
        let ml_code = usize::from(ml_table.cells[ml_state].symbol);
        let ll_code = usize::from(ll_table.cells[ll_state].symbol);
        // Extra bits are read offset first, then match length, then literal length.
        let offset_value = (1u64 << of_code) + bits.read(of_code);
        let match_len = ML_BASELINE[ml_code] as usize + bits.read(ML_EXTRA_BITS[ml_code]) as usize;
        let lit_len = LL_BASELINE[ll_code] as usize + bits.read(LL_EXTRA_BITS[ll_code]) as usize;
        // The last sequence's states are never updated: the encoder wrote no bits for it.
        if i + 1 < nb_seq {
            ll_state = ll_table.update(ll_state, &mut bits);
            ml_state = ml_table.update(ml_state, &mut bits);
            of_state = of_table.update(of_state, &mut bits);
        }

        let offset = resolve_offset(offset_value, lit_len, rep)?;

        let lits = literals
            .get(lit_pos..lit_pos + lit_len)
            .ok_or(ZstdError::Corrupt(
                "sequence uses more literals than the block has",
            ))?;
        room(out, lit_len.saturating_add(match_len))?;
        out.extend_from_slice(lits);
        lit_pos += lit_len;

        // Without dictionaries, a match can only reach back to the start of this frame.
        if offset > out.len() - frame_start {
            return Err(ZstdError::Corrupt(
                "match offset reaches before the frame's start",
            ));
        }
        copy_match(out, offset, match_len);
    }
    if !bits.is_exhausted() {
        return Err(ZstdError::Corrupt(
            "sequences bitstream not consumed exactly",
        ));
    }
    let tail = &literals[lit_pos..];
    room(out, tail.len())?;
    out.extend_from_slice(tail);
    Ok(())
}

/// Turns an Offset_Value into a distance and updates the repeat-offset history (RFC 8878
/// section 3.1.2.5). Values 1-3 name earlier offsets; with no literals before the match the
/// names shift by one, since repeating the previous offset right away would be pointless.
fn resolve_offset(offset_value: u64, lit_len: usize, rep: &mut [usize; 3]) -> Result<usize> {
    if offset_value > 3 {
        let offset = usize::try_from(offset_value - 3)
            .map_err(|_| ZstdError::Corrupt("offset too large"))?;
        *rep = [offset, rep[0], rep[1]];
        return Ok(offset);
    }
    let index = offset_value as usize - 1 + usize::from(lit_len == 0);
    let offset = match index {
        0 => return Ok(rep[0]),
        1 | 2 => rep[index],
        _ => rep[0].wrapping_sub(1),
    };
    if offset == 0 {
        return Err(ZstdError::Corrupt("repeat offset of zero"));
    }
    if index >= 2 {
        rep[2] = rep[1];
    }
    rep[1] = rep[0];
    rep[0] = offset;
    Ok(offset)
}

/// Appends `len` bytes copied from `offset` back. The ranges may overlap (offset < len), in
/// which case the copied bytes repeat with period `offset`; copying from a source that stays
/// a whole number of periods behind lets each step take twice as much as the last.
fn copy_match(out: &mut Vec<u8>, offset: usize, len: usize) {
    let base = out.len() - offset;
    let mut copied = 0;
    while copied < len {
        let src = base + copied % offset;
        let n = (out.len() - src).min(len - copied);
        out.extend_from_within(src..src + n);
        copied += n;
    }
}

// ---------------------------------------------------------------------------------------------
// Literals (RFC 8878 section 3.1.1.3.1)
// ---------------------------------------------------------------------------------------------

/// Decodes the literals section at the start of `block` into `state.literals`; returns the
/// section's length.
fn decode_literals(block: &[u8], state: &mut FrameState, block_max: usize) -> Result<usize> {
    const OVERRUN: ZstdError = ZstdError::Corrupt("literals section overruns its block");
    let b0 = *block.first().ok_or(OVERRUN)?;
    let block_type = b0 & 3;
    let size_format = (b0 >> 2) & 3;
    let header = |len: usize| read_le(block, 0, len).map_err(|_| OVERRUN);

    if block_type < 2 {
        // Raw or RLE: only a Regenerated_Size, in 5, 12 or 20 bits.
        let (size, header_len) = match size_format {
            0 | 2 => (usize::from(b0 >> 3), 1),
            1 => ((header(2)? >> 4) as usize, 2),
            _ => ((header(3)? >> 4) as usize, 3),
        };
        if size > block_max {
            return Err(ZstdError::Corrupt("literals exceed the maximum block size"));
        }
        state.literals.clear();
        if block_type == 0 {
            let data = block.get(header_len..header_len + size).ok_or(OVERRUN)?;
            state.literals.extend_from_slice(data);
            return Ok(header_len + size);
        }
        let byte = *block.get(header_len).ok_or(OVERRUN)?;
        state.literals.resize(size, byte);
        return Ok(header_len + 1);
    }

    // Huffman-coded: Regenerated_Size and Compressed_Size, each 10, 14 or 18 bits.
    let (streams, header_len, field_bits) = match size_format {
        0 => (1, 3, 10),
        1 => (4, 3, 10),
        2 => (4, 4, 14),
        _ => (4, 5, 18),
    };
    let fields = header(header_len)? >> 4;
    let mask = (1u64 << field_bits) - 1;
    let regenerated = (fields & mask) as usize;
    let compressed = ((fields >> field_bits) & mask) as usize;
    if regenerated > block_max {
        return Err(ZstdError::Corrupt("literals exceed the maximum block size"));
    }
    let mut data = block
        .get(header_len..header_len + compressed)
        .ok_or(OVERRUN)?;
    if block_type == 2 {
        let (table, used) = read_huffman_table(data)?;
        state.huffman = Some(table);
        data = &data[used..];
    }
    // Treeless literals reuse the table of the last Huffman-coded literals in this frame.
    let table = state.huffman.as_ref().ok_or(ZstdError::Corrupt(
        "treeless literals without a previous Huffman table",
    ))?;

    state.literals.clear();
    state.literals.resize(regenerated, 0);
    if streams == 1 {
        table.decode_stream(data, &mut state.literals)?;
    } else {
        // Jump_Table: sizes of the first three streams; the fourth takes the rest.
        let jump = data
            .get(..6)
            .ok_or(ZstdError::Corrupt("Huffman jump table overruns"))?;
        let size = |i: usize| usize::from(u16::from_le_bytes([jump[2 * i], jump[2 * i + 1]]));
        let (s1, s2, s3) = (size(0), size(1), size(2));
        let streams_end = data.len();
        let bad_jump = ZstdError::Corrupt("Huffman stream sizes exceed the literals section");
        if 6 + s1 + s2 + s3 > streams_end {
            return Err(bad_jump);
        }
        let segment = regenerated.div_ceil(4);
        if 3 * segment > regenerated {
            return Err(ZstdError::Corrupt(
                "too few literals for four Huffman streams",
            ));
        }
        let mut src = 6;
        let mut dst = 0;
        for stream_len in [s1, s2, s3, streams_end - 6 - s1 - s2 - s3] {
            let out_len = segment.min(regenerated - dst);
            table.decode_stream(
                &data[src..src + stream_len],
                &mut state.literals[dst..dst + out_len],
            )?;
            src += stream_len;
            dst += out_len;
        }
    }
    Ok(header_len + compressed)
}

// ---------------------------------------------------------------------------------------------
// Huffman coding (RFC 8878 section 4.2)
// ---------------------------------------------------------------------------------------------

struct HuffmanTable {
    max_bits: u32,
    /// Indexed by the next `max_bits` bits of the stream: (symbol, code length).
    entries: Vec<(u8, u8)>,
}

impl HuffmanTable {
    /// Fills `out` from one backward Huffman stream, which must be consumed exactly.
    fn decode_stream(&self, stream: &[u8], out: &mut [u8]) -> Result<()> {
        let mut bits = BackwardBits::new(stream)?;
        for byte in out {
            let (symbol, len) = self.entries[bits.peek(self.max_bits) as usize];
            *byte = symbol;
            bits.consume(u32::from(len));
        }
        if !bits.is_exhausted() {
            return Err(ZstdError::Corrupt("Huffman stream not consumed exactly"));
        }
        Ok(())
    }
}

/// Reads a Huffman_Tree_Description; returns the table and the bytes it took.
fn read_huffman_table(data: &[u8]) -> Result<(HuffmanTable, usize)> {
    let header = usize::from(
        *data
            .first()
            .ok_or(ZstdError::Corrupt("missing Huffman tree"))?,
    );
    let mut weights = Vec::with_capacity(256);
    let used = if header >= 128 {
        // Direct representation: header - 127 weights, 4 bits each, high nibble first.
        let count = header - 127;
        let bytes = data
            .get(1..1 + count.div_ceil(2))
            .ok_or(ZstdError::Corrupt(
                "Huffman weights overrun the literals section",
            ))?;
        for &b in bytes {
            weights.extend_from_slice(&[b >> 4, b & 15]);
        }
        weights.truncate(count);
        1 + bytes.len()
    } else {
        // FSE-compressed weights: the header is their compressed size.
        let body = data.get(1..1 + header).ok_or(ZstdError::Corrupt(
            "Huffman weights overrun the literals section",
        ))?;
        let (table, table_len) = read_fse_table(body, 6, 255)?;
        decode_huffman_weights(&table, &body[table_len..], &mut weights)?;
        1 + header
    };
    Ok((build_huffman_table(&weights)?, used))
}

/// Decodes FSE-compressed Huffman weights: two states share one bitstream and take turns; the
/// stream has no symbol count, so decoding stops when an update runs past the stream's start,
/// after which the other state still holds one last symbol (RFC 8878 section 4.2.1.2).
fn decode_huffman_weights(table: &FseTable, stream: &[u8], weights: &mut Vec<u8>) -> Result<()> {
    let mut bits = BackwardBits::new(stream)?;
    let mut states = [bits.read(table.log) as usize, bits.read(table.log) as usize];
    let mut turn = 0;
    loop {
        // The last weight is implied, so at most 255 are stored.
        if weights.len() >= 255 {
            return Err(ZstdError::Corrupt("too many Huffman weights"));
        }
        weights.push(table.cells[states[turn]].symbol);
        states[turn] = table.update(states[turn], &mut bits);
        if bits.is_overrun() {
            weights.push(table.cells[states[1 - turn]].symbol);
            return Ok(());
        }
        turn = 1 - turn;
    }
}

/// Builds the decoding table from the stated weights plus the implied last one.
fn build_huffman_table(weights: &[u8]) -> Result<HuffmanTable> {
    let mut total: u32 = 0;
    for &w in weights {
        if u32::from(w) > MAX_HUFFMAN_BITS {
            return Err(ZstdError::Corrupt("Huffman weight too large"));
        }
        if w > 0 {
            total += 1 << (w - 1);
        }
    }
    if total == 0 {
        return Err(ZstdError::Corrupt("Huffman tree has no symbols"));
    }
    // The implied weight completes the sum to the next power of two.
    let max_bits = 32 - total.leading_zeros();
    let rest = (1 << max_bits) - total;
    if max_bits > MAX_HUFFMAN_BITS || !rest.is_power_of_two() {
        return Err(ZstdError::Corrupt(
            "Huffman weights do not form a complete tree",
        ));
    }
    let mut all = weights.to_vec();
    all.push((rest.trailing_zeros() + 1) as u8);
    if all.len() > 256 {
        return Err(ZstdError::Corrupt("too many Huffman weights"));
    }

    // Codes are handed out from the lowest weight (longest code) up, symbols in order within
    // a weight; in a table indexed by max_bits-bit prefixes that means consecutive ranges.
    let mut entries = vec![(0u8, 0u8); 1 << max_bits];
    let mut pos = 0;
    for weight in 1..=max_bits as u8 {
        let len = (max_bits + 1 - u32::from(weight)) as u8;
        let span = 1usize << (weight - 1);
        for (symbol, _) in all.iter().enumerate().filter(|&(_, &w)| w == weight) {
            entries[pos..pos + span].fill((symbol as u8, len));
            pos += span;
        }
    }
    Ok(HuffmanTable { max_bits, entries })
}

// ---------------------------------------------------------------------------------------------
// FSE (RFC 8878 section 4.1)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Default)]
struct FseCell {
    symbol: u8,
    bits: u8,
    base: u16,
}

struct FseTable {
    log: u32,
    cells: Vec<FseCell>,
}

impl FseTable {
    fn update(&self, state: usize, bits: &mut BackwardBits) -> usize {
        let cell = self.cells[state];
        usize::from(cell.base) + bits.read(u32::from(cell.bits)) as usize
    }

    /// A one-state table that always yields `symbol` and reads no bits (RLE_Mode).
    fn rle(symbol: u8) -> FseTable {
        FseTable {
            log: 0,
            cells: vec![FseCell {
                symbol,
                ..FseCell::default()
            }],
        }
    }

    /// Spreads symbols over the table by their normalized probabilities (RFC 8878 section
    /// 4.1.1); a count of -1 means "less than 1" and gets one cell at the top of the table.
    fn from_counts(counts: &[i16], log: u32) -> Result<FseTable> {
        let size = 1usize << log;
        // Callers check this already; it is what keeps the spreading loop below finite.
        if counts.iter().map(|&c| i32::from(c).abs()).sum::<i32>() != size as i32 {
            return Err(ZstdError::Corrupt(
                "FSE probabilities do not sum to the table size",
            ));
        }
        let mut cells = vec![FseCell::default(); size];
        let mut high = size;
        for (symbol, _) in counts.iter().enumerate().filter(|&(_, &c)| c == -1) {
            high -= 1;
            cells[high].symbol = symbol as u8;
        }
        let step = (size >> 1) + (size >> 3) + 3;
        let mask = size - 1;
        let mut pos = 0;
        for (symbol, &count) in counts.iter().enumerate() {
            for _ in 0..count.max(0) {
                cells[pos].symbol = symbol as u8;
                // `step` is odd, so this visits every cell; it skips the "less than 1" ones.
                pos = (pos + step) & mask;
                while pos >= high {
                    pos = (pos + step) & mask;
                }
            }
        }
        if pos != 0 {
            return Err(ZstdError::Corrupt(
                "FSE probabilities do not fill the table",
            ));
        }
        // Each symbol's cells, in table order, take successive states from count to 2*count-1;
        // that number's width below `log` says how many bits the next state needs.
        let mut next: Vec<u32> = counts
            .iter()
            .map(|&c| if c == -1 { 1 } else { c.max(0) as u32 })
            .collect();
        for cell in &mut cells {
            let x = next[usize::from(cell.symbol)];
            next[usize::from(cell.symbol)] += 1;
            let bits = log - (31 - x.leading_zeros());
            cell.bits = bits as u8;
            cell.base = ((x << bits) - size as u32) as u16;
        }
        Ok(FseTable { log, cells })
    }
}

/// Reads an FSE_Table_Description (normalized symbol counts); returns the table and the bytes
/// the description took.
fn read_fse_table(data: &[u8], max_log: u32, max_symbol: usize) -> Result<(FseTable, usize)> {
    let mut bits = ForwardBits { data, pos: 0 };
    let log = bits.read(4) + 5;
    if log > max_log {
        return Err(ZstdError::Corrupt("FSE accuracy log too large"));
    }
    let mut counts = vec![0i16; max_symbol + 1];
    let mut remaining = (1i32 << log) + 1;
    let mut threshold = 1i32 << log;
    let mut width = log + 1;
    let mut symbol = 0;
    while remaining > 1 {
        if symbol > max_symbol {
            return Err(ZstdError::Corrupt("FSE table names too many symbols"));
        }
        // Values below `max` fit in width-1 bits; the rest need width bits, and the top ones
        // are folded down so that no bit pattern is wasted.
        let max = 2 * threshold - 1 - remaining;
        let low = bits.peek(width - 1) as i32;
        let value = if low < max {
            bits.pos += width as usize - 1;
            low
        } else {
            let v = bits.peek(width) as i32;
            bits.pos += width as usize;
            if v >= threshold { v - max } else { v }
        };
        let count = value - 1;
        remaining -= count.abs();
        if remaining < 1 {
            return Err(ZstdError::Corrupt("FSE probabilities exceed the table"));
        }
        counts[symbol] = count as i16;
        symbol += 1;
        if count == 0 {
            // Zero counts are followed by 2-bit repeat fields; 3 means "and another field".
            loop {
                let repeat = bits.read(2) as usize;
                symbol += repeat;
                if repeat != 3 || symbol > max_symbol + 1 {
                    break;
                }
            }
        }
        while remaining < threshold {
            width -= 1;
            threshold >>= 1;
        }
    }
    if remaining != 1 || symbol > max_symbol + 1 {
        return Err(ZstdError::Corrupt(
            "FSE probabilities do not sum to the table size",
        ));
    }
    let len = bits.pos.div_ceil(8);
    if len > data.len() {
        return Err(ZstdError::Corrupt(
            "FSE table description overruns its section",
        ));
    }
    Ok((FseTable::from_counts(&counts, log)?, len))
}

/// How one of the three sequence fields is coded: its largest symbol and accuracy log, the
/// predefined distribution (RFC 8878 section 3.1.1.3.2.2).
struct SequenceField {
    max_symbol: usize,
    max_log: u32,
    default_log: u32,
    default_counts: &'static [i16],
}

const LITERAL_LENGTHS: SequenceField = SequenceField {
    max_symbol: 35,
    max_log: 9,
    default_log: 6,
    default_counts: &[
        4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 1, 1, 1,
        1, 1, -1, -1, -1, -1,
    ],
};

const MATCH_LENGTHS: SequenceField = SequenceField {
    max_symbol: 52,
    max_log: 9,
    default_log: 6,
    default_counts: &[
        1, 4, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1,
    ],
};

const OFFSETS: SequenceField = SequenceField {
    max_symbol: 31,
    max_log: 8,
    default_log: 5,
    default_counts: &[
        1, 1, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1,
    ],
};

/// Sets `slot` to the table a Symbol_Compression_Mode selects; returns the unread rest.
fn select_table<'a>(
    mode: u8,
    field: &SequenceField,
    data: &'a [u8],
    slot: &mut Option<FseTable>,
) -> Result<&'a [u8]> {
    match mode {
        0 => {
            *slot = Some(FseTable::from_counts(
                field.default_counts,
                field.default_log,
            )?);
            Ok(data)
        }
        1 => {
            let (&symbol, rest) = data
                .split_first()
                .ok_or(ZstdError::Corrupt("sequences header overruns block"))?;
            if usize::from(symbol) > field.max_symbol {
                return Err(ZstdError::Corrupt("RLE sequence code out of range"));
            }
            *slot = Some(FseTable::rle(symbol));
            Ok(rest)
        }
        2 => {
            let (table, len) = read_fse_table(data, field.max_log, field.max_symbol)?;
            *slot = Some(table);
            Ok(&data[len..])
        }
        // Repeat_Mode keeps the previous block's table, which must exist.
        _ => match slot {
            Some(_) => Ok(data),
            None => Err(ZstdError::Corrupt("repeat mode without a previous table")),
        },
    }
}

const LL_BASELINE: [u32; 36] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 22, 24, 28, 32, 40, 48, 64,
    128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
];
const LL_EXTRA_BITS: [u32; 36] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 6, 7, 8, 9, 10, 11,
    12, 13, 14, 15, 16,
];
const ML_BASELINE: [u32; 53] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27,
    28, 29, 30, 31, 32, 33, 34, 35, 37, 39, 41, 43, 47, 51, 59, 67, 83, 99, 131, 259, 515, 1027,
    2051, 4099, 8195, 16387, 32771, 65539,
];
const ML_EXTRA_BITS: [u32; 53] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
];

// ---------------------------------------------------------------------------------------------
// Bit streams
// ---------------------------------------------------------------------------------------------

/// Loads up to 8 bytes at `at` as a little-endian number, zero past the end of `data`.
fn load_le(data: &[u8], at: usize) -> u64 {
    match data.get(at..at + 8) {
        Some(b) => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        None => data
            .get(at..)
            .unwrap_or(&[])
            .iter()
            .rev()
            .fold(0, |acc, &b| (acc << 8) | u64::from(b)),
    }
}

/// A bitstream read from its first byte, low bits first (FSE table descriptions).
struct ForwardBits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl ForwardBits<'_> {
    /// The next `n` (at most 32) bits; zero past the end, which the caller checks for later.
    fn peek(&self, n: u32) -> u64 {
        (load_le(self.data, self.pos / 8) >> (self.pos % 8)) & ((1u64 << n) - 1)
    }

    fn read(&mut self, n: u32) -> u32 {
        let v = self.peek(n);
        self.pos += n as usize;
        v as u32
    }
}

/// A bitstream written forward and read backward (Huffman and sequence streams, RFC 8878
/// section 4.1): the last byte's highest set bit marks where the data ends, and fields are
/// read from there towards the first byte.
struct BackwardBits<'a> {
    data: &'a [u8],
    /// Bits not yet read: the stream's bits [0, remaining). Negative once reads ran past the
    /// start, which only corrupt or finishing streams do; such reads yield zeros.
    remaining: i64,
}

impl<'a> BackwardBits<'a> {
    fn new(data: &'a [u8]) -> Result<Self> {
        match data.last() {
            Some(&last) if last != 0 => {
                let marker = 7 - i64::from(last.leading_zeros());
                Ok(BackwardBits {
                    data,
                    remaining: (data.len() as i64 - 1) * 8 + marker,
                })
            }
            _ => Err(ZstdError::Corrupt("bitstream lacks its end marker")),
        }
    }

    /// The next `n` (at most 56) bits, first-read bit most significant.
    fn peek(&self, n: u32) -> u64 {
        if n == 0 || self.remaining <= 0 {
            return 0;
        }
        let low = self.remaining - i64::from(n);
        let (from, width, pad) = if low >= 0 {
            (low as usize, n, 0)
        } else {
            (0, self.remaining as u32, (-low) as u32)
        };
        let v = load_le(self.data, from / 8) >> (from % 8);
        (v & ((1u64 << width) - 1)) << pad
    }

    fn consume(&mut self, n: u32) {
        self.remaining -= i64::from(n);
    }

    fn read(&mut self, n: u32) -> u64 {
        let v = self.peek(n);
        self.consume(n);
        v
    }

    fn is_exhausted(&self) -> bool {
        self.remaining == 0
    }

    fn is_overrun(&self) -> bool {
        self.remaining < 0
    }
}

// ---------------------------------------------------------------------------------------------
// XXH64, for the Content_Checksum (its low 32 bits)
// ---------------------------------------------------------------------------------------------

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn xxh64_round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn xxh64_merge(hash: u64, acc: u64) -> u64 {
    (hash ^ xxh64_round(0, acc))
        .wrapping_mul(P1)
        .wrapping_add(P4)
}

fn u64_at(b: &[u8]) -> u64 {
    load_le(b, 0)
}

/// XXH64 of `data` (the xxHash specification, version 0.1.x).
fn xxh64(data: &[u8], seed: u64) -> u64 {
    let mut rest = data;
    let mut hash = if data.len() >= 32 {
        let mut acc = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        let mut stripes = data.chunks_exact(32);
        for stripe in &mut stripes {
            for (i, a) in acc.iter_mut().enumerate() {
                *a = xxh64_round(*a, u64_at(&stripe[8 * i..]));
            }
        }
        rest = stripes.remainder();
        let mut h = acc[0]
            .rotate_left(1)
            .wrapping_add(acc[1].rotate_left(7))
            .wrapping_add(acc[2].rotate_left(12))
            .wrapping_add(acc[3].rotate_left(18));
        for a in acc {
            h = xxh64_merge(h, a);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    hash = hash.wrapping_add(data.len() as u64);

    let mut words = rest.chunks_exact(8);
    for word in &mut words {
        hash ^= xxh64_round(0, u64_at(word));
        hash = hash.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
    }
    let mut rest = words.remainder();
    if rest.len() >= 4 {
        let word = u64::from(u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]));
        hash ^= word.wrapping_mul(P1);
        hash = hash.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &byte in rest {
        hash ^= u64::from(byte).wrapping_mul(P5);
        hash = hash.rotate_left(11).wrapping_mul(P1);
    }

    hash ^= hash >> 33;
    hash = hash.wrapping_mul(P2);
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(P3);
    hash ^= hash >> 32;
    hash
}
