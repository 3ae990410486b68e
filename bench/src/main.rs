//! `nvmf-bench` entry point (placeholder: the runner replaces it). Parses
//! the command line and prints the resolved jobs.

use std::process::ExitCode;

use bench::{Cli, jobs_from_cli};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match jobs_from_cli(&cli) {
        Ok(jobs) => {
            for j in &jobs {
                println!("{j:?}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nvmf-bench: {e}");
            ExitCode::from(2)
        }
    }
}
