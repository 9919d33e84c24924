//! Reads the two headers the way the driver's own build does.
//!
//! `cuda.h` is run through a small preprocessor with `__CUDA_API_VERSION_INTERNAL` defined: that
//! is the configuration in which every `#define cuX cuX_v2` and `__CUDA_API_PTDS/PTSZ` rename is
//! applied to the body's declarations *and* the trailing block re-declares the legacy and
//! default-stream names, so the declared names are exactly the symbols `libcuda.so.1` exports.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::lex::{self, Tok};

/// A function declared by `cuda.h`, under the name it links as.
#[derive(Clone, Debug)]
pub struct Decl {
    pub symbol: String,
    pub params: usize,
}

pub struct CudaH {
    pub cuda_version: i32,
    /// Declaration order; a symbol declared twice keeps its first entry.
    pub decls: Vec<Decl>,
}

#[derive(Clone, Debug)]
enum Macro {
    Object(Vec<Tok>),
    Function(Vec<String>, Vec<Tok>),
}

struct Cond {
    parent: bool,
    taken: bool,
    active: bool,
}

/// Macros a Linux x86-64 C compiler building the driver would see.
const PREDEFINED: &[&str] = &[
    "__CUDA_API_VERSION_INTERNAL",
    "__LP64__",
    "__GNUC__",
    "__linux__",
    "__x86_64__",
];

/// Preprocesses `cuda.h` followed by the interop headers (which build on its macros), each given
/// as (file name, text), and collects the declared functions.
pub fn parse_cuda_h(sources: &[(&str, &str)]) -> Result<CudaH, String> {
    let mut macros: HashMap<String, Macro> = PREDEFINED
        .iter()
        .map(|m| (m.to_string(), Macro::Object(vec![Tok::Num(1)])))
        .collect();
    let mut decls = Vec::new();
    let mut seen = HashSet::new();
    for (file, src) in sources {
        preprocess(file, src, &mut macros, &mut decls, &mut seen)?;
    }
    let cuda_version = match macros.get("CUDA_VERSION") {
        Some(Macro::Object(b)) => match b.as_slice() {
            [Tok::Num(n)] => *n as i32,
            _ => return Err("CUDA_VERSION is not a number".into()),
        },
        _ => return Err("cuda.h does not define CUDA_VERSION".into()),
    };
    Ok(CudaH {
        cuda_version,
        decls,
    })
}

fn preprocess(
    file: &str,
    src: &str,
    macros: &mut HashMap<String, Macro>,
    decls: &mut Vec<Decl>,
    seen: &mut HashSet<String>,
) -> Result<(), String> {
    let text = lex::clean(src);
    let mut stack: Vec<Cond> = Vec::new();
    let mut pending = String::new();
    let active = |stack: &[Cond]| stack.last().is_none_or(|c| c.active);
    for (lineno, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let Some(dir) = t.strip_prefix('#') else {
            if active(&stack) {
                pending.push_str(line);
                pending.push('\n');
            }
            continue;
        };
        let dir = dir.trim_start();
        let (kw, rest) = dir.split_at(
            dir.find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .unwrap_or(dir.len()),
        );
        let rest = rest.trim();
        let here = || format!("{file}:{}", lineno + 1);
        match kw {
            "if" | "ifdef" | "ifndef" => {
                let parent = active(&stack);
                let v = parent
                    && match kw {
                        "if" => eval(rest, macros).map_err(|e| format!("{}: {e}", here()))? != 0,
                        "ifdef" => macros.contains_key(rest),
                        _ => !macros.contains_key(rest),
                    };
                stack.push(Cond {
                    parent,
                    taken: v,
                    active: v,
                });
            }
            "elif" => {
                let c = stack
                    .last_mut()
                    .ok_or_else(|| format!("{}: stray #elif", here()))?;
                c.active = c.parent
                    && !c.taken
                    && eval(rest, macros).map_err(|e| format!("{}: {e}", here()))? != 0;
                c.taken |= c.active;
            }
            "else" => {
                let c = stack
                    .last_mut()
                    .ok_or_else(|| format!("{}: stray #else", here()))?;
                c.active = c.parent && !c.taken;
                c.taken = true;
            }
            "endif" => {
                stack
                    .pop()
                    .ok_or_else(|| format!("{}: stray #endif", here()))?;
            }
            _ if !active(&stack) => {}
            "define" | "undef" => {
                // Declarations seen so far are named under the macros in force where they appear.
                collect_decls(&pending, macros, decls, seen)?;
                pending.clear();
                if kw == "undef" {
                    macros.remove(rest);
                } else {
                    let (name, m) =
                        parse_define(rest).ok_or_else(|| format!("{}: bad #define", here()))?;
                    macros.insert(name, m);
                }
            }
            "error" => return Err(format!("{}: #error {rest}", here())),
            _ => {} // include, pragma
        }
    }
    collect_decls(&pending, macros, decls, seen)
}

fn parse_define(rest: &str) -> Option<(String, Macro)> {
    let end = rest
        .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .unwrap_or(rest.len());
    let name = rest[..end].to_string();
    if name.is_empty() {
        return None;
    }
    let after = &rest[end..];
    // A function-like macro has its `(` directly after the name.
    if let Some(params) = after.strip_prefix('(') {
        let close = params.find(')')?;
        let names = params[..close]
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        Some((
            name,
            Macro::Function(names, lex::tokens(&params[close + 1..])),
        ))
    } else {
        Some((name, Macro::Object(lex::tokens(after))))
    }
}

/// Finds `CUresult [CUDAAPI] name(` declarations and records `name` after macro expansion.
fn collect_decls(
    text: &str,
    macros: &HashMap<String, Macro>,
    decls: &mut Vec<Decl>,
    seen: &mut HashSet<String>,
) -> Result<(), String> {
    if !text.contains("CUresult") {
        return Ok(());
    }
    let toks = lex::tokens(text);
    let mut i = 0;
    while i < toks.len() {
        if toks[i].ident() != Some("CUresult") {
            i += 1;
            continue;
        }
        // `static inline` wrappers are compiled into the caller, not exported.
        let inline = i > 0 && matches!(toks[i - 1].ident(), Some("inline" | "static"));
        let mut j = i + 1;
        if toks.get(j).and_then(Tok::ident) == Some("CUDAAPI") {
            j += 1;
        }
        let (Some(Tok::Ident(name)), Some(open)) = (toks.get(j), toks.get(j + 1)) else {
            i += 1;
            continue;
        };
        if !open.is("(") || !name.starts_with("cu") || inline {
            i += 1;
            continue;
        }
        let close = lex::matching_paren(&toks, j + 1)
            .ok_or_else(|| format!("unbalanced declaration of {name}"))?;
        let symbol = expand(name, macros, &mut Vec::new())?;
        if seen.insert(symbol.clone()) {
            decls.push(Decl {
                symbol,
                params: lex::param_count(&toks, j + 1, close),
            });
        }
        i = close;
    }
    Ok(())
}

/// Expands an identifier whose expansion must again be one identifier (`cuX` -> `cuX_v2_ptds`).
fn expand(
    name: &str,
    macros: &HashMap<String, Macro>,
    hide: &mut Vec<String>,
) -> Result<String, String> {
    if hide.iter().any(|h| h == name) {
        return Ok(name.to_string());
    }
    let Some(Macro::Object(body)) = macros.get(name) else {
        return Ok(name.to_string());
    };
    hide.push(name.to_string());
    let out = match body.as_slice() {
        [Tok::Ident(next)] => expand(next, macros, hide),
        [Tok::Ident(f), open, Tok::Ident(arg), close] if open.is("(") && close.is(")") => {
            match macros.get(f) {
                Some(Macro::Function(params, fbody)) if params.len() == 1 => {
                    let pasted = substitute(&params[0], arg, fbody, macros, hide)?;
                    hide.push(f.clone());
                    let r = expand(&pasted, macros, hide);
                    hide.pop();
                    r
                }
                _ => Err(format!("{name}: cannot expand {f}(...)")),
            }
        }
        _ => Err(format!("{name}: macro body is not a single name")),
    };
    hide.pop();
    out
}

/// Applies a one-parameter function-like macro whose body is `p` or `p ## suffix ...`.
fn substitute(
    param: &str,
    arg: &str,
    body: &[Tok],
    macros: &HashMap<String, Macro>,
    hide: &mut Vec<String>,
) -> Result<String, String> {
    let pastes = body.iter().any(|t| t.is("##"));
    let mut out = String::new();
    for t in body {
        match t {
            Tok::Ident(id) if id == param => {
                // Arguments next to `##` are pasted unexpanded; otherwise they are expanded first.
                if pastes {
                    out.push_str(arg);
                } else {
                    out.push_str(&expand(arg, macros, hide)?);
                }
            }
            Tok::Ident(id) => out.push_str(id),
            Tok::Num(n) => out.push_str(&n.to_string()),
            t if t.is("##") => {}
            t => return Err(format!("unsupported token {t:?} in macro body")),
        }
    }
    Ok(out)
}

/// Evaluates a `#if` expression: `defined`, `!`, `&&`, `||`, comparisons, parentheses, integers.
fn eval(expr: &str, macros: &HashMap<String, Macro>) -> Result<i64, String> {
    let toks = lex::tokens(expr);
    let mut p = Eval {
        toks: &toks,
        pos: 0,
        macros,
    };
    let v = p.or()?;
    if p.pos != toks.len() {
        return Err(format!("cannot evaluate `#if {expr}`"));
    }
    Ok(v)
}

struct Eval<'a> {
    toks: &'a [Tok],
    pos: usize,
    macros: &'a HashMap<String, Macro>,
}

impl Eval<'_> {
    fn eat(&mut self, p: &str) -> bool {
        if self.toks.get(self.pos).is_some_and(|t| t.is(p)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn or(&mut self) -> Result<i64, String> {
        let mut v = self.and()?;
        while self.eat("||") {
            let r = self.and()?;
            v = (v != 0 || r != 0) as i64;
        }
        Ok(v)
    }
    fn and(&mut self) -> Result<i64, String> {
        let mut v = self.cmp()?;
        while self.eat("&&") {
            let r = self.cmp()?;
            v = (v != 0 && r != 0) as i64;
        }
        Ok(v)
    }
    fn cmp(&mut self) -> Result<i64, String> {
        let l = self.unary()?;
        for op in [">=", "<=", "==", "!=", ">", "<"] {
            if self.eat(op) {
                let r = self.unary()?;
                return Ok(match op {
                    ">=" => l >= r,
                    "<=" => l <= r,
                    "==" => l == r,
                    "!=" => l != r,
                    ">" => l > r,
                    _ => l < r,
                } as i64);
            }
        }
        Ok(l)
    }
    fn unary(&mut self) -> Result<i64, String> {
        if self.eat("!") {
            return Ok((self.unary()? == 0) as i64);
        }
        if self.eat("(") {
            let v = self.or()?;
            if !self.eat(")") {
                return Err("missing `)`".into());
            }
            return Ok(v);
        }
        let t = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or("unexpected end of #if")?;
        self.pos += 1;
        match t {
            Tok::Num(n) => Ok(n),
            Tok::Ident(id) if id == "defined" => {
                let paren = self.eat("(");
                let name = self
                    .toks
                    .get(self.pos)
                    .and_then(Tok::ident)
                    .ok_or("defined without a name")?;
                self.pos += 1;
                if paren && !self.eat(")") {
                    return Err("missing `)` after defined".into());
                }
                Ok(self.macros.contains_key(name) as i64)
            }
            // As in C, a name that is not a numeric macro evaluates to 0.
            Tok::Ident(id) => Ok(match self.macros.get(&id) {
                Some(Macro::Object(b)) => match b.as_slice() {
                    [Tok::Num(n)] => *n,
                    _ => 0,
                },
                _ => 0,
            }),
            t => Err(format!("unexpected {t:?} in #if")),
        }
    }
}

/// One `PFN_cuX_vNNNN[_ptds|_ptsz]` typedef.
#[derive(Clone, Debug)]
pub struct Pfn {
    pub base: String,
    pub version: i32,
    /// `"_ptds"`, `"_ptsz"` or `""`.
    pub per_thread: &'static str,
    pub params: usize,
    /// Its function is declared in no header we read, so it cannot be checked against one.
    pub undeclared: bool,
}

#[derive(Default)]
pub struct Typedefs {
    pub pfns: Vec<Pfn>,
    /// `#define PFN_cuX PFN_cuY_vNNNN` where `cuY` is a different function: base `cuX` -> (`cuY`, NNNN).
    pub aliases: BTreeMap<String, (String, i32)>,
}

/// Collects every PFN typedef in `cudaTypedefs.h`, whatever conditional it sits in: the
/// `__CUDA_API_VERSION_INTERNAL` block holds the oldest variants.
/// `undeclared`: the file's functions are declared in a header the wheel does not ship.
pub fn parse_typedefs(src: &str, undeclared: bool, out: &mut Typedefs) -> Result<(), String> {
    let text = lex::clean(src);
    let aliases = &mut out.aliases;
    // `#define PFN_cuX PFN_cuX_vNNNN`: supplies the version where a typedef forgot its suffix.
    let mut defaults = HashMap::new();
    let mut body = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(d) = t.strip_prefix('#') {
            let toks = lex::tokens(d);
            if let [Tok::Ident(kw), Tok::Ident(from), Tok::Ident(to)] = toks.as_slice()
                && kw == "define"
                && let (Some(from), Some((to_base, v, ""))) =
                    (from.strip_prefix("PFN_"), split_pfn(to))
            {
                if from != to_base {
                    aliases.insert(from.to_string(), (to_base.to_string(), v));
                } else {
                    defaults.insert(from.to_string(), v);
                }
            }
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    let toks = lex::tokens(&body);
    let pfns = &mut out.pfns;
    let mut i = 0;
    while i + 3 < toks.len() {
        // typedef CUresult (CUDAAPI *PFN_name)(params);
        if toks[i].ident() == Some("typedef")
            && toks[i + 1].ident() == Some("CUresult")
            && toks[i + 2].is("(")
        {
            let name_at = (i + 3..toks.len().min(i + 6))
                .find(|&k| toks[k].ident().is_some_and(|s| s.starts_with("PFN_")));
            if let Some(k) = name_at {
                let name = toks[k].ident().unwrap();
                let (base, version, pt) = split_pfn(name)
                    .or_else(|| {
                        let base = name.strip_prefix("PFN_")?;
                        defaults.get(base).map(|&v| (base, v, ""))
                    })
                    .ok_or_else(|| format!("typedef {name} has no version"))?;
                let open = k + 2;
                if !toks[k + 1].is(")") || !toks.get(open).is_some_and(|t| t.is("(")) {
                    return Err(format!("unexpected typedef shape for {name}"));
                }
                let close = lex::matching_paren(&toks, open)
                    .ok_or_else(|| format!("unbalanced typedef {name}"))?;
                pfns.push(Pfn {
                    base: base.to_string(),
                    version,
                    per_thread: pt,
                    params: lex::param_count(&toks, open, close),
                    undeclared,
                });
                i = close;
                continue;
            }
        }
        i += 1;
    }
    Ok(())
}

/// `PFN_cuX_v7000_ptds` -> (`cuX`, 7000, `"_ptds"`).
fn split_pfn(name: &str) -> Option<(&str, i32, &'static str)> {
    let name = name.strip_prefix("PFN_")?;
    let (name, pt) = if let Some(n) = name.strip_suffix("_ptds") {
        (n, "_ptds")
    } else if let Some(n) = name.strip_suffix("_ptsz") {
        (n, "_ptsz")
    } else {
        (name, "")
    };
    let at = name.rfind("_v")?;
    let version = name[at + 2..].parse().ok()?;
    Some((&name[..at], version, pt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_follow_the_internal_configuration() {
        let h = r#"
            #if defined(__CUDA_API_VERSION_INTERNAL) || defined(CUDA_API_PER_THREAD_DEFAULT_STREAM)
                #define __CUDA_API_PTDS(api) api ## _ptds
            #else
                #define __CUDA_API_PTDS(api) api
            #endif
            #define cuMemAlloc cuMemAlloc_v2
            #define cuCtxCreate_v3 cuCtxCreate_v3
            #define cuMemcpyHtoD __CUDA_API_PTDS(cuMemcpyHtoD_v2)
            #define CUDA_VERSION 12090
            /* CUresult CUDAAPI cuInComment(void); */
            CUresult CUDAAPI cuMemAlloc(CUdeviceptr *dptr, size_t bytesize);
            CUresult CUDAAPI cuCtxCreate_v3(CUcontext *pctx, int n);
            CUresult CUDAAPI cuMemcpyHtoD(CUdeviceptr d, const void *s,
                                          size_t n);
            typedef CUresult (CUDAAPI *PFN_cuInit_v2000)(unsigned int Flags);
            #if defined(_WIN32)
            CUresult CUDAAPI cuWindowsOnly(void);
            #endif
            #if defined(__CUDA_API_VERSION_INTERNAL)
                #undef cuMemAlloc
                #undef cuMemcpyHtoD
                CUresult CUDAAPI cuMemAlloc(unsigned int *dptr, unsigned int bytesize);
                CUresult CUDAAPI cuMemcpyHtoD_v2(CUdeviceptr d, const void *s, size_t n);
            #elif defined(__CUDA_API_PER_THREAD_DEFAULT_STREAM)
                static inline CUresult cuInlineWrapper(void) { return 0; }
            #endif
        "#;
        let got = parse_cuda_h(&[("t.h", h)]).unwrap();
        assert_eq!(got.cuda_version, 12090);
        let names: Vec<(&str, usize)> = got
            .decls
            .iter()
            .map(|d| (d.symbol.as_str(), d.params))
            .collect();
        assert_eq!(
            names,
            [
                ("cuMemAlloc_v2", 2),
                ("cuCtxCreate_v3", 2),
                ("cuMemcpyHtoD_v2_ptds", 3),
                ("cuMemAlloc", 2),
                ("cuMemcpyHtoD_v2", 3),
            ]
        );
    }

    #[test]
    fn typedef_names_and_unsuffixed_typedefs() {
        let t = r#"
            #define PFN_cuFoo PFN_cuFoo_v12040
            #define PFN_cuGraphInstantiate PFN_cuGraphInstantiateWithFlags_v11040
            typedef CUresult (CUDAAPI *PFN_cuMemcpy_v7000_ptds)(CUdeviceptr_v2 dst, CUdeviceptr_v2 src, size_t n);
            typedef CUresult(CUDAAPI *PFN_cuInit_v2000)(unsigned int Flags);
            typedef CUresult (CUDAAPI *PFN_cuFoo)(void);
        "#;
        let mut out = Typedefs::default();
        parse_typedefs(t, false, &mut out).unwrap();
        let got: Vec<(&str, i32, &str, usize)> = out
            .pfns
            .iter()
            .map(|p| (p.base.as_str(), p.version, p.per_thread, p.params))
            .collect();
        assert_eq!(
            got,
            [
                ("cuMemcpy", 7000, "_ptds", 3),
                ("cuInit", 2000, "", 1),
                ("cuFoo", 12040, "", 0)
            ]
        );
        assert_eq!(
            out.aliases["cuGraphInstantiate"],
            ("cuGraphInstantiateWithFlags".to_string(), 11040)
        );
    }
}
