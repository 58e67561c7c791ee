//! The `guardian-access` binary: parses the command line and hands over to
//! the library (see `cli`).

use std::process::ExitCode;

use clap::Parser;
use guardian_access::clock::Clock;

mod cli;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The one place the binary chooses its clock; there is no flag for it.
    let clock = Clock::system();
    if let Command::Serve(flags) = cli.command {
        return match cli::serve::main(*flags, clock) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::run(cli.command, &clock)) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
