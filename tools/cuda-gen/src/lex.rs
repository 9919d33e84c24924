//! Just enough C lexing for NVIDIA's headers: comment stripping, line splicing, tokens.

/// Removes `/* */` and `//` comments (keeping newlines so line structure survives) and joins
/// backslash-continued lines.
pub fn clean(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    if b[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
                i += 2;
                out.push(' ');
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' | b'\'' => {
                // Copy literals verbatim so a "/*" inside one is not taken for a comment.
                let q = b[i];
                let start = i;
                i += 1;
                while i < b.len() && b[i] != q && b[i] != b'\n' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
                out.push_str(&src[start..i]);
            }
            b'\\' if b.get(i + 1) == Some(&b'\n') => i += 2,
            _ => {
                let ch = src[i..].chars().next().unwrap();
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    Ident(String),
    Num(i64),
    Punct(&'static str),
    Other(char),
}

impl Tok {
    pub fn ident(&self) -> Option<&str> {
        match self {
            Tok::Ident(s) => Some(s),
            _ => None,
        }
    }
    pub fn is(&self, p: &str) -> bool {
        matches!(self, Tok::Punct(q) if *q == p)
    }
}

const PUNCTS: &[&str] = &[
    "##", "&&", "||", ">=", "<=", "==", "!=", "(", ")", ",", ";", "*", "!", "<", ">", "{", "}",
    "#", "=",
];

pub fn tokens(s: &str) -> Vec<Tok> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(s[st..i].to_string()));
        } else if c.is_ascii_digit() {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let text = s[st..i].trim_end_matches(['u', 'U', 'l', 'L']);
            let n = if let Some(h) = text.strip_prefix("0x").or(text.strip_prefix("0X")) {
                i64::from_str_radix(h, 16).unwrap_or(0)
            } else {
                text.parse().unwrap_or(0)
            };
            out.push(Tok::Num(n));
        } else if let Some(p) = PUNCTS.iter().find(|p| s[i..].starts_with(**p)) {
            out.push(Tok::Punct(p));
            i += p.len();
        } else {
            let ch = s[i..].chars().next().unwrap();
            out.push(Tok::Other(ch));
            i += ch.len_utf8();
        }
    }
    out
}

/// Index just past the `)` matching the `(` at `open`.
pub fn matching_paren(toks: &[Tok], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (k, t) in toks.iter().enumerate().skip(open) {
        if t.is("(") {
            depth += 1;
        } else if t.is(")") {
            depth -= 1;
            if depth == 0 {
                return Some(k + 1);
            }
        }
    }
    None
}

/// Number of parameters in the parenthesised list `toks[open..close]` (`(void)` counts as none).
pub fn param_count(toks: &[Tok], open: usize, close: usize) -> usize {
    let inner = &toks[open + 1..close - 1];
    if inner.is_empty() || (inner.len() == 1 && inner[0].ident() == Some("void")) {
        return 0;
    }
    let mut depth = 0usize;
    let mut n = 1;
    for t in inner {
        if t.is("(") {
            depth += 1;
        } else if t.is(")") {
            depth -= 1;
        } else if t.is(",") && depth == 0 {
            n += 1;
        }
    }
    n
}
