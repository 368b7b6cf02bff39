//! Benchmark (placeholder, filled in below).
use crate::error::Result;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 3)]
    pub secs: u64,
}

pub fn run(_a: &BenchArgs, _out: &mut dyn std::io::Write) -> Result<()> {
    Ok(())
}
