//! `cargo xtask <command>`: the mixq command line, a thin layer over the library crates.

mod bench;
mod common;
mod eval;
mod info;
mod ptq;
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
    /// Whole-model benchmarks measured side by side (forward, ptq).
    Bench(bench::BenchArgs),
    /// Evaluate a model: top-1/top-5, cross-entropy and images/s.
    Eval(eval::EvalArgs),
    /// List a model's quantizable sites with parameters and MACs per image.
    Info(info::InfoArgs),
    /// Post-training quantization: FP vs quantized in one table, and a run folder.
    Ptq(ptq::PtqArgs),
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
        Command::Bench(args) => bench::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Info(args) => info::run(args),
        Command::Ptq(args) => ptq::run(args),
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
