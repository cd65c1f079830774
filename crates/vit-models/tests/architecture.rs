//! Full-size architectures match timm's parameter counts, and the sites add up to the known
//! MAC figures.

use crate::common;
use std::collections::BTreeMap;

use burn::tensor::Device;
use mixq_vit_models::{ModelCard, Network, SiteKind, summarize_sites};

#[test]
fn parameter_counts_equal_timm() {
    let text = std::fs::read_to_string(common::fixtures().join("timm_param_counts.json")).unwrap();
    let timm: BTreeMap<String, usize> = serde_json::from_str(&text).unwrap();
    let device = Device::flex();
    let mut checked = 0;
    for card in ModelCard::builtin() {
        let Some(&expected) = timm.get(&card.name) else {
            continue;
        };
        let model = card.arch.init(&device).unwrap();
        assert_eq!(model.num_params(), expected, "{}", card.name);
        checked += 1;
    }
    assert_eq!(checked, timm.len(), "every timm count has a card");
}

#[test]
fn deit_small_sites_add_up() {
    let sites = ModelCard::find("deit-s").unwrap().arch.sites();
    // patch embed + 12 blocks x (qkv, qk, av, proj, fc1, fc2) + head.
    assert_eq!(sites.len(), 1 + 12 * 6 + 1);
    assert_eq!(sites[1].id.as_str(), "blocks.0.attn.qkv");
    assert_eq!(sites[2].kind, SiteKind::MatMulQk);
    let t = summarize_sites(&sites);
    // Quantized weights: per block qkv, proj, fc1, fc2; the patch-embedding kernel; the head.
    let per_block = 384 * 1152 + 384 * 384 + 2 * 384 * 1536;
    assert_eq!(t.params, 12 * per_block + 3 * 16 * 16 * 384 + 384 * 1000);
    let gmacs = t.macs as f64 / 1e9;
    assert!(
        (4.5..4.7).contains(&gmacs),
        "DeiT-S is about 4.6 GMACs, got {gmacs}"
    );
}

#[test]
fn swin_tiny_sites_cover_downsampling_and_head() {
    let sites = ModelCard::find("swin-t").unwrap().arch.sites();
    let ids: Vec<&str> = sites.iter().map(|s| s.id.as_str()).collect();
    assert!(ids.contains(&"layers.1.downsample.reduction"));
    assert!(ids.contains(&"layers.2.blocks.5.attn.matmul_av"));
    assert_eq!(*ids.last().unwrap(), "head.fc");
    let gmacs = summarize_sites(&sites).macs as f64 / 1e9;
    assert!(
        (4.3..4.6).contains(&gmacs),
        "Swin-T is about 4.5 GMACs, got {gmacs}"
    );
}

/// The declared blocks agree with the forward (`testing::check_blocks`): `forward_block` steps
/// exactly from each boundary to the next, and rerunning from a site's `resume_point` with only
/// that site changed equals the full forward, while the next boundary would miss the change
/// (checked to fail when Swin's merging is left out of its block). Over every site of ViT,
/// distilled DeiT (two heads), Swin (patch merging between stages) and a layer-scale ViT: all
/// but the patch embedding resume from a boundary.
#[test]
fn blocks_and_resume_points_agree_with_the_forward() {
    let device = Device::flex();
    for name in common::FIXTURES {
        let (model, input, _) = common::fixture(name, &device);
        let resumed = mixq_vit_models::testing::check_blocks(&model, input)
            .unwrap_or_else(|e| panic!("{name}:\n{e}"));
        assert_eq!(
            resumed,
            model.sites().len() - 1,
            "{name}: all but the patch embedding"
        );
        assert_eq!(
            model.resume_point(&mixq_vit_models::SiteId::new("blocks.0.norm1")),
            None,
            "{name}: not a site"
        );
    }
}

/// Every family's hand-declared sites (order, parameters, MACs) agree with what its forward
/// passes through the hook: ViT, distilled DeiT, Swin with patch merging, layer-scale ViT, the
/// own-model `RowMlp` and WTPose.
#[test]
fn declared_sites_match_the_forward() {
    use mixq_vit_models::testing::{FIXTURES, RowMlp, check_sites, fixture};
    let device = Device::flex();
    for name in FIXTURES {
        let (model, images, _) = fixture(name, &device);
        check_sites(&model, images).unwrap_or_else(|e| panic!("{name}:\n{e}"));
    }
    let images = burn::tensor::Tensor::<4>::ones([2, 1, 8, 8], &device);
    check_sites(&RowMlp::new(&device), images).unwrap();
    let wtpose = mixq_vit_models::WtPoseConfig::tiny().init(&device).unwrap();
    let images = burn::tensor::Tensor::<4>::ones([2, 3, 128, 96], &device);
    check_sites(&wtpose, images).unwrap();
}
