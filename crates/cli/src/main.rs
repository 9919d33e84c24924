//! `gpuslice`: the one user-facing binary. Thin: argument parsing and wiring; the logic lives in
//! the core, ledger and edge modules.

mod arbiter;
mod bench;
mod bench_isolation;
mod demo;
mod install;
mod mig;
mod node;
mod run;
mod scheduler;
mod simulate;
mod spawn;
mod top;
mod watchdog;

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
    /// Watch tenants' shares, memory and throttling per device.
    Top(top::Args),
    /// MIG: validate and plan layouts; apply, assert and export them through NVML.
    Mig(mig::Args),
    /// The node agent: kubelet device plugin, CDI, health, metrics.
    Node(node::Args),
    /// The kube-scheduler extender for GPU slices.
    Scheduler(scheduler::Args),
    /// Replay a pod trace through the scheduling policies, offline.
    Simulate(simulate::Args),
    /// The compute arbiter for `gpuslice run` tenants (started on demand).
    #[command(hide = true)]
    Arbiter(arbiter::Args),
}

/// Logs of the long-running services go to stderr; `GPUSLICE_LOG` filters them (default info).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GPUSLICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Run(a) => run::run(a),
        Cmd::Demo(a) => demo::demo(a),
        Cmd::Bench(a) => bench::bench(a),
        Cmd::Top(a) => top::main(a),
        Cmd::Mig(a) => mig::main(a),
        Cmd::Node(a) => node::main(a),
        Cmd::Scheduler(a) => scheduler::main(a),
        Cmd::Simulate(a) => simulate::main(a),
        Cmd::Arbiter(a) => arbiter::main(a),
    };
    std::process::exit(code);
}
