//! `gpuslice scheduler`.

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn main(_args: Args) -> i32 {
    eprintln!("gpuslice scheduler: not available in this build");
    2
}
