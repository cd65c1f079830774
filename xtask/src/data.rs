//! `cargo xtask data`: the data sets mixq knows, where each was found (or how to install it)
//! and the sizes of its fixed splits.

use std::time::Instant;

use clap::Args;
use mixq_core::Result;
use mixq_datasets::KnownDataset;

#[derive(Args, Debug)]
pub struct DataArgs {}

pub fn run(_args: DataArgs) -> Result<()> {
    println!("| data set | location | image | classes | train | val | test | load s |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut missing = Vec::new();
    for set in KnownDataset::ALL {
        let location = match set {
            KnownDataset::Digits => "embedded".to_string(),
            _ => match set.locate() {
                Ok(dir) => dir.display().to_string(),
                Err(e) => {
                    println!("| {} | not installed | | | | | | |", set.name());
                    missing.push(e.to_string());
                    continue;
                }
            },
        };
        let start = Instant::now();
        let data = match set.open() {
            Ok(data) => data,
            Err(e) => {
                println!("| {} | {location}: unreadable | | | | | | |", set.name());
                missing.push(e.to_string());
                continue;
            }
        };
        let secs = start.elapsed().as_secs_f64();
        let [c, h, w] = data.test.image_shape;
        println!(
            "| {} | {location} | {c}x{h}x{w} | {} | {} | {} | {} | {secs:.2} |",
            set.name(),
            data.test.num_classes,
            data.train.len(),
            data.val
                .as_ref()
                .map_or("-".into(), |v| v.len().to_string()),
            data.test.len(),
        );
    }
    for m in &missing {
        println!("\n{m}");
    }
    println!(
        "\nval: a fixed, stratified split of the training set for calibration, probes and QAT \
         validation (digits: calibration uses train); final figures come from test only."
    );
    Ok(())
}
