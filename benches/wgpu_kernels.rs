//! The wgpu kernel variants against each other on the same adapter, in the same run: for few
//! columns (the LM head on the rows the sampler reads, short batches) the row-per-workgroup
//! matvec kernel with subgroup sums, the same with a workgroup-memory tree (the portable
//! fallback), and the 64 x 64 tiled matmul; for a whole canvas (64 and 256 columns) the tiled
//! matmul with f16 workgroup tiles (SHADER_F16) against f32 tiles.
//! On lavapipe (a CPU driver) only these ratios mean something; on a GPU the milliseconds too.
//!
//!     cargo bench --bench wgpu_kernels            # the first adapter, software ones included
//!
//! Environment: DLM_BENCH_REPS (default 7).

mod common;

use common::{median, time};
use dlm::backend::ggml::quantize;
use dlm::backend::wgpu::{Executor, Gpu, WeightSet};
use dlm::gguf::{GgmlType, Gguf, GgufWriter};
use dlm::graph::{GraphKey, Ops};

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A GGUF with weight `w` ([k, m] of type `t`) and f32 activations `x` ([k, n_max]).
/// (Activations are a table of the file, gathered into the graph like token embeddings.)
fn model(dir: &std::path::Path, t: GgmlType, k: usize, m: usize, n_max: usize) -> Gguf {
    let mut w = GgufWriter::new();
    w.set("general.architecture", "bench").unwrap();
    w.add_tensor("w", &[k as u64, m as u64], t).unwrap();
    w.add_tensor("x", &[k as u64, n_max as u64], GgmlType::F32).unwrap();
    let mut q = vec![0u8; t.tensor_bytes(&[k as u64, m as u64]).unwrap() as usize];
    quantize(t, &random(k * m, 3), k, &mut q).unwrap();
    let x: Vec<u8> = random(k * n_max, 5).iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = dir.join(format!("{t}-{k}-{m}.gguf"));
    let mut s = w.create(&path).unwrap();
    s.write_tensor(&q).unwrap();
    s.write_tensor(&x).unwrap();
    s.finish().unwrap();
    Gguf::open(&path).unwrap()
}

/// Median seconds of `W x` with `n` columns on `gpu`.
fn run(gpu: Gpu, g: &Gguf, n: usize, reps: usize) -> f64 {
    let set = WeightSet::upload(&gpu, g).unwrap();
    let mut ex = Executor::new(gpu, set);
    let (w, x) = (ex.weight("w").unwrap(), ex.weight("x").unwrap());
    let ids: Vec<i32> = (0..n as i32).collect();
    let mut call = || {
        ex.run(&GraphKey::other(&[n], 0), &[&ids], |o| {
            let i = o.input_i32(n);
            let xa = o.get_rows(x, i);
            o.mul_mat(w, xa)
        })
        .unwrap()
    };
    call(); // plan and compile
    let times: Vec<f64> = (0..reps).map(|_| time(&mut call).0).collect();
    median(times)
}

fn main() {
    if dlm::backend::wgpu::adapters().is_empty() {
        eprintln!("no wgpu adapter: nothing to measure");
        return;
    }
    let reps: usize = std::env::var("DLM_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let tmp = tempfile::tempdir().unwrap();
    let probe = Gpu::open(None, true).unwrap();
    println!("adapter: {} ({}), subgroups offered: {}", probe.adapter().name, probe.adapter().kind, probe.adapter().subgroups);
    drop(probe);
    println!("| weight | k × m | columns | matvec, subgroups | matvec, tree | tiled | tiled / best matvec |");
    println!("|---|---|---|---|---|---|---|");
    for (t, k, m) in [(GgmlType::Q4_0, 4096, 4096), (GgmlType::Q4_K, 4096, 4096), (GgmlType::Q6_K, 4096, 8000), (GgmlType::F16, 2048, 2048)] {
        let g = model(tmp.path(), t, k, m, 16);
        for n in [1usize, 4, 16] {
            let sub = {
                let gpu = Gpu::open(None, true).unwrap();
                gpu.uses_subgroups().then(|| run(gpu, &g, n, reps))
            };
            let tree = run(Gpu::open_with(None, true, false).unwrap(), &g, n, reps);
            let mut tiled_gpu = Gpu::open(None, true).unwrap();
            tiled_gpu.use_matvec(false);
            let tiled = run(tiled_gpu, &g, n, reps);
            let best = sub.unwrap_or(f64::MAX).min(tree);
            let ms = |s: f64| format!("{:.2} ms", s * 1e3);
            println!(
                "| {t} | {k} × {m} | {n} | {} | {} | {} | {:.2} |",
                sub.map_or("(not offered)".to_string(), ms),
                ms(tree),
                ms(tiled),
                tiled / best
            );
        }
    }
    println!();
    println!("| weight | k × m | columns | tiled, f16 tiles | tiled, f32 tiles | f32 / f16 |");
    println!("|---|---|---|---|---|---|");
    for (t, k, m) in [(GgmlType::Q4_0, 2048, 2048), (GgmlType::Q4_K, 2048, 2048)] {
        let g = model(tmp.path(), t, k, m, 256);
        for n in [64usize, 256] {
            let with_f16 = Gpu::open(None, true).unwrap();
            if !with_f16.uses_f16() {
                println!("| {t} | {k} × {m} | {n} | (not offered) | | |");
                continue;
            }
            let f16 = run(with_f16, &g, n, reps.min(3));
            let mut plain = Gpu::open(None, true).unwrap();
            plain.use_f16(false);
            let f32 = run(plain, &g, n, reps.min(3));
            println!("| {t} | {k} × {m} | {n} | {:.0} ms | {:.0} ms | {:.2} |", f16 * 1e3, f32 * 1e3, f32 / f16);
        }
    }
}
