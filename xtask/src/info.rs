//! `cargo xtask info`: a model's sites with parameters and MACs.

use clap::Args;
use mixq_core::{Result, SiteInfo, summarize_sites};
use mixq_vit_models::{ModelCard, WtPoseConfig};

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Model alias or model-card .toml file.
    #[arg(long, default_value = "digits-deit")]
    pub model: String,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let card = ModelCard::find(&args.model)?;
    if let Some(config) = card.arch.pose() {
        return pose_info(&card.aliases[0], config);
    }
    let sites = card.arch.sites();
    println!("{} ({}): {}", card.aliases[0], card.name, card.description);
    println!();
    site_table(&sites);
    let t = summarize_sites(&sites);
    let device = burn::tensor::Device::flex();
    let total_params = card.arch.init(&device)?.num_params();
    println!();
    println!(
        "{} sites; {:.2} M parameters in total ({:.2} M in quantizable weights); {:.3} GMACs per image",
        t.sites,
        total_params as f64 / 1e6,
        t.params as f64 / 1e6,
        t.macs as f64 / 1e9
    );
    Ok(())
}

/// A pose model: its config gives sites, parameters and GFLOPs (mmpose's count).
fn pose_info(name: &str, cfg: &WtPoseConfig) -> Result<()> {
    let [h, w] = cfg.input_size;
    println!("{name}: WTPose (Swin + waterfall module), {h}x{w} input, 17 heatmaps at stride 4");
    println!();
    let sites = cfg.sites();
    site_table(&sites);
    let t = summarize_sites(&sites);
    println!();
    println!(
        "{} sites; {:.2} M parameters in total ({:.2} M in quantizable weights); {:.2} GFLOPs per image (mmpose's count)",
        t.sites,
        cfg.num_params() as f64 / 1e6,
        t.params as f64 / 1e6,
        cfg.gflops()
    );
    Ok(())
}

fn site_table(sites: &[SiteInfo]) {
    println!("| site | kind | params | MMACs |");
    println!("|---|---|---:|---:|");
    for s in sites {
        println!(
            "| {} | {:?} | {} | {:.2} |",
            s.id,
            s.kind,
            s.params,
            s.macs as f64 / 1e6
        );
    }
}
