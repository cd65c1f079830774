//! A model of one's own, built from mixq's layers, implements `Network` and is swept with the
//! block cache like mixq's families.

use burn::module::Module;
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Distribution, Tensor};
use mixq_core::{BitWidth, SiteBits, SiteId, SiteInfo, SiteKind};
use mixq_sensitivity::{NoHook, Probe, Record, measure_candidate, reference_logits};
use mixq_vit_models::layers::{LayerNorm, Linear, LinearConfig};
use mixq_vit_models::{Network, OutputKind, SiteHook, Slot};

/// The rows of an 8x8 image as 8 tokens, residual MLP blocks, mean over tokens, a classifier.
#[derive(Module, Debug)]
struct RowMlp {
    blocks: Vec<RowBlock>,
    head: Linear,
}

#[derive(Module, Debug)]
struct RowBlock {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl RowBlock {
    fn new(i: usize, device: &Device) -> Self {
        let path = SiteId::new(format!("blocks.{i}"));
        RowBlock {
            norm: LayerNorm::new(8, 1e-6, device),
            fc1: LinearConfig::new(8, 16).init(path.join("fc1"), device),
            fc2: LinearConfig::new(16, 8).init(path.join("fc2"), device),
        }
    }

    fn forward(&self, x: Tensor<3>, hook: &dyn SiteHook) -> Tensor<3> {
        let h = self.fc1.forward(self.norm.forward(x.clone(), hook), hook);
        x + self.fc2.forward(gelu(h), hook)
    }
}

impl RowMlp {
    fn new(device: &Device) -> Self {
        RowMlp {
            blocks: (0..3).map(|i| RowBlock::new(i, device)).collect(),
            head: LinearConfig::new(8, 10).init(SiteId::new("head"), device),
        }
    }

    fn pool_and_classify(&self, x: Tensor<3>, hook: &dyn SiteHook) -> Tensor<2> {
        let [b, _, c] = x.dims();
        self.head.forward(x.mean_dim(1).reshape([b, c]), hook)
    }
}

impl Network for RowMlp {
    fn sites(&self) -> Vec<SiteInfo> {
        let linears = self.blocks.iter().flat_map(|b| [&b.fc1, &b.fc2]);
        linears
            .chain([&self.head])
            .map(|l| {
                let (i, o) = l.dims();
                let params = (i * o) as u64;
                SiteInfo {
                    id: l.site.clone(),
                    kind: SiteKind::Linear,
                    params,
                    macs: 8 * params,
                }
            })
            .collect()
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Logits
    }

    fn forward_with(&self, images: Tensor<4>, hook: &dyn SiteHook) -> Tensor<2> {
        self.forward_with_boundaries(images, hook, &mut |x| x)
    }

    fn forward_with_boundaries(
        &self,
        images: Tensor<4>,
        hook: &dyn SiteHook,
        boundary: &mut dyn FnMut(Tensor<3>) -> Tensor<3>,
    ) -> Tensor<2> {
        let [b, _, h, w] = images.dims();
        let x = self
            .blocks
            .iter()
            .fold(images.reshape([b, h, w]), |x, block| {
                block.forward(boundary(x), hook)
            });
        self.pool_and_classify(boundary(x), hook)
    }

    fn block_sites(&self) -> Vec<Vec<SiteId>> {
        self.blocks
            .iter()
            .map(|b| vec![b.fc1.site.clone(), b.fc2.site.clone()])
            .collect()
    }

    fn forward_block(&self, i: usize, x: Tensor<3>, hook: &dyn SiteHook) -> Tensor<3> {
        self.blocks[i].forward(x, hook)
    }

    fn forward_from(&self, point: usize, x: Tensor<3>, hook: &dyn SiteHook) -> Tensor<2> {
        let x = self.blocks[point..]
            .iter()
            .fold(x, |x, block| block.forward(x, hook));
        self.pool_and_classify(x, hook)
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out: Vec<&mut Linear> = Vec::new();
        for b in &mut self.blocks {
            out.extend([&mut b.fc1, &mut b.fc2]);
        }
        out.push(&mut self.head);
        out
    }

    fn post_norm_pairs_mut(&mut self) -> Vec<(&mut LayerNorm, &mut Linear)> {
        self.blocks
            .iter_mut()
            .map(|b| (&mut b.norm, &mut b.fc1))
            .collect()
    }
}

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
