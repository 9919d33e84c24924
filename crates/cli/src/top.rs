//! `gpuslice top`.

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn main(_args: Args) -> i32 {
    eprintln!("gpuslice top: not available in this build");
    2
}
