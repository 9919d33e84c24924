//! Finds the driver functions the simulator already defines.

use std::collections::BTreeSet;
use std::path::Path;

use crate::lex::{self, Tok};

/// Names of `cu*` functions exported from the `.rs` files under `dir`, `stubs.rs` excepted: marked
/// `no_mangle` or `export_name = "cu..."` themselves, or declared inside an invocation of a local
/// `macro_rules!` macro whose expansion carries `no_mangle`.
pub fn implemented(dir: &Path) -> Result<BTreeSet<String>, String> {
    let mut files = Vec::new();
    visit(dir, &mut files)?;
    // Comments are dropped so a commented-out function does not count; Rust's comment syntax
    // is C's as far as that goes.
    let files: Vec<Vec<Tok>> = files
        .iter()
        .map(|src| lex::tokens(&lex::clean(src)))
        .collect();
    let exporting: BTreeSet<String> = files.iter().flat_map(|t| exporting_macros(t)).collect();
    let mut out = BTreeSet::new();
    for toks in &files {
        scan(toks, &exporting, &mut out);
    }
    Ok(out)
}

fn visit(dir: &Path, out: &mut Vec<String>) -> Result<(), String> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .map(|e| e.map(|e| e.path()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            visit(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "rs")
            && path.file_name().is_some_and(|n| n != "stubs.rs")
        {
            out.push(
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?,
            );
        }
    }
    Ok(())
}

/// The end (exclusive) of the delimited group opening at `open`, if `toks[open]` opens one.
fn group_end(toks: &[Tok], open: usize) -> Option<usize> {
    let close = match toks.get(open)? {
        Tok::Punct("{") => Tok::Punct("}"),
        Tok::Punct("(") => Tok::Punct(")"),
        Tok::Other('[') => Tok::Other(']'),
        _ => return None,
    };
    let opener = &toks[open];
    let mut depth = 0usize;
    for (k, t) in toks.iter().enumerate().skip(open) {
        if t == opener {
            depth += 1;
        } else if *t == close {
            depth -= 1;
            if depth == 0 {
                return Some(k + 1);
            }
        }
    }
    None
}

/// `macro_rules! NAME { ... no_mangle ... }` definitions.
fn exporting_macros(toks: &[Tok]) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..toks.len() {
        if toks[i].ident() == Some("macro_rules")
            && toks.get(i + 1).is_some_and(|t| t.is("!"))
            && let Some(name) = toks.get(i + 2).and_then(Tok::ident)
            && let Some(end) = group_end(toks, i + 3)
            && toks[i + 3..end]
                .iter()
                .any(|t| t.ident() == Some("no_mangle"))
        {
            out.push(name.to_string());
        }
    }
    out
}

fn scan(toks: &[Tok], exporting: &BTreeSet<String>, out: &mut BTreeSet<String>) {
    let mut i = 0;
    while i < toks.len() {
        match toks[i].ident() {
            Some("no_mangle") => {
                // The next `fn NAME` in the same item: stop at a body or item end.
                let mut k = i + 1;
                while k + 1 < toks.len() && !toks[k].is("{") && !toks[k].is(";") {
                    if toks[k].ident() == Some("fn") {
                        if let Some(name) = toks[k + 1].ident().filter(|n| n.starts_with("cu")) {
                            out.insert(name.to_string());
                        }
                        break;
                    }
                    k += 1;
                }
            }
            Some("export_name") => {
                // `#[unsafe(export_name = "cuX")]`: the lexer leaves the literal as characters.
                let rest = &src_after(&toks[i + 1..]);
                if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next())
                    && name.starts_with("cu")
                {
                    out.insert(name.to_string());
                }
            }
            Some(m) if exporting.contains(m) && toks.get(i + 1).is_some_and(|t| t.is("!")) => {
                if let Some(end) = group_end(toks, i + 2) {
                    for w in toks[i + 2..end].windows(2) {
                        if w[0].ident() == Some("fn")
                            && let Some(name) = w[1].ident().filter(|n| n.starts_with("cu"))
                        {
                            out.insert(name.to_string());
                        }
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// Re-spells the tokens after `export_name =` up to the closing quote.
fn src_after(toks: &[Tok]) -> String {
    let mut s = String::new();
    for t in toks.iter().skip_while(|t| t.is("=")) {
        match t {
            Tok::Other('"') if !s.is_empty() => {
                s.push('"');
                break;
            }
            Tok::Other(c) => s.push(*c),
            Tok::Ident(id) => s.push_str(id),
            Tok::Num(n) => s.push_str(&n.to_string()),
            Tok::Punct(p) => s.push_str(p),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exported_driver_functions_only() {
        let src = r#"
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn cuInit(flags: u32) -> i32 { 0 }
            #[unsafe(no_mangle)]
            pub extern "C" fn cuMemAlloc_v2(p: *mut u64, n: usize) -> i32 { 0 }
            #[unsafe(export_name = "cuMemFree_v2")]
            pub extern "C" fn mem_free(p: u64) -> i32 { 0 }
            // #[unsafe(no_mangle)] pub extern "C" fn cuCommentedOut() -> i32 { 0 }
            pub extern "C" fn cuNotExported() -> i32 { 0 }
            #[unsafe(no_mangle)]
            pub static cuStatic: i32 = 0;
            fn helper() { cuInit(0); }
            macro_rules! export {
                ($(fn $name:ident() $body:block)*) => {
                    $( #[unsafe(no_mangle)] pub extern "C" fn $name() -> i32 $body )*
                };
            }
            macro_rules! plain { ($($t:tt)*) => { $($t)* }; }
            export! {
                fn cuStreamCreate() { 0 }
                fn cuCtxCreate_v4() { 0 }
            }
            plain! { fn cuNotExportedEither() -> i32 { 0 } }
        "#;
        let toks = lex::tokens(&lex::clean(src));
        let exporting = exporting_macros(&toks).into_iter().collect();
        let mut out = BTreeSet::new();
        scan(&toks, &exporting, &mut out);
        let got: Vec<&str> = out.iter().map(String::as_str).collect();
        assert_eq!(
            got,
            [
                "cuCtxCreate_v4",
                "cuInit",
                "cuMemAlloc_v2",
                "cuMemFree_v2",
                "cuStreamCreate"
            ]
        );
    }
}
