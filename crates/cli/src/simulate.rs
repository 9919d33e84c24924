//! `gpuslice simulate`.

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn main(_args: Args) -> i32 {
    eprintln!("gpuslice simulate: not available in this build");
    2
}
