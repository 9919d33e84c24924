//! PTX text: what the driver compiles at load, as far as loading needs it read.
//!
//! - A module begins with a `.version` directive (comments and white space aside); text that
//!   does not is not PTX.
//! - Kernels: `.entry NAME` (with any linkage, `.visible`, `.weak`) at module scope.
//! - `__device__` variables: module-scope declarations in the `.global` state space,
//!   `[.visible|.weak|.common] .global [.align N] [.attribute(...)] [.v2|.v4|.v8] .TYPE
//!   name[DIM]... [= init] {, name...};`. `.extern` ones take no storage in this module. A
//!   first dimension left empty (`[]`) takes its length from the initializer.
//!
//! Layout (the sizing rule shared with the simulator): variables in declaration order, each at
//! a multiple of its alignment (`.align N`, else its element's size); the module's variables
//! are one device allocation rounded up to [`GLOBAL_GRANULARITY`]. A declaration this reader
//! cannot size (an unknown type, a malformed dimension) is an error, never zero bytes.

use crate::bytes::until_nul;
use crate::image::{GLOBAL_GRANULARITY, Global, Globals, Module};
use crate::modimage::ImageError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    Word(&'a [u8]),
    Punct(u8),
    Str,
}

fn word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'%' | b'.')
}

/// Splits PTX into words, punctuation and strings, dropping comments.
fn tokens(t: &[u8]) -> Vec<Tok<'_>> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let c = t[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if t[i..].starts_with(b"//") {
            while i < t.len() && t[i] != b'\n' {
                i += 1;
            }
        } else if t[i..].starts_with(b"/*") {
            i = match t[i + 2..].windows(2).position(|w| w == b"*/") {
                Some(p) => i + 2 + p + 2,
                None => t.len(),
            };
        } else if c == b'"' {
            i += 1;
            while i < t.len() && t[i] != b'"' {
                i += 1;
            }
            i += 1;
            v.push(Tok::Str);
        } else if word_byte(c) {
            let s = i;
            while i < t.len() && word_byte(t[i]) {
                i += 1;
            }
            v.push(Tok::Word(&t[s..i]));
        } else {
            v.push(Tok::Punct(c));
            i += 1;
        }
    }
    v
}

/// Whether `t` is PTX: its first directive is `.version`.
pub fn looks_like_ptx(t: &[u8]) -> bool {
    matches!(tokens(until_nul(t)).first(), Some(Tok::Word(b".version")))
}

/// Module directives that end at the line, not at a `;`: their arguments are never words
/// that begin with a dot, so they end where the next directive begins.
const LINE_DIRECTIVES: [&[u8]; 4] = [b".version", b".target", b".address_size", b".file"];

fn bad(what: String) -> ImageError {
    ImageError::Malformed(format!("PTX: {what}"))
}

fn show(t: &[u8]) -> String {
    String::from_utf8_lossy(t).into_owned()
}

/// An integer literal: decimal, `0x` hex, `0b` binary or `0` octal, with an optional `U`.
fn integer(w: &[u8]) -> Option<u64> {
    let w = w.strip_suffix(b"U").unwrap_or(w);
    let s = std::str::from_utf8(w).ok()?;
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or(s.strip_prefix("0X")) {
        (h, 16)
    } else if let Some(b) = s.strip_prefix("0b").or(s.strip_prefix("0B")) {
        (b, 2)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || digits.starts_with('+') {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Bytes of one element of a fundamental type; the opaque handle types count a pointer each.
fn type_bytes(t: &[u8]) -> Option<u64> {
    Some(match t {
        b".b8" | b".u8" | b".s8" | b".e4m3x2" | b".e5m2x2" => 1,
        b".b16" | b".u16" | b".s16" | b".f16" | b".bf16" => 2,
        b".b32" | b".u32" | b".s32" | b".f32" | b".f16x2" | b".bf16x2" | b".tf32" => 4,
        b".b64" | b".u64" | b".s64" | b".f64" => 8,
        b".b128" => 16,
        b".texref" | b".samplerref" | b".surfref" => 8,
        _ => return None,
    })
}

/// Elements of an initializer: the items of its outermost braces (1 for a scalar).
fn init_count(init: &[Tok]) -> u64 {
    if init.first() != Some(&Tok::Punct(b'{')) {
        return 1;
    }
    let (mut depth, mut n, mut any) = (0u32, 0u64, false);
    for t in init {
        match t {
            Tok::Punct(b'{') => depth += 1,
            Tok::Punct(b'}') => depth = depth.saturating_sub(1),
            Tok::Punct(b',') if depth == 1 => n += 1,
            _ if depth >= 1 => any = true,
            _ => {}
        }
    }
    if any { n + 1 } else { 0 }
}

struct Layout {
    vars: Vec<Global>,
    end: u64,
}

/// One module-scope statement: adds the variables it declares in `.global`.
fn statement(s: &[Tok], out: &mut Layout) -> Result<(), ImageError> {
    let (mut global, mut external) = (false, false);
    let (mut align, mut vector, mut elem) = (None, 1u64, None);
    let mut i = 0;
    while let Some(Tok::Word(w)) = s.get(i) {
        if !w.starts_with(b".") {
            break;
        }
        match *w {
            b".visible" | b".weak" | b".common" => {}
            b".extern" => external = true,
            b".global" => global = true,
            _ if !global => return Ok(()),
            b".align" => {
                i += 1;
                let n = match s.get(i) {
                    Some(Tok::Word(n)) => integer(n),
                    _ => None,
                };
                match n {
                    Some(n) if n.is_power_of_two() => align = Some(n),
                    _ => return Err(bad(".align without a power of two".into())),
                }
            }
            b".attribute" => {
                // `.attribute(.managed)`: skip the parenthesised list.
                if s.get(i + 1) == Some(&Tok::Punct(b'(')) {
                    while i < s.len() && s[i] != Tok::Punct(b')') {
                        i += 1;
                    }
                }
            }
            b".v2" => vector = 2,
            b".v4" => vector = 4,
            b".v8" => vector = 8,
            t => match type_bytes(t) {
                Some(n) => elem = Some(n),
                None => {
                    return Err(ImageError::Unsupported(format!(
                        "PTX: a .global declaration with {}, which this reader cannot size",
                        show(t)
                    )));
                }
            },
        }
        i += 1;
    }
    if !global || external {
        return Ok(());
    }
    let elem = elem
        .ok_or_else(|| bad(".global declaration without a type".into()))?
        .checked_mul(vector)
        .ok_or_else(|| bad("element size overflows".into()))?;
    let align = align.unwrap_or(elem);
    loop {
        let name = match s.get(i) {
            Some(Tok::Word(n)) if !n.starts_with(b".") => show(n),
            other => {
                return Err(bad(format!(
                    ".global declaration: a name expected, found {other:?}"
                )));
            }
        };
        i += 1;
        let mut dims: Vec<Option<u64>> = Vec::new();
        while s.get(i) == Some(&Tok::Punct(b'[')) {
            match (s.get(i + 1), s.get(i + 2)) {
                (Some(Tok::Punct(b']')), _) => {
                    dims.push(None);
                    i += 2;
                }
                (Some(Tok::Word(n)), Some(Tok::Punct(b']'))) => {
                    let n = integer(n).ok_or_else(|| {
                        bad(format!("{name}: dimension {} is not an integer", show(n)))
                    })?;
                    dims.push(Some(n));
                    i += 3;
                }
                _ => return Err(bad(format!("{name}: a malformed dimension"))),
            }
        }
        let mut init: &[Tok] = &[];
        if s.get(i) == Some(&Tok::Punct(b'=')) {
            let start = i + 1;
            let mut depth = 0u32;
            i = start;
            while let Some(t) = s.get(i) {
                match t {
                    Tok::Punct(b'{') => depth += 1,
                    Tok::Punct(b'}') => depth = depth.saturating_sub(1),
                    Tok::Punct(b',') if depth == 0 => break,
                    _ => {}
                }
                i += 1;
            }
            init = &s[start..i];
        }
        let mut count = 1u64;
        for (k, d) in dims.iter().enumerate() {
            let n = match d {
                Some(n) => *n,
                None if k == 0 && !init.is_empty() => init_count(init),
                None => {
                    return Err(bad(format!(
                        "{name}: an empty dimension needs an initializer to size it"
                    )));
                }
            };
            count = count
                .checked_mul(n)
                .ok_or_else(|| bad(format!("{name}: its size overflows")))?;
        }
        let bytes = count
            .checked_mul(elem)
            .ok_or_else(|| bad(format!("{name}: its size overflows")))?;
        let offset = out
            .end
            .checked_next_multiple_of(align)
            .ok_or_else(|| bad(format!("{name}: its offset overflows")))?;
        out.end = offset
            .checked_add(bytes)
            .ok_or_else(|| bad(format!("{name}: the variables' end overflows")))?;
        out.vars.push(Global {
            name,
            offset,
            bytes,
        });
        match s.get(i) {
            None => return Ok(()),
            Some(Tok::Punct(b',')) => i += 1,
            Some(t) => return Err(bad(format!("unexpected {t:?} in a .global declaration"))),
        }
    }
}

/// Reads PTX text (up to its first NUL): its kernels and the layout of its `.global` variables.
pub fn parse(text: &[u8]) -> Result<Module, ImageError> {
    let toks = tokens(until_nul(text));
    if toks.first() != Some(&Tok::Word(b".version")) {
        return Err(bad(
            "the text does not begin with a .version directive".into()
        ));
    }
    let mut out = Layout {
        vars: Vec::new(),
        end: 0,
    };
    let mut kernels = Vec::new();
    let mut stmt: Vec<Tok> = Vec::new();
    let mut depth = 0u32;
    let mut line_directive = false;
    for t in toks {
        if line_directive {
            match t {
                Tok::Word(w) if w.starts_with(b".") => line_directive = false,
                _ => continue,
            }
        }
        if depth > 0 {
            match t {
                Tok::Punct(b'{') => depth += 1,
                Tok::Punct(b'}') => depth -= 1,
                _ => {}
            }
            continue;
        }
        let in_init = stmt.contains(&Tok::Punct(b'='));
        match t {
            Tok::Word(w) if stmt.is_empty() && LINE_DIRECTIVES.contains(&w) => {
                line_directive = true;
            }
            Tok::Punct(b';') => {
                statement(&stmt, &mut out)?;
                stmt.clear();
            }
            Tok::Punct(b'{') if !in_init => {
                // A function body: the statement so far is its header.
                if let Some(p) = stmt.iter().position(|t| *t == Tok::Word(b".entry")) {
                    match stmt.get(p + 1) {
                        Some(Tok::Word(n)) if !n.starts_with(b".") => {
                            let n = show(n);
                            if !kernels.contains(&n) {
                                kernels.push(n);
                            }
                        }
                        _ => return Err(bad(".entry without a name".into())),
                    }
                }
                stmt.clear();
                depth = 1;
            }
            Tok::Punct(b'}') if !in_init => return Err(bad("an unmatched '}'".into())),
            t => stmt.push(t),
        }
    }
    if depth > 0 {
        return Err(bad("a function body is not closed".into()));
    }
    if !stmt.is_empty() {
        return Err(bad("the last statement has no ';'".into()));
    }
    let footprint = out
        .end
        .checked_next_multiple_of(GLOBAL_GRANULARITY)
        .ok_or_else(|| bad("the variables together overflow".into()))?;
    Ok(Module {
        kernels,
        globals: Globals {
            vars: out.vars,
            footprint,
        },
    })
}
