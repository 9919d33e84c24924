//! `gpuslice node`.

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn main(_args: Args) -> i32 {
    eprintln!("gpuslice node: not available in this build");
    2
}
