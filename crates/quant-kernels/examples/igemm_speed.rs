//! Quick GOP/s check of the integer GEMM paths (the criterion bench is `benches/igemm.rs`).
//! `cargo run --release -p mixq-quant-kernels --example igemm_speed`

use std::time::Instant;

use mixq_core::BitWidth;
use mixq_quant_kernels::igemm::{ActQuant, Backend, IntGemm};
use mixq_quant_kernels::packing::PackedWeights;

fn main() -> mixq_core::Result<()> {
    let g = IntGemm::new();
    let rten = IntGemm::with_backend(Backend::Rten);
    println!("kernel {}", g.kernel_name());
    if let Some(peak) = mixq_quant_kernels::igemm::measured_vnni_peak_gops() {
        println!(
            "measured VNNI peak on {} threads: {peak:.1} GOP/s",
            rayon::current_num_threads()
        );
    }
    for (m, k, n) in [
        (197, 384, 1152),
        (197, 384, 1536),
        (197, 1536, 384),
        (1576, 384, 1536),
        (1576, 1536, 384),
    ] {
        let a: Vec<u8> = (0..m * k).map(|i| (i * 7 % 251) as u8).collect();
        let aq = ActQuant::new(0.02, 128, BitWidth::new(8)?)?;
        for (bits, g, name) in [
            (8u8, g, "own"),
            (8, rten, "rten"),
            (4, g, "own"),
            (4, rten, "rten"),
            (2, g, "own"),
        ] {
            let qmax = (1i32 << bits) - 1;
            let codes: Vec<i32> = (0..n * k)
                .map(|i| (i * 13 % 97) as i32 % (qmax + 1))
                .collect();
            let w = PackedWeights::from_codes(
                n,
                k,
                BitWidth::new(bits)?,
                &codes,
                vec![0.01; n],
                vec![(qmax + 1) / 2; n],
            )?;
            let p = g.prepare(w)?;
            let mut out = vec![0f32; m * n];
            let mut best = f64::MAX;
            for _ in 0..30 {
                let t = Instant::now();
                g.gemm_f32(&a, m, aq, &p, None, &mut out)?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            let gops = 2.0 * (m * n * k) as f64 / best / 1e9;
            println!(
                "{m}x{k}x{n} int{bits} {name}: {:.3} ms, {gops:.1} GOP/s",
                best * 1e3
            );
        }
    }
    Ok(())
}
