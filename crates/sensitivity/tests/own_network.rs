//! A model of one's own, built from mixq's layers (`mixq_vit_models::testing::RowMlp`),
//! implements `Network` and is swept with the block cache like mixq's families.

use burn::tensor::{Device, Distribution, Tensor};
use mixq_core::{BitWidth, SiteBits, SiteId};
use mixq_sensitivity::{NoHook, Probe, Record, measure_candidate, reference_logits};
use mixq_vit_models::testing::RowMlp;
use mixq_vit_models::{Network, SiteHook, Slot};

/// Rounds every site's input to a grid of step 0.25: a crude quantizer.
struct Coarse;

impl SiteHook for Coarse {
    fn apply(&self, _site: &SiteId, slot: Slot, x: Tensor<2>) -> Tensor<2> {
        match slot {
            Slot::Input => x.mul_scalar(4.0).round().div_scalar(4.0),
            _ => x,
        }
    }
}

#[test]
fn an_own_network_is_swept_with_the_block_cache() {
    let device = Device::flex();
    device.seed(7);
    let model = RowMlp::new(&device);
    let id = SiteId::new;
    assert_eq!(model.resume_point(&id("blocks.0.fc1")), Some(0));
    assert_eq!(model.resume_point(&id("blocks.2.fc2")), Some(2));
    assert_eq!(model.resume_point(&id("head")), Some(3), "after the blocks");
    assert_eq!(model.resume_point(&id("blocks.0.norm")), None, "not a site");

    let images = Tensor::<4>::random([6, 1, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let probe = Probe::new(images, vec![0, 1, 2, 3, 4, 5], 4).unwrap();
    let reference = reference_logits(&model, &probe);
    let sites: Vec<SiteId> = model.sites().into_iter().map(|s| s.id).collect();
    let bits = SiteBits {
        w_bits: BitWidth::new(4).unwrap(),
        a_bits: BitWidth::new(4).unwrap(),
    };
    let sweep = |use_cache| {
        let mut records: Vec<Record> = Vec::new();
        measure_candidate(
            &model,
            &Coarse,
            &NoHook,
            &probe,
            &reference,
            &sites,
            bits,
            use_cache,
            |r| {
                records.push(r);
                Ok(())
            },
        )
        .unwrap();
        records
    };
    let cached = sweep(true);
    assert_eq!(cached, sweep(false), "the block cache changes nothing");
    assert_eq!(cached.len(), 7);
    for r in &cached {
        assert!(r.damage.kl > 0.0, "{}: coarse inputs cost nothing", r.site);
    }
}
