//! `cargo run -p cuda-gen -- [--include DIR] [--check]`
//!
//! Regenerates `crates/cuda-abi/src/generated.rs` and `crates/sim-cuda/src/stubs.rs` from
//! `cuda.h`/`cudaTypedefs.h` in DIR (default `.cache/cuda-runtime/include`, fetched by
//! `scripts/fetch-cuda-runtime.sh` when missing). `--check` writes nothing and exits 1 when either
//! file is out of date.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cuda-gen: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let mut include: Option<PathBuf> = None;
    let mut check = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--include" => include = Some(args.next().ok_or("--include needs a directory")?.into()),
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: cuda-gen [--include DIR] [--check]");
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    let root = cuda_gen::repo_root();
    let include = match include {
        Some(dir) => dir,
        None => {
            let dir = cuda_gen::default_include();
            if !dir.join("cuda.h").exists() {
                let script = root.join("scripts/fetch-cuda-runtime.sh");
                let ok = Command::new("bash")
                    .arg(&script)
                    .status()
                    .map_err(|e| format!("{}: {e}", script.display()))?;
                if !ok.success() {
                    return Err("could not fetch the CUDA headers; pass --include DIR".into());
                }
            }
            dir
        }
    };

    let model = cuda_gen::load(&include)?;
    let outputs = [
        (cuda_gen::ABI_OUT, cuda_gen::emit::abi(&model)),
        (
            cuda_gen::STUBS_OUT,
            cuda_gen::generate_stubs(&model, &root.join(cuda_gen::SIM_SRC))?,
        ),
    ];
    eprintln!(
        "cuda-gen: CUDA_VERSION {}: {} exported symbols, {} cuGetProcAddress names, {} without a version",
        model.cuda_version,
        model.symbols.len(),
        model.table.len(),
        model.unversioned.len()
    );
    let mut stale = false;
    for (rel, text) in &outputs {
        let path = root.join(rel);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == *text {
            continue;
        }
        if check {
            eprintln!("cuda-gen: {rel} is out of date; run `cargo run -p cuda-gen`");
            stale = true;
        } else {
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            eprintln!("cuda-gen: wrote {rel}");
        }
    }
    Ok(if stale {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
