//! `cargo xtask <command>`: the mixq command line, a thin layer over the library crates.

mod common;
mod eval;
mod info;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mixq: explainability-driven mixed-precision quantization of vision transformers.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Evaluate a model: top-1/top-5, cross-entropy and images/s.
    Eval(eval::EvalArgs),
    /// List a model's quantizable sites with parameters and MACs per image.
    Info(info::InfoArgs),
    /// Train a digits model (reproduces the checkpoints shipped in models/).
    Train(train::TrainArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,xtask=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Eval(args) => eval::run(args),
        Command::Info(args) => info::run(args),
        Command::Train(args) => train::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
