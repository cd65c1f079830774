//! Integer GEMM throughput on DeiT-S linear shapes (M × K × N), against f32 GEMMs of the same
//! shape. Throughput is reported as elements = operations (`2·M·N·K`), so criterion's
//! `Gelem/s` reads as GOP/s.
//!
//! `cargo bench -p mixq-quant-kernels --bench igemm`

use std::hint::black_box;
use std::time::Duration;

use burn::tensor::{Device, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, Throughput};
use mixq_core::BitWidth;
use mixq_quant_kernels::igemm::{ActQuant, Backend, IntGemm};
use mixq_quant_kernels::packing::PackedWeights;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmOptions};
use rten_tensor::Matrix;

const SHAPES: [(usize, usize, usize); 6] = mixq_quant_kernels::igemm::DEIT_S_SHAPES;

fn bench(c: &mut Criterion) {
    let mut r = ChaCha8Rng::seed_from_u64(0);
    let gemm = IntGemm::new();
    let f32_exec = GemmExecutor::<f32, f32, f32>::default();
    eprintln!(
        "own VNNI kernel for int8/int4: {}/{}, integer kernels: {}, f32 kernel: {}, rayon threads: {}",
        gemm.uses_own_vnni(BitWidth::new(8).unwrap()),
        gemm.uses_own_vnni(BitWidth::new(4).unwrap()),
        gemm.kernel_name(),
        f32_exec.kernel_name(),
        rayon::current_num_threads()
    );
    let device = Device::flex();
    let mut group = c.benchmark_group("igemm");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for (m, k, n) in SHAPES {
        let shape = format!("{m}x{k}x{n}");
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let x: Vec<f32> = (0..m * k).map(|_| r.random_range(-1.0f32..1.0)).collect();
        let w: Vec<f32> = (0..n * k).map(|_| r.random_range(-0.1f32..0.1)).collect();
        let bias: Vec<f32> = (0..n).map(|_| r.random_range(-0.1f32..0.1)).collect();
        let aq = ActQuant::from_range(-1.0, 1.0, BitWidth::new(8).unwrap()).unwrap();
        let a = aq.quantize_vec(&x);
        let mut out = vec![0f32; m * n];
        let rten = IntGemm::with_backend(Backend::Rten);
        // `int8` and `int4` are the default engine (the own fused VNNI kernel where the CPU
        // has VNNI); the `-rten` rows are rten-gemm's kernel plus the separate epilogue pass,
        // the alternative it was chosen over.
        for (bits, gemm, name) in [
            (8u8, gemm, "int8"),
            (8, rten, "int8-rten"),
            (4, gemm, "int4"),
            (4, rten, "int4-unpack-rten"),
        ] {
            let packed =
                PackedWeights::quantize_minmax(&w, n, k, BitWidth::new(bits).unwrap()).unwrap();
            let prepared = gemm.prepare(packed).unwrap();
            group.bench_function(BenchmarkId::new(name, &shape), |b| {
                b.iter(|| {
                    gemm.gemm_f32(black_box(&a), m, aq, &prepared, Some(&bias), &mut out)
                        .unwrap()
                })
            });
        }
        // f32 reference 1: rten-gemm's f32 kernel (AVX-512 FMA, rayon), weights pre-packed.
        let wt = Matrix::from_data_with_strides([k, n], w.as_slice(), [1, k]).unwrap();
        let packed_w = f32_exec.prepack_b(wt);
        group.bench_function(BenchmarkId::new("f32-rten", &shape), |b| {
            b.iter(|| {
                f32_exec
                    .gemm(
                        &mut out,
                        GemmInputA::Unpacked(Matrix::from_data([m, k], black_box(x.as_slice()))),
                        GemmInputB::Packed(&packed_w),
                        GemmOptions::default(),
                    )
                    .unwrap()
            })
        });
        // f32 reference 2: burn-flex matmul (the `gemm` crate), what mixq's f32 models run.
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
        let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), [n, k]), &device).transpose();
        group.bench_function(BenchmarkId::new("f32-burn-flex", &shape), |b| {
            b.iter(|| black_box(xt.clone().matmul(wt.clone())).into_data())
        });
    }
    group.finish();
}

/// The machine's measured `u8 × i8` peak (a register-only `vpdpbusd` loop on every thread, at
/// the real clock), what the GOP/s above are compared with.
fn print_peak() {
    match mixq_quant_kernels::igemm::measured_vnni_peak_gops() {
        Some(p) => eprintln!(
            "measured VNNI peak on {} threads: {p:.1} GOP/s",
            rayon::current_num_threads()
        ),
        None => eprintln!("no AVX-512 VNNI"),
    }
}

fn main() {
    print_peak();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
