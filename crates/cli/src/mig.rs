//! `gpuslice mig`: validate and plan layouts (pure, `gpuslice_core::mig`); apply, assert and
//! export mig-parted configs through NVML (`gpuslice_nvml::mig`).

use std::io::Write;
use std::path::PathBuf;

use gpuslice_core::mig::{self, MigPartedConfig};
use gpuslice_nvml::Nvml;
use gpuslice_nvml::mig::MigOpError;

use crate::install::{Install, SIM_NVML};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Say whether a layout (PROFILE[@START],…) can exist on a model, and why not.
    Validate {
        #[arg(long)]
        model: String,
        layout: String,
    },
    /// Plan a layout that serves a demand (PROFILE=COUNT,…), optionally from a current layout.
    Plan {
        #[arg(long)]
        model: String,
        #[arg(long)]
        demand: String,
        /// The layout the GPU has now (PROFILE@START,…); the plan destroys as little of it as
        /// possible.
        #[arg(long)]
        current: Option<String>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Make the GPUs match config NAME of a mig-parted file (YAML or JSON).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(short = 'c', long = "config")]
        config: String,
        /// Use the simulated GPU's NVML.
        #[arg(long)]
        sim: bool,
    },
    /// Exit 0 if the GPUs match config NAME, 1 (saying why) if not.
    Assert {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(short = 'c', long = "config")]
        config: String,
        #[arg(long)]
        sim: bool,
    },
    /// Print the GPUs' MIG state as a mig-parted v1 file (config name `current`).
    Export {
        #[arg(long)]
        sim: bool,
    },
    /// List GPUs and their MIG devices as NVML shows them, one JSON object per GPU.
    List {
        #[arg(long)]
        sim: bool,
    },
}

pub fn main(args: Args) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(Fail::Input(m)) => {
            eprintln!("gpuslice mig: {m}");
            2
        }
        Err(Fail::Runtime(m)) => {
            eprintln!("gpuslice mig: {m}");
            1
        }
    }
}

enum Fail {
    Input(String),
    Runtime(String),
}

impl From<mig::MigError> for Fail {
    fn from(e: mig::MigError) -> Self {
        Fail::Input(e.to_string())
    }
}

impl From<MigOpError> for Fail {
    fn from(e: MigOpError) -> Self {
        match e {
            MigOpError::Input(m) => Fail::Input(m),
            e => Fail::Runtime(e.to_string()),
        }
    }
}

fn run(args: Args) -> Result<i32, Fail> {
    match args.cmd {
        Cmd::Validate { model, layout } => {
            let m = mig::model(&model)?;
            let requested = mig::parse_layout(&layout)?;
            // An unknown profile is bad input; a layout that breaks the geometry is an answer.
            for r in &requested {
                if m.profile(&r.profile).is_none() {
                    return Err(Fail::Input(format!(
                        "unknown MIG profile `{}` for {}; accepted: {}",
                        r.profile,
                        m.name,
                        m.profile_names().join(", ")
                    )));
                }
            }
            match mig::validate(m, &requested) {
                Ok(placed) => {
                    println!("valid on {}: {}", m.name, layout_text(&placed));
                    Ok(0)
                }
                Err(e) => {
                    println!("invalid on {}: {e}", m.name);
                    Ok(1)
                }
            }
        }
        Cmd::Plan {
            model,
            demand,
            current,
            output,
        } => {
            let m = mig::model(&model)?;
            let demand = mig::parse_demand(&demand)?;
            let current = match current {
                Some(c) => Some(mig::validate(m, &mig::parse_layout(&c)?)?),
                None => None,
            };
            let plan = mig::plan(m, &demand, current.as_deref())?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string(&plan).expect("a plan serialises")
                ),
                Output::Text => {
                    println!(
                        "{} on {}: {}",
                        if plan.feasible {
                            "feasible"
                        } else {
                            "INFEASIBLE"
                        },
                        m.name,
                        layout_text(&plan.instances)
                    );
                    if !plan.unplaced.is_empty() {
                        let u: Vec<String> = plan
                            .unplaced
                            .iter()
                            .map(|u| format!("{}={}", u.profile, u.count))
                            .collect();
                        println!("unplaced: {}", u.join(","));
                    }
                    if !plan.destroy.is_empty() {
                        println!("destroy: {}", layout_text(&plan.destroy));
                    }
                }
            }
            Ok(if plan.feasible { 0 } else { 1 })
        }
        Cmd::Apply { file, config, sim } => {
            let cfg = read_config(&file)?;
            let nvml = open_nvml(sim)?;
            let steps = gpuslice_nvml::mig::apply(&nvml, &cfg, &config)?;
            if steps.is_empty() {
                println!("the GPUs already match `{config}`; nothing to do");
            } else {
                for s in &steps {
                    println!("{s}");
                }
                println!("applied `{config}` in {} step(s)", steps.len());
            }
            Ok(0)
        }
        Cmd::Assert { file, config, sim } => {
            let cfg = read_config(&file)?;
            let nvml = open_nvml(sim)?;
            let why = gpuslice_nvml::mig::check(&nvml, &cfg, &config)?;
            if why.is_empty() {
                println!("the GPUs match `{config}`");
                Ok(0)
            } else {
                for w in &why {
                    println!("{w}");
                }
                Ok(1)
            }
        }
        Cmd::Export { sim } => {
            let nvml = open_nvml(sim)?;
            let cfg = gpuslice_nvml::mig::export(&nvml, "current")?;
            print!(
                "{}",
                serde_yaml_ng::to_string(&cfg)
                    .map_err(|e| Fail::Runtime(format!("writing YAML: {e}")))?
            );
            Ok(0)
        }
        Cmd::List { sim } => {
            let nvml = open_nvml(sim)?;
            list(&nvml).map_err(|e| Fail::Runtime(e.to_string()))?;
            Ok(0)
        }
    }
}

fn list(nvml: &Nvml) -> Result<(), gpuslice_nvml::NvmlError> {
    for g in nvml.gpus()? {
        let mode = nvml.mig_mode(g.index)?;
        let devices: Vec<serde_json::Value> = nvml
            .mig_devices(g.index)?
            .into_iter()
            .map(|d| {
                serde_json::json!({
                    "uuid": d.uuid,
                    "memory_bytes": d.memory_bytes,
                    "gpu_instance": d.gpu_instance,
                    "compute_instance": d.compute_instance,
                })
            })
            .collect();
        let line = serde_json::json!({
            "index": g.index,
            "name": g.name,
            "uuid": g.uuid,
            "memory_bytes": g.memory_bytes,
            "sm_count": g.sm_count,
            "numa_node": g.numa_node,
            "pci_bus_id": g.pci_bus_id,
            "mig_capable": mode.is_some(),
            "mig_enabled": mode.is_some_and(|(cur, _)| cur),
            "mig_devices": devices,
        });
        // A closed pipe (`| head`) ends the listing quietly.
        if writeln!(std::io::stdout().lock(), "{line}").is_err() {
            break;
        }
    }
    Ok(())
}

fn layout_text(l: &[mig::Instance]) -> String {
    if l.is_empty() {
        return "(empty)".into();
    }
    l.iter()
        .map(|i| format!("{}@{}", i.profile, i.start))
        .collect::<Vec<_>>()
        .join(",")
}

/// A mig-parted file: YAML, of which JSON is a subset.
fn read_config(path: &std::path::Path) -> Result<MigPartedConfig, Fail> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fail::Input(format!("{}: {e}", path.display())))?;
    serde_yaml_ng::from_str(&text).map_err(|e| {
        Fail::Input(format!(
            "{}: not a mig-parted v1 config ({e}); expected `version: v1` and `mig-configs: {{NAME: [{{devices: all | [INDEX, …], mig-enabled: BOOL, mig-devices: {{PROFILE: COUNT}}}}]}}`",
            path.display()
        ))
    })
}

fn open_nvml(sim: bool) -> Result<Nvml, Fail> {
    let r = if sim {
        let install = Install::locate().map_err(Fail::Runtime)?;
        Nvml::from_path(&install.lib_dir.join(SIM_NVML))
    } else {
        Nvml::system()
    };
    r.map_err(|e| Fail::Runtime(e.to_string()))
}
