//! The `roleplay` binary: parse, run, render the error once, exit with its code.

use clap::Parser;

/// mimalloc: a worker at high concurrency spends a fifth of its CPU in glibc's malloc (see
/// BENCHMARKS.md, "Worker").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = roleplay::cli::Cli::parse();
    let code = match roleplay::commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
