//! `gpuslice mig`.

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn main(_args: Args) -> i32 {
    eprintln!("gpuslice mig: not available in this build");
    2
}
