//! `gpuslice simulate`: replay a pod trace through the scheduling policies, side by side.
//! Thin: the simulator is `gpuslice_core::sched::sim`.

use std::path::PathBuf;

use gpuslice_core::sched::sim::{ClusterSpec, SimPolicy, SimReport, Trace, simulate};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The cluster file (docs/cluster-file.md).
    #[arg(long, value_name = "FILE")]
    pub cluster: PathBuf,
    /// The pod trace (docs/cluster-file.md).
    #[arg(long, value_name = "FILE")]
    pub trace: PathBuf,
    /// Policies to compare: binpack, spread, whole (repeat or comma-separate).
    #[arg(long, value_delimiter = ',', default_values_t = ["binpack".to_string(), "spread".to_string(), "whole".to_string()])]
    pub policy: Vec<String>,
    /// Order pending pods by dominant-resource fair share instead of arrival.
    #[arg(long)]
    pub fair_share: bool,
    /// Rows in the utilization-over-time table.
    #[arg(long, default_value_t = 12)]
    pub steps: usize,
}

pub fn main(a: Args) -> i32 {
    let read =
        |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let run = || -> Result<Vec<SimReport>, String> {
        let spec = ClusterSpec::parse(&read(&a.cluster)?).map_err(|e| e.to_string())?;
        spec.build().map_err(|e| e.to_string())?;
        let (trace, pods) = Trace::parse(&read(&a.trace)?).map_err(|e| e.to_string())?;
        let policies = a
            .policy
            .iter()
            .map(|p| SimPolicy::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        policies
            .into_iter()
            .map(|p| simulate(&spec, &trace, &pods, p, a.fair_share).map_err(|e| e.to_string()))
            .collect()
    };
    let reports = match run() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gpuslice simulate: {e}");
            return 2;
        }
    };
    print!("{:<26}", "");
    for r in &reports {
        print!("{:>12}", r.policy.name());
    }
    println!();
    let row = |label: &str, f: &dyn Fn(&SimReport) -> String| {
        print!("{label:<26}");
        for r in &reports {
            print!("{:>12}", f(r));
        }
        println!();
    };
    row("pods placed", &|r| r.placed.to_string());
    row("pods rejected", &|r| r.rejected.to_string());
    row("pending mean (s)", &|r| format!("{:.0}", r.mean_pending_s));
    row("pending p95 (s)", &|r| format!("{:.0}", r.p95_pending_s));
    row("GPU memory used (mean)", &|r| {
        format!("{:.1} %", r.memory_util * 100.0)
    });
    row("GPU compute used (mean)", &|r| {
        format!("{:.1} %", r.compute_util * 100.0)
    });
    row("fragmentation (mean)", &|r| {
        format!("{:.1} %", r.fragmentation * 100.0)
    });
    let end = reports
        .iter()
        .filter_map(|r| r.samples.last())
        .map(|s| s.t)
        .fold(0.0, f64::max);
    if end > 0.0 && a.steps > 0 {
        println!("\nGPU memory used / fragmentation over time");
        for k in 0..=a.steps {
            let t = end * k as f64 / a.steps as f64;
            print!("t={:>7.0}s{:<16}", t, "");
            for r in &reports {
                let s = r.samples.iter().take_while(|s| s.t <= t).last();
                match s {
                    Some(s) => print!(
                        "{:>12}",
                        format!(
                            "{:.0}%/{:.0}%",
                            s.memory_util * 100.0,
                            s.fragmentation * 100.0
                        )
                    ),
                    None => print!("{:>12}", "-"),
                }
            }
            println!();
        }
    }
    0
}
