//! `cargo xtask <command>`: the mixq command line, a thin layer over the library crates.

mod bench;
mod common;
mod data;
mod deploy;
mod eval;
mod info;
mod lrp;
mod mixed;
mod outliers;
mod pose;
mod pose_ptq;
mod ptq;
mod qat;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// burn allocates a fresh buffer for most tensor ops. glibc's malloc hands large ones back to
/// the kernel on free (mmap), so every op paid a page fault per 4 KiB again: a quarter of a
/// training step's time. mimalloc keeps and reuses them (FP training +16-30 % measured), and
/// more so with purging off ([`keep_freed_memory`]).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc returns freed pages to the kernel after 10 ms by default; a training step frees
/// and reallocates the same few hundred MB every step, so the kernel zeroes them again on the
/// next fault (perf: `clear_page_erms` 10 % of a step). Never purging keeps them: FP training
/// +10 % measured side by side (`bench train`), at the cost of keeping the peak footprint.
fn keep_freed_memory() {
    // `mi_option_purge_delay` in mimalloc.h's option enum (v2 and v3); -1: never purge.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets a process-wide allocator option; mimalloc allows it at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

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
    /// Integer engine vs burn-flex f32 on random weights: images/s and model bytes.
    BenchInt(deploy::BenchIntArgs),
    /// The data sets mixq knows: where each was found (or how to install it) and its splits.
    Data(data::DataArgs),
    /// Evaluate a model: top-1/top-5, cross-entropy and images/s.
    Eval(eval::EvalArgs),
    /// Quantize a model and write it for the integer engine (one .safetensors file).
    Export(deploy::ExportArgs),
    /// List a model's quantizable sites with parameters and MACs per image.
    Info(info::InfoArgs),
    /// Mixed-precision allocation from LRP scores and a sensitivity table (writes plans).
    Allocate(mixed::AllocateArgs),
    /// LRP relevance: per-site contribution scores (TOML/JSON + bar chart) and heatmaps.
    Lrp(lrp::LrpArgs),
    /// Per-channel magnitudes of the post-LayerNorm activations: the outlier channels.
    Outliers(outliers::OutliersArgs),
    /// Pose estimation (WTPose): train or evaluate on a COCO-format keypoint set.
    Pose(pose::PoseArgs),
    /// Post-training quantization: FP vs quantized in one table, and a run folder.
    Ptq(ptq::PtqArgs),
    /// Quantization-aware training (LSQ + distillation) with any bit plan; resumable.
    Qat(qat::QatArgs),
    /// Evaluate an exported integer model: top-1 and images/s.
    RunInt(deploy::RunIntArgs),
    /// Per-site sensitivity sweep (resumable, shardable with --shard k/n, --merge).
    Sensitivity(mixed::SensitivityArgs),
    /// Train a shipped model from its card's recipe (reproduces the checkpoints in models/).
    Train(train::TrainArgs),
}

fn main() -> ExitCode {
    // Piped into `head` and the like, a closed stdout ends the command quietly, as it does for
    // other command-line tools, instead of panicking in `println!`: restore the default
    // SIGPIPE action that Rust's runtime replaces with "ignore".
    #[cfg(unix)]
    // SAFETY: called before any other thread exists; SIG_DFL is a valid action for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // A user's own MIMALLOC_PURGE_DELAY wins (and gives the A/B comparison).
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        keep_freed_memory();
    }
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
        Command::BenchInt(args) => deploy::bench_int(args),
        Command::Export(args) => deploy::export(args),
        Command::RunInt(args) => deploy::run_int(args),
        Command::Data(args) => data::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Info(args) => info::run(args),
        Command::Allocate(args) => mixed::run_allocate(args),
        Command::Lrp(args) => lrp::run(args),
        Command::Sensitivity(args) => mixed::run_sensitivity(args),
        Command::Outliers(args) => outliers::run(args),
        Command::Pose(args) => pose::run(args),
        Command::Ptq(args) => ptq::run(args),
        Command::Qat(args) => qat::run(args),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Command {
        Cli::try_parse_from(line.split_whitespace())
            .unwrap_or_else(|e| panic!("{line}: {e}"))
            .command
    }

    #[test]
    fn the_shared_flags_have_one_spelling_and_keep_the_old_ones_as_aliases() {
        let Command::Qat(q) = parse("cargo-xtask qat --model m --bits 3 --wbits 2 --image-bits 6")
        else {
            panic!("not qat")
        };
        assert_eq!(
            (q.bits, q.bit_args.w_bits, q.bit_args.a_bits),
            (3, Some(2), None)
        );
        assert_eq!(q.bit_args.image_bits, 6);
        let Command::Ptq(p) = parse("cargo-xtask ptq --model m --limit 7 --abits 5 --calib 9")
        else {
            panic!("not ptq")
        };
        assert_eq!((p.eval_data.eval, p.bit_args.a_bits), (Some(7), Some(5)));
        assert_eq!((p.calibration.calib, p.eval_data.batch), (9, 64));
        let Command::Export(e) =
            parse("cargo-xtask export --model m --w-bits 4 --softmax log2 --out f")
        else {
            panic!("not export")
        };
        assert_eq!(e.bit_args.w_bits, Some(4));
        assert_eq!(e.quantizers.softmax, mixq_ptq::SoftmaxMode::Log2);
        for line in [
            "cargo-xtask eval --model m --limit 3",
            "cargo-xtask run-int --model f --eval 3",
        ] {
            match parse(line) {
                Command::Eval(a) => assert_eq!(a.eval_data.eval, Some(3)),
                Command::RunInt(a) => assert_eq!(a.eval_data.eval, Some(3)),
                _ => panic!("{line}"),
            }
        }
        // A plan excludes the bits that would contradict it.
        assert!(
            Cli::try_parse_from("cargo-xtask qat --model m --plan p --bits 3".split(' ')).is_err()
        );
    }
}
