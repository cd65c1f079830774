//! Tests of bit packing and the integer GEMM: every kernel path against the plain-loop
//! references, bit for bit.

mod gemm;
mod packing;

use mixq_core::BitWidth;
use mixq_quant_kernels::packing::PackedWeights;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn bits(b: u8) -> BitWidth {
    BitWidth::new(b).unwrap()
}

/// Random codes and per-channel parameters of a `[n, k]` `b`-bit weight.
pub fn random_weights(r: &mut ChaCha8Rng, n: usize, k: usize, b: u8) -> PackedWeights {
    let qmax = (1i32 << b) - 1;
    let codes: Vec<i32> = (0..n * k).map(|_| r.random_range(0..=qmax)).collect();
    let scales = (0..n).map(|_| r.random_range(0.001f32..0.1)).collect();
    let zps = (0..n).map(|_| r.random_range(0..=qmax)).collect();
    PackedWeights::from_codes(n, k, bits(b), &codes, scales, zps).unwrap()
}

/// Sizes 1..70 with the primes and the awkward multiples around 4, 8, 16, 32 and 64 weighted in.
pub fn random_dim(r: &mut ChaCha8Rng) -> usize {
    const SPECIAL: [usize; 16] = [1, 2, 3, 5, 7, 13, 17, 31, 33, 37, 61, 63, 64, 65, 67, 69];
    if r.random_bool(0.5) {
        SPECIAL[r.random_range(0..SPECIAL.len())]
    } else {
        r.random_range(1..70)
    }
}
