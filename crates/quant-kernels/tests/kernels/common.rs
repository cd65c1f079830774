use mixq_core::BitWidth;
use mixq_quant_kernels::Granularity;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn bits(b: u8) -> BitWidth {
    BitWidth::new(b).unwrap()
}

pub fn all_bits() -> impl Iterator<Item = BitWidth> {
    (2..=8).map(bits)
}

/// Shape used by the granularity sweeps and every granularity that fits it.
pub const SHAPE: [usize; 3] = [3, 5, 8];

pub fn granularities() -> [Granularity; 5] {
    [
        Granularity::PerTensor,
        Granularity::PerChannel { axis: 0 },
        Granularity::PerChannel { axis: 1 },
        Granularity::PerChannel { axis: 2 },
        Granularity::PerGroup { group_size: 4 },
    ]
}

/// Row-major data of `SHAPE` whose scale and sign balance change along every axis, so that
/// per-channel and per-group ranges differ from each other and from the tensor's.
pub fn varied_data(seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    let [a, b, c] = SHAPE;
    let mut out = Vec::with_capacity(a * b * c);
    for i in 0..a {
        for j in 0..b {
            for k in 0..c {
                let magnitude = 0.05 * (1 + i + 2 * j) as f32 * (1.0 + k as f32 / 4.0);
                let offset = match (i + j + k / 4) % 3 {
                    0 => 0.0,
                    1 => 0.7,
                    _ => -0.7,
                };
                out.push(magnitude * (r.random_range(-1.0f32..1.0) + offset));
            }
        }
    }
    out
}

pub fn random_vec(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}
