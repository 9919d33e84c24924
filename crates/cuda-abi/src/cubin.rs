//! Cubins: the ELF files (`e_machine` = `EM_CUDA`, 190) that hold a module's machine code, as
//! `ptxas`/`nvcc -cubin` write them and fatbinaries carry them.
//!
//! What the driver acts on at load, as this reader finds it:
//! - Kernels: `STT_FUNC` symbols whose `st_other` has `STO_CUDA_ENTRY` (0x10). Other functions
//!   (`__device__` helpers) are not found by `cuModuleGetFunction`.
//! - `__device__` variables: the sections `.nv.global` (`SHT_NOBITS`, zero-filled at load; its
//!   size costs nothing in the file, so it is the one that can ask for any amount of device
//!   memory) and `.nv.global.init` (`SHT_PROGBITS`, initialised variables). Their sizes come
//!   from the section headers; their variables are the `STT_OBJECT` symbols whose `st_shndx`
//!   names one of them (`st_value` is the offset inside the section, `st_size` the bytes).
//!
//! Layout (the sizing rule shared with the simulator): the global sections are placed in
//! section-header order, each starting at a multiple of its `sh_addralign` and of
//! [`GLOBAL_ALIGN`]; the module's variables are one device allocation rounded up to
//! [`GLOBAL_GRANULARITY`].
//!
//! Only 64-bit little-endian cubins are read (every CUDA toolkit since 2012 targets 64-bit
//! hosts); everything is bounds-checked against the bytes given.

use crate::bytes::{at, u8_at, u16_at, u32_at, u64_at, until_nul};
use crate::image::{GLOBAL_ALIGN, GLOBAL_GRANULARITY, Global, Globals, Module};
use crate::modimage::ImageError;

pub const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
pub const EM_CUDA: u16 = 190;
pub const SHT_PROGBITS: u32 = 1;
pub const SHT_SYMTAB: u32 = 2;
pub const SHT_STRTAB: u32 = 3;
pub const SHT_NOBITS: u32 = 8;
pub const STT_OBJECT: u8 = 1;
pub const STT_FUNC: u8 = 2;
pub const STO_CUDA_ENTRY: u8 = 0x10;
/// The sections that hold `__device__` variables.
pub const GLOBAL_SECTIONS: [&str; 2] = [".nv.global", ".nv.global.init"];

const EHDR: u64 = 64;
const SHDR: u64 = 64;
const SYM: u64 = 24;

fn bad(what: String) -> ImageError {
    ImageError::Malformed(format!("cubin: {what}"))
}

#[derive(Clone, Copy, Debug)]
struct Section {
    name: u32,
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
    align: u64,
    entsize: u64,
}

/// The fields of the ELF header this reader needs, after checking what it requires of them.
struct Header {
    shoff: u64,
    shnum: u64,
    shstrndx: u64,
}

fn header(b: &[u8]) -> Result<Header, ImageError> {
    if at(b, 0, 4) != Some(&ELF_MAGIC[..]) {
        return Err(bad("no ELF magic".into()));
    }
    if b.len() < EHDR as usize {
        return Err(bad(format!(
            "the ELF header needs {EHDR} bytes, the image has {}",
            b.len()
        )));
    }
    let class = b[4];
    if class != 2 {
        return Err(ImageError::Unsupported(format!(
            "cubin: ELF class {class} (EI_CLASS); only 64-bit cubins (2) are read"
        )));
    }
    if b[5] != 1 {
        return Err(ImageError::Unsupported(format!(
            "cubin: ELF data encoding {} (EI_DATA); cubins are little-endian (1)",
            b[5]
        )));
    }
    let machine = u16_at(b, 18).unwrap_or(0);
    if machine != EM_CUDA {
        return Err(bad(format!(
            "e_machine is {machine}; a cubin is EM_CUDA ({EM_CUDA})"
        )));
    }
    let shoff = u64_at(b, 40).unwrap_or(0);
    let shentsize = u16_at(b, 58).unwrap_or(0) as u64;
    let shnum = u16_at(b, 60).unwrap_or(0) as u64;
    let shstrndx = u16_at(b, 62).unwrap_or(0) as u64;
    if shnum == 0 && shoff != 0 {
        return Err(ImageError::Unsupported(
            "cubin: extended section numbering (e_shnum 0 with a section table)".into(),
        ));
    }
    if shnum != 0 && shentsize != SHDR {
        return Err(bad(format!(
            "e_shentsize is {shentsize}; ELF64 section headers are {SHDR} bytes"
        )));
    }
    Ok(Header {
        shoff,
        shnum,
        shstrndx,
    })
}

fn table_end(h: &Header) -> Result<u64, ImageError> {
    h.shnum
        .checked_mul(SHDR)
        .and_then(|n| n.checked_add(h.shoff))
        .ok_or_else(|| bad("the section header table's end overflows".into()))
}

fn sections(b: &[u8], h: &Header) -> Result<Vec<Section>, ImageError> {
    let end = table_end(h)?;
    if end > b.len() as u64 {
        return Err(bad(format!(
            "section headers at {}..{end} lie past the image's {} bytes",
            h.shoff,
            b.len()
        )));
    }
    let mut v = Vec::with_capacity(h.shnum as usize);
    for i in 0..h.shnum {
        let o = h.shoff + i * SHDR;
        let s = Section {
            name: u32_at(b, o).unwrap_or(0),
            kind: u32_at(b, o + 4).unwrap_or(0),
            offset: u64_at(b, o + 24).unwrap_or(0),
            size: u64_at(b, o + 32).unwrap_or(0),
            link: u32_at(b, o + 40).unwrap_or(0),
            align: u64_at(b, o + 48).unwrap_or(0),
            entsize: u64_at(b, o + 56).unwrap_or(0),
        };
        // A section with file contents must lie inside the image: a header claiming bytes past
        // the end is refused, whatever the section is.
        if s.kind != SHT_NOBITS && i != 0 {
            let e = s.offset.checked_add(s.size);
            if e.is_none_or(|e| e > b.len() as u64) {
                return Err(bad(format!(
                    "section {i}: bytes {}..+{} lie past the image's {} bytes",
                    s.offset,
                    s.size,
                    b.len()
                )));
            }
        }
        v.push(s);
    }
    Ok(v)
}

/// The bytes of the image needed to read it, as far as `b` (a prefix of the image holding at
/// least the ELF header) tells: the header, then the section table, then every section with
/// file contents. Reading a cubin from a pointer grows the prefix until this is no larger.
pub fn extent(b: &[u8]) -> Result<u64, ImageError> {
    if (b.len() as u64) < EHDR {
        return Ok(EHDR);
    }
    let h = header(b)?;
    let end = table_end(&h)?.max(EHDR);
    if end > b.len() as u64 {
        return Ok(end);
    }
    let mut need = end;
    for i in 1..h.shnum {
        let o = h.shoff + i * SHDR;
        if u32_at(b, o + 4) == Some(SHT_NOBITS) {
            continue;
        }
        let off = u64_at(b, o + 24).unwrap_or(0);
        let size = u64_at(b, o + 32).unwrap_or(0);
        let e = off
            .checked_add(size)
            .ok_or_else(|| bad(format!("section {i}: its end overflows")))?;
        need = need.max(e);
    }
    Ok(need)
}

/// A NUL-terminated name at `off` in string table section `s`.
fn name_in<'a>(b: &'a [u8], s: &Section, off: u32, what: &str) -> Result<&'a [u8], ImageError> {
    if s.kind != SHT_STRTAB {
        return Err(bad(format!("{what}: its string table is not SHT_STRTAB")));
    }
    let table = at(b, s.offset, s.size).ok_or_else(|| bad(format!("{what}: string table")))?;
    let rest = table
        .get(off as usize..)
        .ok_or_else(|| bad(format!("{what}: name offset {off} past its string table")))?;
    if !rest.contains(&0) {
        return Err(bad(format!("{what}: name at {off} is not NUL-terminated")));
    }
    Ok(until_nul(rest))
}

/// Reads a cubin: its kernels and the layout of its `__device__` variables.
pub fn parse(b: &[u8]) -> Result<Module, ImageError> {
    let h = header(b)?;
    let secs = sections(b, &h)?;
    if secs.is_empty() {
        return Ok(Module::default());
    }
    let shstr = secs.get(h.shstrndx as usize).copied().ok_or_else(|| {
        bad(format!(
            "e_shstrndx {} is not one of the {} sections",
            h.shstrndx, h.shnum
        ))
    })?;
    // Global sections, in header order, with the offset each starts at in the allocation.
    let mut bases: Vec<(usize, u64, u64)> = Vec::new();
    let mut end = 0u64;
    for (i, s) in secs.iter().enumerate().skip(1) {
        let name = name_in(b, &shstr, s.name, &format!("section {i}"))?;
        if !GLOBAL_SECTIONS.iter().any(|g| g.as_bytes() == name) {
            continue;
        }
        let align = s.align.max(GLOBAL_ALIGN);
        if !align.is_power_of_two() || align > GLOBAL_GRANULARITY {
            return Err(bad(format!(
                "section {i} ({}): sh_addralign {} (a power of two up to {GLOBAL_GRANULARITY} is accepted)",
                String::from_utf8_lossy(name),
                s.align
            )));
        }
        let base = end
            .checked_next_multiple_of(align)
            .and_then(|o| o.checked_add(s.size).map(|e| (o, e)));
        let Some((base, e)) = base else {
            return Err(bad(format!("section {i}: the variables' end overflows")));
        };
        bases.push((i, base, s.size));
        end = e;
    }
    let footprint = end
        .checked_next_multiple_of(GLOBAL_GRANULARITY)
        .ok_or_else(|| bad("the variables together overflow".into()))?;
    let mut m = Module {
        kernels: Vec::new(),
        globals: Globals {
            vars: Vec::new(),
            footprint,
        },
    };
    for (si, s) in secs.iter().enumerate() {
        if s.kind != SHT_SYMTAB {
            continue;
        }
        if s.entsize != SYM {
            return Err(bad(format!(
                "section {si}: symbol entries of {} bytes; ELF64 symbols are {SYM}",
                s.entsize
            )));
        }
        let strtab = secs.get(s.link as usize).copied().ok_or_else(|| {
            bad(format!(
                "section {si}: sh_link {} names no string table",
                s.link
            ))
        })?;
        for k in 0..s.size / SYM {
            let o = s.offset + k * SYM;
            let what = || format!("symbol {k}");
            let st_name = u32_at(b, o).ok_or_else(|| bad(what()))?;
            let info = u8_at(b, o + 4).ok_or_else(|| bad(what()))?;
            let other = u8_at(b, o + 5).ok_or_else(|| bad(what()))?;
            let shndx = u16_at(b, o + 6).ok_or_else(|| bad(what()))? as usize;
            let value = u64_at(b, o + 8).ok_or_else(|| bad(what()))?;
            let size = u64_at(b, o + 16).ok_or_else(|| bad(what()))?;
            let kind = info & 0xf;
            if kind == STT_FUNC && other & STO_CUDA_ENTRY != 0 {
                let name = name_in(b, &strtab, st_name, &what())?;
                let name = String::from_utf8_lossy(name).into_owned();
                if !m.kernels.contains(&name) {
                    m.kernels.push(name);
                }
            } else if kind == STT_OBJECT {
                let Some(&(_, base, sec_size)) = bases.iter().find(|(i, ..)| *i == shndx) else {
                    continue;
                };
                let name = name_in(b, &strtab, st_name, &what())?;
                let name = String::from_utf8_lossy(name).into_owned();
                if value.checked_add(size).is_none_or(|e| e > sec_size) {
                    return Err(bad(format!(
                        "symbol {name}: bytes {value}..+{size} outside its {sec_size}-byte section"
                    )));
                }
                m.globals.vars.push(Global {
                    name,
                    offset: base + value,
                    bytes: size,
                });
            }
        }
    }
    Ok(m)
}
