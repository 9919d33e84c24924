//! `gpuslice`: the one user-facing binary. Thin: argument parsing and wiring; the logic lives in
//! the core, ledger and edge modules.

mod bench;
mod demo;
mod install;
mod run;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gpuslice",
    version,
    about = "Safely isolated GPU slices: memory caps and shares for CUDA programs"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a command as one tenant with a GPU memory cap.
    Run(run::RunArgs),
    /// Show isolation at work on the simulated GPU: several tenants, several allocation paths.
    Demo(demo::DemoArgs),
    /// Measure what the interposer costs, side by side with calling the driver directly.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Run(a) => run::run(a),
        Cmd::Demo(a) => demo::demo(a),
        Cmd::Bench(a) => bench::bench(a),
    };
    std::process::exit(code);
}
