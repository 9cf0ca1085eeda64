//! `sfu-bench`: load-test a running SFU (or Janus) with str0m peers; see `loadrun::cli`.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "sfu-bench",
    version,
    about = "Load-test a running server with str0m peers"
)]
struct Cli {
    #[command(flatten)]
    bench: loadrun::cli::BenchArgs,
}

fn main() {
    loadrun::cli::main(Cli::parse().bench)
}
