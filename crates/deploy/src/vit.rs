//! ViT / DeiT (plain and distilled) on the integer engine, mirroring
//! `mixq_vit_models::VisionTransformer::forward_with` step by step.

use mixq_core::{Error, Result};
use mixq_quant_kernels::{IntGemm, RhsLayout, host_values};
use mixq_vit_models::VitConfig;
use mixq_vit_models::layers::Linear;
use rayon::prelude::*;

use crate::format::{Header, Tensors};
use crate::ops::{
    LinearOp, Norm, Operand, PARALLEL_FROM, QuantOperand, QuantRef, add_in_place, matmul, pool,
    quantize_scaled, quantize_u8, softmax_rows_here,
};
use crate::sites::{Reader, read_floats, write_floats};

/// One pre-LN transformer block.
pub(crate) struct BlockOp {
    norm1: Norm,
    qkv: LinearOp,
    qk: [Operand; 2],
    av: [Operand; 2],
    proj: LinearOp,
    norm2: Norm,
    fc1: LinearOp,
    fc2: LinearOp,
}

/// The whole network.
pub(crate) struct VitNet {
    cfg: VitConfig,
    patch: LinearOp,
    cls: Vec<f32>,
    dist: Option<Vec<f32>>,
    pos: Vec<f32>,
    blocks: Vec<BlockOp>,
    norm: Norm,
    head: LinearOp,
    head_dist: Option<LinearOp>,
    /// The float tensors outside the sites as the file holds them (norms, tokens, position
    /// embedding), written back unchanged when the model is saved.
    floats: Tensors,
}

impl VitNet {
    /// The engine for `cfg` from a file's header and tensors. The model is built as burn
    /// declares it (its parameters left uninitialised), its float parameters outside the sites
    /// read into it by module path, and each engine piece taken from its typed layer: the file
    /// is read by the model's own declaration, not by names spelled out here.
    pub fn build(cfg: &VitConfig, header: &Header, t: &Tensors, gemm: IntGemm) -> Result<Self> {
        let device = burn::tensor::Device::flex();
        let model = cfg.init(&device)?;
        let sites = model.sites.clone();
        let model = read_floats(model, &sites, t)?;
        let mut floats = Tensors::new(t.origin.clone());
        write_floats(&model, &sites, &mut floats)?;
        let r = Reader { header, t, gemm };
        let d = cfg.embed_dim;
        let hidden = cfg.mlp_hidden();
        let host = |x: burn::tensor::Tensor<3>| host_values(&x);
        let classifier = |head: &Option<Linear>| -> Result<Option<LinearOp>> {
            head.as_ref()
                .map(|h| r.linear(&h.site, d, cfg.num_classes))
                .transpose()
        };
        let blocks = model
            .blocks
            .iter()
            .map(|b| {
                Ok(BlockOp {
                    norm1: Norm::of(&b.norm1)?,
                    qkv: r.linear(&b.attn.qkv.site, d, 3 * d)?,
                    qk: r.operands(&b.attn.matmul_qk)?,
                    av: r.operands(&b.attn.matmul_av)?,
                    proj: r.linear(&b.attn.proj.site, d, d)?,
                    norm2: Norm::of(&b.norm2)?,
                    fc1: r.linear(&b.mlp.fc1.site, d, hidden)?,
                    fc2: r.linear(&b.mlp.fc2.site, hidden, d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let patch = &model.patch_embed.proj;
        Ok(VitNet {
            patch: r.linear(
                &patch.site,
                cfg.in_chans * cfg.patch_size * cfg.patch_size,
                d,
            )?,
            cls: host(model.cls_token.val())?,
            dist: model
                .dist_token
                .as_ref()
                .map(|t| host(t.val()))
                .transpose()?,
            pos: host(model.pos_embed.val())?,
            blocks,
            norm: Norm::of(&model.norm)?,
            head: classifier(&model.head)?.ok_or_else(|| {
                Error::invalid("arch.num_classes", 0, "the integer engine runs classifiers")
            })?,
            head_dist: classifier(&model.head_dist)?,
            floats,
            cfg: cfg.clone(),
        })
    }

    /// The tensors of a file, regenerated from the engine (packed weights as they are).
    pub fn tensors(&self, t: &mut Tensors) {
        for (key, value) in &self.floats.map {
            t.insert(key.clone(), value.clone());
        }
        self.patch.store(t);
        for b in &self.blocks {
            for op in [&b.qkv, &b.proj, &b.fc1, &b.fc2] {
                op.store(t);
            }
        }
        self.head.store(t);
        if let Some(h) = &self.head_dist {
            h.store(t);
        }
    }

    /// Logits `[batch, classes]` for normalized images `[batch, c, h, w]` (row-major).
    pub fn forward(&self, gemm: &IntGemm, images: &[f32], batch: usize) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let (ch, size, p) = (c.in_chans, c.img_size, c.patch_size);
        if batch == 0 || images.len() != batch * ch * size * size {
            return Err(Error::invalid(
                "images",
                format!("{} values", images.len()),
                format!("need batch * {ch} * {size} * {size} with batch >= 1 (batch = {batch})"),
            ));
        }
        let (d, n, g) = (c.embed_dim, c.num_tokens(), c.grid());
        let pre = c.num_prefix_tokens();

        // Patch embedding: the stride-p, kernel-p convolution as a linear over patches whose
        // features are ordered (channel, ky, kx), the flattening of the `[out, in, kh, kw]` weight.
        let kp = ch * p * p;
        let mut patches = vec![0f32; batch * g * g * kp];
        patches
            .par_chunks_mut(kp)
            .enumerate()
            .for_each(|(row, dst)| {
                let (b, gy, gx) = (row / (g * g), row / g % g, row % g);
                for ci in 0..ch {
                    for ky in 0..p {
                        let src = ((b * ch + ci) * size + gy * p + ky) * size + gx * p;
                        let o = (ci * p + ky) * p;
                        dst[o..o + p].copy_from_slice(&images[src..src + p]);
                    }
                }
            });
        let pe = self.patch.forward(gemm, &patches, batch * g * g)?;

        // Tokens: [cls, (dist), patches] + pos_embed.
        let mut x = vec![0f32; batch * n * d];
        for (b, xb) in x.chunks_exact_mut(n * d).enumerate() {
            xb[..d].copy_from_slice(&self.cls);
            if let Some(dist) = &self.dist {
                xb[d..2 * d].copy_from_slice(dist);
            }
            xb[pre * d..].copy_from_slice(&pe[b * g * g * d..(b + 1) * g * g * d]);
            for (v, pv) in xb.iter_mut().zip(&self.pos) {
                *v += pv;
            }
        }

        let rows = batch * n;
        for blk in &self.blocks {
            let qkv = blk.qkv.forward_normed(gemm, &blk.norm1, &x, rows)?;
            let attn = self.attention(gemm, blk, &qkv, batch)?;
            pool::give_f32(qkv);
            let y = blk.proj.forward(gemm, &attn, rows)?;
            pool::give_f32(attn);
            add_in_place(&mut x, &y);
            pool::give_f32(y);
            let y = match blk.fc2.input_quant() {
                Some(q) => {
                    let h = blk
                        .fc1
                        .forward_normed_gelu_u8(gemm, &blk.norm2, &x, rows, q)?;
                    let y = blk.fc2.forward_codes(gemm, &h, rows)?;
                    pool::give_u8(h);
                    y
                }
                None => {
                    let f = blk.fc1.forward_normed(gemm, &blk.norm2, &x, rows)?;
                    blk.fc2.forward_gelu(gemm, f, rows)?
                }
            };
            add_in_place(&mut x, &y);
            pool::give_f32(y);
        }

        // LayerNorm is per token, so only the pooled tokens need it.
        let token = |i: usize| -> Vec<f32> {
            let rows: Vec<f32> = (0..batch)
                .flat_map(|b| x[(b * n + i) * d..(b * n + i + 1) * d].iter().copied())
                .collect();
            self.norm.forward(&rows)
        };
        let mut logits = self.head.forward(gemm, &token(0), batch)?;
        if let Some(head_dist) = &self.head_dist {
            let dl = head_dist.forward(gemm, &token(1), batch)?;
            for (a, b) in logits.iter_mut().zip(dl) {
                *a = (*a + b) / 2.0;
            }
        }
        Ok(logits)
    }

    /// Multi-head attention from the fused `qkv` output `[batch * n, 3 * d]` to the merged
    /// heads `[batch * n, d]`.
    fn attention(
        &self,
        gemm: &IntGemm,
        blk: &BlockOp,
        qkv: &[f32],
        batch: usize,
    ) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let (d, n, heads) = (c.embed_dim, c.num_tokens(), c.num_heads);
        let hd = d / heads;
        let scale = (hd as f64).powf(-0.5) as f32;
        // One task per (image, head): the head's q/k/v taken from the fused `qkv` rows (timm's
        // reshape/permute) and quantized, the products, the softmax and the probability
        // quantizer back to back on a 197 × 197 block that stays in cache.
        let operand = |bh: usize, part: usize, mul: Option<f32>, op: &Operand| -> QuantOperand {
            let (b, h) = (bh / heads, bh % heads);
            let row = |t: usize| {
                let src = (b * n + t) * 3 * d + part * d + h * hd;
                &qkv[src..src + hd]
            };
            match op {
                Operand::Uniform(q) => {
                    let mut codes = vec![0u8; n * hd];
                    for (t, dst) in codes.chunks_exact_mut(hd).enumerate() {
                        quantize_scaled(q, mul, row(t), dst);
                    }
                    QuantOperand::Codes(codes, *q)
                }
                Operand::F32 | Operand::Log(_) => {
                    let mut values = vec![0f32; n * hd];
                    for (t, dst) in values.chunks_exact_mut(hd).enumerate() {
                        for (o, &v) in dst.iter_mut().zip(row(t)) {
                            *o = mul.map_or(v, |s| v * s);
                        }
                    }
                    if let Operand::Log(l) = op {
                        l.fake_quant_slice(&mut values);
                    }
                    QuantOperand::Values(values)
                }
            }
        };
        let mut per_head = pool::f32s(batch * heads * n * hd);
        per_head
            .par_chunks_mut(n * hd)
            .enumerate()
            .try_for_each(|(bh, out)| -> Result<()> {
                let q = operand(bh, 0, Some(scale), &blk.qk[0]);
                let k = operand(bh, 1, None, &blk.qk[1]);
                let v = operand(bh, 2, None, &blk.av[1]);
                let all = 0..n * hd;
                pool::with_scratch(n * n, |scores| {
                    matmul(
                        gemm,
                        q.view(all.clone()),
                        n,
                        k.view(all.clone()),
                        n,
                        RhsLayout::NK,
                        scores,
                    )?;
                    softmax_rows_here(scores, n);
                    let codes;
                    let probs = match &blk.av[0] {
                        Operand::F32 => QuantRef::Values(scores),
                        Operand::Log(l) => {
                            l.fake_quant_slice(scores);
                            QuantRef::Values(scores)
                        }
                        Operand::Uniform(q) => {
                            codes = quantize_u8(q, scores);
                            QuantRef::Codes(&codes, *q)
                        }
                    };
                    matmul(gemm, probs, n, v.view(all), hd, RhsLayout::KN, out)
                })
            })?;
        // Merge heads: [batch, heads, n, hd] -> [batch, n, heads * hd].
        let mut merged = pool::f32s(batch * n * d);
        let merge = |(row, dst): (usize, &mut [f32])| {
            let (b, t) = (row / n, row % n);
            for h in 0..heads {
                let src = ((b * heads + h) * n + t) * hd;
                dst[h * hd..(h + 1) * hd].copy_from_slice(&per_head[src..src + hd]);
            }
        };
        if merged.len() < PARALLEL_FROM {
            merged.chunks_mut(d).enumerate().for_each(merge);
        } else {
            merged.par_chunks_mut(d).enumerate().for_each(merge);
        }
        pool::give_f32(per_head);
        Ok(merged)
    }
}
