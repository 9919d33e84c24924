//! Minimal module images of every real kind, as a toolchain would write them reduced to what
//! loading reads: for tests and the probe, which have no CUDA compiler to make real ones.

use crate::cubin::*;
use crate::fatbin::{self, EntryKind};

/// A `__device__` variable: zero-filled (`.nv.global`) or initialised (`.nv.global.init`).
#[derive(Clone, Copy, Debug)]
pub struct Var<'a> {
    pub name: &'a str,
    pub bytes: u64,
    pub init: bool,
}

/// Alignment of variables inside their section.
pub const VAR_ALIGN: u64 = 8;

fn push_name(table: &mut Vec<u8>, name: &str) -> u32 {
    let at = table.len() as u32;
    table.extend_from_slice(name.as_bytes());
    table.push(0);
    at
}

/// A 64-bit cubin for sm_90 with `kernels` (entry functions), `helpers` (device functions,
/// which `cuModuleGetFunction` does not find) and `vars`.
pub fn cubin(kernels: &[&str], helpers: &[&str], vars: &[Var]) -> Vec<u8> {
    struct Sec {
        name: u32,
        kind: u32,
        data: Vec<u8>,
        nobits_size: u64,
        link: u32,
        align: u64,
        entsize: u64,
    }
    let mut shstr = vec![0u8];
    let mut strtab = vec![0u8];
    let mut secs: Vec<Sec> = Vec::new();
    let sec = |secs: &mut Vec<Sec>, shstr: &mut Vec<u8>, name: &str, kind: u32| {
        let n = push_name(shstr, name);
        secs.push(Sec {
            name: n,
            kind,
            data: Vec::new(),
            nobits_size: 0,
            link: 0,
            align: 1,
            entsize: 0,
        });
        secs.len() // index, counting the null section
    };
    let i_shstr = sec(&mut secs, &mut shstr, ".shstrtab", SHT_STRTAB);
    let i_str = sec(&mut secs, &mut shstr, ".strtab", SHT_STRTAB);
    let i_sym = sec(&mut secs, &mut shstr, ".symtab", SHT_SYMTAB);
    let mut syms: Vec<u8> = vec![0; 24];
    let sym = |syms: &mut Vec<u8>,
               name: u32,
               info: u8,
               other: u8,
               shndx: usize,
               value: u64,
               size: u64| {
        syms.extend_from_slice(&name.to_le_bytes());
        syms.push(info);
        syms.push(other);
        syms.extend_from_slice(&(shndx as u16).to_le_bytes());
        syms.extend_from_slice(&value.to_le_bytes());
        syms.extend_from_slice(&size.to_le_bytes());
    };
    for (f, entry) in kernels
        .iter()
        .map(|k| (k, true))
        .chain(helpers.iter().map(|h| (h, false)))
    {
        let i = sec(&mut secs, &mut shstr, &format!(".text.{f}"), SHT_PROGBITS);
        // One 16-byte instruction, as a stand-in for machine code.
        secs[i - 1].data = vec![0x18, 0x79, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc0, 0x0f, 0];
        secs[i - 1].align = 128;
        let n = push_name(&mut strtab, f);
        let other = if entry { STO_CUDA_ENTRY } else { 0 };
        sym(&mut syms, n, 0x10 | STT_FUNC, other, i, 0, 16);
    }
    for init in [true, false] {
        let mine: Vec<&Var> = vars.iter().filter(|v| v.init == init).collect();
        if mine.is_empty() {
            continue;
        }
        let (name, kind) = if init {
            (".nv.global.init", SHT_PROGBITS)
        } else {
            (".nv.global", SHT_NOBITS)
        };
        let i = sec(&mut secs, &mut shstr, name, kind);
        let mut end = 0u64;
        for v in mine {
            let at = end.next_multiple_of(VAR_ALIGN);
            let n = push_name(&mut strtab, v.name);
            sym(&mut syms, n, 0x10 | STT_OBJECT, 0, i, at, v.bytes);
            end = at + v.bytes;
        }
        let s = &mut secs[i - 1];
        s.align = VAR_ALIGN;
        if init {
            s.data = vec![0x5a; end as usize];
        } else {
            s.nobits_size = end;
        }
    }
    secs[i_shstr - 1].data = shstr;
    secs[i_str - 1].data = strtab;
    secs[i_sym - 1].data = syms;
    secs[i_sym - 1].link = i_str as u32;
    secs[i_sym - 1].entsize = 24;
    secs[i_sym - 1].align = 8;

    let mut out = vec![0u8; 64];
    let mut offsets = Vec::new();
    for s in &secs {
        let at = (out.len() as u64).next_multiple_of(s.align.max(1));
        out.resize(at as usize, 0);
        offsets.push(at);
        out.extend_from_slice(&s.data);
    }
    let shoff = (out.len() as u64).next_multiple_of(8);
    out.resize(shoff as usize, 0);
    out.extend_from_slice(&[0u8; 64]);
    for (s, off) in secs.iter().zip(&offsets) {
        let size = if s.kind == SHT_NOBITS {
            s.nobits_size
        } else {
            s.data.len() as u64
        };
        out.extend_from_slice(&s.name.to_le_bytes());
        out.extend_from_slice(&s.kind.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // flags
        out.extend_from_slice(&0u64.to_le_bytes()); // addr
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&s.link.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // info
        out.extend_from_slice(&s.align.to_le_bytes());
        out.extend_from_slice(&s.entsize.to_le_bytes());
    }
    let h = &mut out[..64];
    h[..4].copy_from_slice(&ELF_MAGIC);
    h[4] = 2; // ELFCLASS64
    h[5] = 1; // little-endian
    h[6] = 1; // EV_CURRENT
    h[7] = 0x33; // the CUDA OS/ABI
    h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h[18..20].copy_from_slice(&EM_CUDA.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[40..48].copy_from_slice(&shoff.to_le_bytes());
    h[48..52].copy_from_slice(&0x005a_055au32.to_le_bytes()); // sm_90 flags
    h[52..54].copy_from_slice(&64u16.to_le_bytes());
    h[58..60].copy_from_slice(&64u16.to_le_bytes());
    h[60..62].copy_from_slice(&((secs.len() + 1) as u16).to_le_bytes());
    h[62..64].copy_from_slice(&(i_shstr as u16).to_le_bytes());
    out
}

/// PTX text for sm_90 declaring `kernels` and `.global` byte arrays `vars` (name, bytes).
pub fn ptx(kernels: &[&str], vars: &[(&str, u64)]) -> String {
    let mut s = String::from(
        "//\n// Generated for a test\n//\n\n.version 8.4\n.target sm_90\n.address_size 64\n\n",
    );
    for (name, bytes) in vars {
        s += &format!(".global .align 8 .b8 {name}[{bytes}];\n");
    }
    for k in kernels {
        s += &format!(
            "\n.visible .entry {k}(\n\t.param .u64 {k}_param_0\n)\n.maxntid 256, 1, 1\n{{\n\t.reg .b64 %rd<2>;\n\tld.param.u64 %rd1, [{k}_param_0];\n\tret;\n}}\n"
        );
    }
    s
}

/// An LZ4 block of `data`: runs of a repeated byte become matches, the rest literals.
pub fn lz4(data: &[u8]) -> Vec<u8> {
    fn len_bytes(out: &mut Vec<u8>, mut n: usize) {
        while n >= 255 {
            out.push(255);
            n -= 255;
        }
        out.push(n as u8);
    }
    let mut out = Vec::new();
    let (mut i, mut lit_start) = (0, 0);
    let emit = |out: &mut Vec<u8>, lits: &[u8], m: Option<usize>| {
        let ml = m.map_or(0, |m| m - 4);
        let token = ((lits.len().min(15) as u8) << 4) | (ml.min(15) as u8);
        out.push(token);
        if lits.len() >= 15 {
            len_bytes(out, lits.len() - 15);
        }
        out.extend_from_slice(lits);
        if m.is_some() {
            out.extend_from_slice(&1u16.to_le_bytes());
            if ml >= 15 {
                len_bytes(out, ml - 15);
            }
        }
    };
    while i < data.len() {
        let run = data[i..].iter().take_while(|&&b| b == data[i]).count();
        // LZ4 keeps the last 5 bytes literal; a run needs one literal byte before its match.
        if run >= 6 && i + run + 5 <= data.len() {
            emit(&mut out, &data[lit_start..=i], Some(run - 1));
            i += run;
            lit_start = i;
        } else {
            i += 1;
        }
    }
    emit(&mut out, &data[lit_start..], None);
    out
}

/// A fatbinary of `entries` (kind, arch, payload), each LZ4-compressed when `compress`.
pub fn fatbin(entries: &[(EntryKind, u32, &[u8])], compress: bool) -> Vec<u8> {
    fatbin_packed(entries, if compress { Pack::Lz4 } else { Pack::Plain })
}

/// How [`fatbin_packed`] stores its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pack {
    Plain,
    Lz4,
    /// zstd frames (of raw blocks: a valid frame any zstd reader takes, as `nvcc
    /// --compress-mode=size` marks them, without needing a compressor here).
    Zstd,
}

/// A zstd frame holding `data` in raw blocks, with its content size and no checksum.
pub fn zstd_raw(data: &[u8]) -> Vec<u8> {
    let mut out = 0xFD2F_B528u32.to_le_bytes().to_vec();
    // Frame_Header_Descriptor: 8-byte content size, single segment, no checksum, no dictionary.
    out.push(0xE0);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut chunks: Vec<&[u8]> = data.chunks(128 << 10).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let n = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        // Block_Header: Last_Block, Block_Type 0 (raw), Block_Size.
        let h = u32::from(i + 1 == n) | ((c.len() as u32) << 3);
        out.extend_from_slice(&h.to_le_bytes()[..3]);
        out.extend_from_slice(c);
    }
    out
}

pub fn fatbin_packed(entries: &[(EntryKind, u32, &[u8])], pack: Pack) -> Vec<u8> {
    let mut body = Vec::new();
    for (kind, arch, payload) in entries {
        let (data, flags, uncompressed) = match pack {
            Pack::Lz4 => (lz4(payload), fatbin::FLAG_LZ4, payload.len() as u64),
            Pack::Zstd => (zstd_raw(payload), fatbin::FLAG_ZSTD, payload.len() as u64),
            Pack::Plain => (payload.to_vec(), 0, 0),
        };
        let compress = pack != Pack::Plain;
        let padded = (data.len() as u64).next_multiple_of(8);
        let mut e = [0u8; 64];
        let k = match kind {
            EntryKind::Ptx => fatbin::KIND_PTX,
            EntryKind::Cubin => fatbin::KIND_CUBIN,
        };
        e[0..2].copy_from_slice(&k.to_le_bytes());
        e[2..4].copy_from_slice(&0x0101u16.to_le_bytes());
        e[4..8].copy_from_slice(&64u32.to_le_bytes());
        e[8..16].copy_from_slice(&padded.to_le_bytes());
        let compressed = if compress { data.len() as u32 } else { 0 };
        e[16..20].copy_from_slice(&compressed.to_le_bytes());
        e[24..26].copy_from_slice(&4u16.to_le_bytes()); // minor
        e[26..28].copy_from_slice(&1u16.to_le_bytes()); // major
        e[28..32].copy_from_slice(&arch.to_le_bytes());
        e[40..48].copy_from_slice(&(0x11 | flags).to_le_bytes()); // 64-bit, Linux
        e[56..64].copy_from_slice(&uncompressed.to_le_bytes());
        body.extend_from_slice(&e);
        body.extend_from_slice(&data);
        body.resize(body.len() + (padded as usize - data.len()), 0);
    }
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&fatbin::MAGIC.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The wrapper `nvcc` registers, pointing at `fatbin` (which must outlive its use).
#[repr(C)]
pub struct Wrapper {
    pub magic: u32,
    pub version: u32,
    pub data: *const u8,
    pub filename_or_fatbins: *const u8,
}

pub fn wrapper(fatbin: &[u8]) -> Wrapper {
    Wrapper {
        magic: fatbin::WRAPPER_MAGIC,
        version: 1,
        data: fatbin.as_ptr(),
        filename_or_fatbins: std::ptr::null(),
    }
}
