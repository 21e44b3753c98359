//! The `roleplay` binary: parse, run, render the error once, exit with its code.

use clap::Parser;

fn main() {
    let cli = roleplay::cli::Cli::parse();
    let code = match roleplay::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
