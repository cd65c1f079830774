//! The rules against relevance written out by hand, and their conservation identities.

use burn::tensor::{Device, Tensor, TensorData};
use mixq_lrp::{RelevanceTap, rules};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn device() -> Device {
    Device::flex()
}

fn random(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-1.0..1.0f32) * scale)
        .collect()
}

fn tensor2(v: &[f32], shape: [usize; 2]) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &device())
}

fn leaf(v: &[f32], shape: [usize; 2]) -> Tensor<2> {
    tensor2(v, shape).autodiff().require_grad()
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.without_autodiff()
        .into_data()
        .try_into_vec::<f32>()
        .unwrap()
}

fn sum(t: Tensor<2>) -> f64 {
    host(t).iter().map(|&v| v as f64).sum()
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "element {i}: {x} vs {y}"
        );
    }
}

/// Relevance of a bias-free `x -> relu(x W1) -> (. W2)[target]`, by hand: the rule applied
/// layer by layer on host vectors.
fn by_hand(
    x: &[f32],
    w1: &[f32],
    w2: &[f32],
    d: [usize; 3],
    target: usize,
    alpha_beta: bool,
    eps: f32,
) -> Vec<f32> {
    let [n_in, n_hid, n_out] = d;
    let z1: Vec<f32> = (0..n_hid)
        .map(|j| (0..n_in).map(|i| x[i] * w1[i * n_hid + j]).sum())
        .collect();
    let h: Vec<f32> = z1.iter().map(|&v| v.max(0.0)).collect();
    let z2: f32 = (0..n_hid).map(|j| h[j] * w2[j * n_out + target]).sum();
    // One layer of the rule: relevance of `inp` given relevance `r_out` of `inp @ w`.
    let layer =
        |inp: &[f32], w: &[f32], cols: usize, col: &dyn Fn(usize) -> usize, r_out: &[f32]| {
            let mut r_in = vec![0f32; inp.len()];
            for (jj, &r) in r_out.iter().enumerate() {
                let j = col(jj);
                let contrib: Vec<f32> = (0..inp.len()).map(|i| inp[i] * w[i * cols + j]).collect();
                if alpha_beta {
                    let pos: f32 = contrib.iter().filter(|&&c| c > 0.0).sum();
                    if pos > 0.0 {
                        for i in 0..inp.len() {
                            r_in[i] += contrib[i].max(0.0) / pos * r;
                        }
                    }
                } else {
                    let z: f32 = contrib.iter().sum();
                    let denom = z + eps * if z >= 0.0 { 1.0 } else { -1.0 };
                    for i in 0..inp.len() {
                        r_in[i] += contrib[i] / denom * r;
                    }
                }
            }
            r_in
        };
    let r_hidden = layer(&h, w2, n_out, &|_| target, &[z2]);
    // ReLU: relevance passes to the pre-activation (zero where inactive, since h = 0 there).
    layer(x, w1, n_hid, &|j| j, &r_hidden)
}

#[test]
fn two_layer_relu_net_matches_hand_written_epsilon_and_alpha_beta() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let d = [5, 7, 3];
    for trial in 0..10 {
        let x = random(&mut rng, d[0], 1.0);
        let w1 = random(&mut rng, d[0] * d[1], 1.0);
        let w2 = random(&mut rng, d[1] * d[2], 1.0);
        let target = trial % 3;
        for alpha_beta in [false, true] {
            let eps = 0.05;
            let xl = leaf(&x, [1, d[0]]);
            let (w1t, w2t) = (tensor2(&w1, [d[0], d[1]]), tensor2(&w2, [d[1], d[2]]));
            let lin = |inp: Tensor<2>, w: Tensor<2>| {
                let z = inp.clone().matmul(w.clone());
                if alpha_beta {
                    rules::alpha1_beta0(inp, w, z, |a, b| a.matmul(b))
                } else {
                    rules::epsilon(z, eps as f64)
                }
            };
            let h = lin(xl.clone(), w1t).clamp_min(0.0);
            let out = lin(h, w2t).narrow(1, target, 1);
            let grads = out.sum().backward();
            let rel = host(xl.grad(&grads).unwrap() * tensor2(&x, [1, d[0]]));
            let expected = by_hand(&x, &w1, &w2, d, target, alpha_beta, eps);
            close(&rel, &expected, 1e-5);
            // Not a vacuous comparison: the two rules disagree on this input.
            let other = by_hand(&x, &w1, &w2, d, target, !alpha_beta, eps);
            assert!(
                rel.iter().zip(&other).any(|(a, b)| (a - b).abs() > 1e-3),
                "trial {trial}"
            );
        }
    }
}

/// Runs `f` on a leaf `x`, starts the backward with upstream gradient `g`, returns
/// (`sum x * grad x`, `sum f(x) * g`, forward value).
fn relevance_through(
    x: &[f32],
    shape: [usize; 2],
    g: &[f32],
    f: impl Fn(Tensor<2>) -> Tensor<2>,
) -> (f64, f64, Vec<f32>) {
    let xl = leaf(x, shape);
    let y = f(xl.clone());
    let out_shape = y.dims();
    let gt = tensor2(g, out_shape);
    let value = host(y.clone());
    let r_out = sum(y.clone().detach().without_autodiff() * gt.clone());
    let grads = (y * gt).sum().backward();
    let r_in = sum(xl.grad(&grads).unwrap() * tensor2(x, shape));
    (r_in, r_out, value)
}

#[test]
fn conservation_identities_hold_rule_by_rule() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (rows, n_in, n_out) = (4, 6, 5);
    let x = random(&mut rng, rows * n_in, 2.0);
    let w = random(&mut rng, n_in * n_out, 1.0);
    let b = random(&mut rng, n_out, 0.5);
    let g = random(&mut rng, rows * n_out, 1.0);
    let wt = tensor2(&w, [n_in, n_out]);
    let bt = Tensor::<1>::from_data(TensorData::new(b.clone(), [n_out]), &device());
    let plain = host(tensor2(&x, [rows, n_in]).matmul(wt.clone()) + bt.clone().unsqueeze::<2>());

    // Epsilon: sum R_in = sum_j R_j (z_j - b_j) / (z_j + eps sign z_j), exactly.
    let eps = 0.3;
    let (r_in, _, value) = relevance_through(&x, [rows, n_in], &g, |x| {
        rules::epsilon(x.matmul(wt.clone()) + bt.clone().unsqueeze::<2>(), eps)
    });
    close(&value, &plain, 1e-6);
    let predicted: f64 = (0..rows * n_out)
        .map(|k| {
            let z = plain[k] as f64;
            let s = if z >= 0.0 { 1.0 } else { -1.0 };
            z * g[k] as f64 * (z - b[k % n_out] as f64) / (z + eps * s)
        })
        .sum();
    assert!(
        (r_in - predicted).abs() < 1e-4 * predicted.abs().max(1.0),
        "{r_in} vs {predicted}"
    );

    // Alpha1-beta0: exact conservation, bias or not, over the outputs that have a positive
    // contribution (the others have nothing to hand out and drop their relevance).
    let (r_in, _, value) = relevance_through(&x, [rows, n_in], &g, |x| {
        let z = x.clone().detach().matmul(wt.clone()) + bt.clone().unsqueeze::<2>();
        rules::alpha1_beta0(x, wt.clone(), z, |a, b| a.matmul(b))
    });
    close(&value, &plain, 1e-6);
    let mut dropped = 0;
    let r_out: f64 = (0..rows * n_out)
        .filter(|&k| {
            let (r, j) = (k / n_out, k % n_out);
            let has_positive = (0..n_in).any(|i| x[r * n_in + i] * w[i * n_out + j] > 0.0);
            dropped += !has_positive as usize;
            has_positive
        })
        .map(|k| plain[k] as f64 * g[k] as f64)
        .sum();
    assert!(
        (r_in - r_out).abs() < 1e-4 * r_out.abs().max(1.0),
        "{r_in} vs {r_out}"
    );
    assert!(
        dropped > 0,
        "this seed exercises an output without positive contributions"
    );

    // z^B with x inside [low, high]: exact once the bounds' own terms are added.
    let (low, high) = (-2.5f32, 2.5f32);
    let xl = leaf(&x, [rows, n_in]);
    let lo = tensor2(&vec![low; rows * n_in], [rows, n_in])
        .autodiff()
        .require_grad();
    let hi = tensor2(&vec![high; rows * n_in], [rows, n_in])
        .autodiff()
        .require_grad();
    let z = xl.clone().detach().matmul(wt.clone()) + bt.clone().unsqueeze::<2>();
    let y = rules::z_beta(xl.clone(), lo.clone(), hi.clone(), wt.clone(), z, |a, b| {
        a.matmul(b)
    });
    close(&host(y.clone()), &plain, 1e-6);
    let gt = tensor2(&g, [rows, n_out]);
    let r_out = sum(y.clone().detach().without_autodiff() * gt.clone());
    let grads = (y * gt).sum().backward();
    let pixel = xl.grad(&grads).unwrap() * tensor2(&x, [rows, n_in])
        + lo.grad(&grads).unwrap() * low
        + hi.grad(&grads).unwrap() * high;
    let r_in = sum(pixel);
    assert!(
        (r_in - r_out).abs() < 1e-4 * r_out.abs().max(1.0),
        "{r_in} vs {r_out}"
    );

    // Identity (GELU): elementwise exact.
    let xl = leaf(&x, [rows, n_in]);
    let y = rules::identity(
        xl.clone(),
        burn::tensor::activation::gelu(xl.clone().detach()),
    );
    let gi = random(&mut rng, rows * n_in, 1.0);
    let gt = tensor2(&gi, [rows, n_in]);
    let r_out = host(y.clone().detach().without_autodiff() * gt.clone());
    let grads = (y * gt).sum().backward();
    close(
        &host(xl.grad(&grads).unwrap() * tensor2(&x, [rows, n_in])),
        &r_out,
        1e-5,
    );

    // LayerNorm with the std detached: sum R_in = sum R_out - sum beta * g.
    let gamma = Tensor::<1>::from_data(
        TensorData::new(random(&mut rng, n_in, 1.5), [n_in]),
        &device(),
    );
    let beta_v = random(&mut rng, n_in, 0.5);
    let beta = Tensor::<1>::from_data(TensorData::new(beta_v.clone(), [n_in]), &device());
    let plain_ln = host(burn::tensor::module::layer_norm(
        tensor2(&x, [rows, n_in]),
        gamma.clone(),
        Some(beta.clone()),
        1e-6,
    ));
    let (r_in, r_out, value) = relevance_through(&x, [rows, n_in], &gi, |x| {
        rules::layer_norm(x, gamma.clone(), beta.clone(), 1e-6)
    });
    close(&value, &plain_ln, 1e-5);
    let leak: f64 = (0..rows * n_in)
        .map(|k| beta_v[k % n_in] as f64 * gi[k] as f64)
        .sum();
    assert!(
        (r_in - (r_out - leak)).abs() < 1e-4 * r_out.abs().max(1.0),
        "{r_in} vs {r_out} - {leak}"
    );
    assert!(
        leak.abs() > 1e-2,
        "the beta leak must be visible for the check to mean something"
    );

    // Uniform rule on a bilinear product: each operand gets half.
    let a = random(&mut rng, rows * n_in, 1.0);
    let bm = random(&mut rng, n_in * n_out, 1.0);
    let (al, bl) = (leaf(&a, [rows, n_in]), leaf(&bm, [n_in, n_out]));
    let y = rules::uniform(al.clone().matmul(bl.clone()), 2);
    let gt = tensor2(&g, [rows, n_out]);
    let r_out = sum(y.clone().detach().without_autodiff() * gt.clone());
    let grads = (y * gt).sum().backward();
    let ra = sum(al.grad(&grads).unwrap() * tensor2(&a, [rows, n_in]));
    let rb = sum(bl.grad(&grads).unwrap() * tensor2(&bm, [n_in, n_out]));
    assert!(
        (ra - r_out / 2.0).abs() < 1e-4 && (rb - r_out / 2.0).abs() < 1e-4,
        "{ra} {rb} {r_out}"
    );
}

#[test]
fn probe_reads_gradient_times_activation() {
    let x = leaf(&[1.0, -2.0, 3.0, 0.5], [2, 2]);
    let (y, probe) = RelevanceTap::attach(x.clone().mul_scalar(2.0));
    let w = tensor2(&[1.0, 0.0, 0.5, -1.0], [2, 2]);
    let grads = y.matmul(w).sum().backward();
    // d/dy sum(y W) = row sums of W = [1, -0.5]; y = 2x.
    close(&host(probe.relevance(&grads)), &[2.0, 2.0, 6.0, -0.5], 1e-6);
}
