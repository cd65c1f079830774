//! `cargo xtask outliers`: the per-channel magnitudes of every post-LayerNorm activation over
//! calibration images (`mixq_ptq::post_ln_channels`), the outlier channels that channel-wise
//! post-LN quantization exists for.

use clap::Args;
use mixq_core::{Result, RunDir};
use mixq_ptq::{calibration_images, post_ln_channels};

use crate::common::{CalibArgs, ModelArgs};

#[derive(Args, Debug)]
pub struct OutliersArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub calibration: CalibArgs,
    /// A channel is an outlier when its max |x| is at least this many times the median channel's.
    #[arg(long, default_value_t = 10.0)]
    pub factor: f32,
    /// Where the run folder (post-ln-channels.json) is written.
    #[arg(long, default_value = "runs")]
    pub runs: std::path::PathBuf,
}

pub fn run(args: OutliersArgs) -> Result<()> {
    let card = args.model.card()?;
    let device = args.model.device.device()?;
    let model = args.model.load(&card, &device)?;
    let images = calibration_images(
        &card.data_spec(),
        args.calibration.calib_data.as_deref(),
        args.calibration.calib,
        args.model.seed,
        &device,
    )?;
    let n = images.dims()[0];
    let stats = post_ln_channels(&model, images)?;
    println!(
        "| site (reads a LayerNorm) | channels | median channel max |x| | largest | largest / median | channels >= {}x median (largest first) |",
        args.factor
    );
    println!("|---|---:|---:|---:|---:|---|");
    for s in &stats {
        let outliers = s.outliers(args.factor);
        let shown: Vec<String> = outliers
            .iter()
            .take(6)
            .map(|(c, v)| format!("{c} ({v:.1})"))
            .collect();
        let more = if outliers.len() > 6 {
            format!(" +{}", outliers.len() - 6)
        } else {
            String::new()
        };
        println!(
            "| {} | {} | {:.3} | {:.2} | {:.1}x | {}{more} |",
            s.site,
            s.abs_max.len(),
            s.median(),
            s.max(),
            s.outlier_ratio(),
            if shown.is_empty() {
                "-".into()
            } else {
                shown.join(", ")
            },
        );
    }
    println!("\n{n} calibration images, seed {}.", args.model.seed);
    let run = RunDir::create(&args.runs, "outliers")?;
    let json = mixq_core::to_json(&stats, "post-LN channels")?;
    run.write("post-ln-channels.json", json.as_bytes())?;
    let ratios: Vec<_> = stats
        .iter()
        .map(|s| (s.site.clone(), s.outlier_ratio() as f64))
        .collect();
    mixq_report::channel_outlier_chart(
        run.file("post-ln-channels.png"),
        &ratios,
        &format!("Post-LN channels, largest / median — {}", card.aliases[0]),
    )?;
    println!("wrote {}", run.finish()?.display());
    Ok(())
}
