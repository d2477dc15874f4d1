//! GPU forward passes against ggml's CPU forward pass on small random checkpoints: the wgpu
//! backend (on lavapipe in CI; skips, saying why, only when no wgpu adapter exists at all) and,
//! in builds with a ggml GPU backend (`--features vulkan|cuda|metal`), ggml's own GPU backend,
//! whole and with part of the layers offloaded.

mod common;

use common::{argmax, checkpoint, convert};
use dlm::model::Pass;
use dlm::{Backend, LoadOptions, Model};
use dlm_convert::OutType;


fn load(path: &std::path::Path, backend: Backend) -> Model {
    load_layers(path, backend, None)
}

fn load_layers(path: &std::path::Path, backend: Backend, n_gpu_layers: Option<usize>) -> Model {
    Model::load(path, &LoadOptions { threads: 2, backend, n_gpu_layers, ..Default::default() }).unwrap()
}

/// (max |a - b| / max |b|, share of rows with the same argmax).
fn compare(got: &[f32], want: &[f32], n_vocab: usize) -> (f32, f32) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let rows = want.len() / n_vocab;
    let same = (0..rows).filter(|&i| argmax(&got[i * n_vocab..][..n_vocab]) == argmax(&want[i * n_vocab..][..n_vocab])).count();
    (err / scale, same as f32 / rows as f32)
}

/// 70 tokens: more than one 64-wide matmul tile and one attention workgroup, not a multiple.
fn tokens() -> Vec<u32> {
    (0..70u32).map(|i| if i % 3 == 2 { 811 } else { 1 + (i * 7919) % 31999 }).collect()
}

/// Loads each type's file on the CPU and through `gpu`, and checks the GPU's logits against
/// the CPU's within that type's bound; also that restricting the LM head to some rows gives
/// those rows within `rows_bound(type)` (backends switch kernels by row count: wgpu and
/// ggml-vulkan both take matrix-vector kernels with f32 operands for few rows, f16 tiles for
/// many where the device has them); then the restricted graph once more with new inputs.
fn logits_match_per_type(gpu_load: impl Fn(&std::path::Path) -> Model, bounds: &[(OutType, f32)], rows_bound: impl Fn(OutType) -> f32) {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    checkpoint(&hf, &["--kv-heads", "2"]);
    let tokens = tokens();
    for &(kind, bound) in bounds {
        let gguf = convert(&hf, kind);
        let mut cpu = load(&gguf, Backend::Cpu);
        let mut gpu = gpu_load(&gguf);
        let want = cpu.forward(&tokens).unwrap();
        let got = gpu.forward(&tokens).unwrap();
        let (err, top1) = compare(&got, &want, 32000);
        println!("{:>5}: {} vs cpu: max relative error {err:.2e}, top-1 {:.0}%", kind.name(), gpu.backend_description(), top1 * 100.0);
        assert!(err <= bound, "{}: {err:.2e} > {bound:.0e}", kind.name());
        assert!(top1 >= 0.95, "{}: top-1 agreement {top1}", kind.name());
        // The restricted LM head and a second, different graph on the same executor.
        let rows = [3usize, 17, 64, 69];
        let got_rows = gpu.forward_rows(&tokens, Pass::Full, Some(&rows)).unwrap();
        for (i, &r) in rows.iter().enumerate() {
            let (a, b) = compare(&got_rows[i * 32000..][..32000], &got[r * 32000..][..32000], 32000);
            assert!(a < rows_bound(kind) && b == 1.0, "{} row {r}: {a:.2e}", kind.name());
        }
        // The same graph again with other tokens and rows, as in the next diffusion step: it
        // must be recomputed from the new inputs, not read stale ones.
        let mut next = tokens.clone();
        next.rotate_left(1);
        let rows = [2usize, 16, 40, 68];
        let want = cpu.forward_rows(&next, Pass::Full, Some(&rows)).unwrap();
        let got = gpu.forward_rows(&next, Pass::Full, Some(&rows)).unwrap();
        let (err, _) = compare(&got, &want, 32000);
        assert!(err <= bound, "{} second step: {err:.2e} > {bound:.0e}", kind.name());
    }
}

/// A batch of three sequences, then a store pass and a pass recomputing some tokens against the
/// cached keys/values: the GPU against the CPU on an f32 model within `bound`.
fn batches_and_cache_passes_match(gpu_load: impl Fn(&std::path::Path) -> Model, bound: f32) {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    checkpoint(&hf, &["--dtype", "f32"]);
    let gguf = convert(&hf, OutType::F32);
    let (mut cpu, mut gpu) = (load(&gguf, Backend::Cpu), gpu_load(&gguf));
    // A batch of three sequences: attention per sequence, joined outputs.
    let seqs: [&[u32]; 3] = [&[1, 450, 811, 811, 811], &[1, 2, 3, 811, 811, 811, 811, 811, 811], &[1, 811]];
    let rows: [&[usize]; 3] = [&[1, 2, 3], &[0, 4, 8], &[1]];
    let (want, got) = (cpu.forward_batch(&seqs, &rows).unwrap(), gpu.forward_batch(&seqs, &rows).unwrap());
    let (err, top1) = compare(&got, &want, 32000);
    assert!(err < bound && top1 == 1.0, "batch: {err:.2e}, top-1 {top1}");
    // Store every position's keys/values, then recompute tokens 4..8 against the cache.
    let tokens: Vec<u32> = (0..12u32).map(|i| if i > 3 { 811 } else { 1 + i * 100 }).collect();
    for m in [&mut cpu, &mut gpu] {
        m.forward_rows(&tokens, Pass::Store { cache: 1 }, None).unwrap();
    }
    let reuse = Pass::Reuse { cache: 1, start: 4, end: 8 };
    let rows = [4usize, 5, 7];
    let (want, got) = (cpu.forward_rows(&tokens, reuse, Some(&rows)).unwrap(), gpu.forward_rows(&tokens, reuse, Some(&rows)).unwrap());
    let (err, top1) = compare(&got, &want, 32000);
    assert!(err < bound && top1 == 1.0, "cache reuse: {err:.2e}, top-1 {top1}");
}

#[cfg(feature = "wgpu")]
fn wgpu_model(path: &std::path::Path) -> Model {
    let m = load(path, Backend::Wgpu);
    assert_eq!(m.backend(), Backend::Wgpu);
    m
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_logits_match_the_cpu_backend_per_type() {
    if common::have_adapter() {
        // Bounds as for the numpy oracle: the CPU rounds activations to f16 (f16 weights) or to
        // Q8 blocks (quantized weights) inside matmuls; the GPU keeps them in f32.
        // Rows: f32 weights keep f32 arithmetic in both matmul kernels (only the order of the
        // sums differs); the others have f16 tiles for the whole canvas where the adapter
        // offers SHADER_F16.
        let rows_bound = |k: OutType| if k == OutType::F32 { 1e-5 } else { 2e-3 };
        logits_match_per_type(wgpu_model, &[(OutType::F32, 1e-4), (OutType::F16, 2e-3), (OutType::Q8_0, 0.03), (OutType::Q4_0, 0.03)], rows_bound);
    }
}

/// Every quantized type llama.cpp writes for a LLaMA, each in a file of that type alone, runs
/// on wgpu with its own loader (none converted to f16), within the type's bound of ggml's CPU
/// forward, and takes no more device memory for weights than the file's tensor data (plus at
/// most 6 bytes of padding per buffer). The numbers go to the README's memory table.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_runs_every_quant_type_in_its_file_size() {
    use dlm::GgmlType;
    if !common::have_adapter() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    checkpoint(&hf, &["--kv-heads", "2", "--dtype", "f32"]);
    let f32_model = convert(&hf, OutType::F32);
    let tokens = tokens();
    // The CPU rounds activations to 8-bit blocks for its dot products (Q8_K for K-quants);
    // the GPU keeps f32: the lower the weight's bits, the more the logits of random weights move.
    let types = [
        (GgmlType::Q8_0, 0.03),
        (GgmlType::Q6_K, 0.03),
        (GgmlType::Q5_1, 0.03),
        (GgmlType::Q5_0, 0.03),
        (GgmlType::Q5_K, 0.03),
        (GgmlType::Q4_1, 0.04),
        (GgmlType::Q4_0, 0.04),
        (GgmlType::Q4_K, 0.04),
        (GgmlType::IQ4_NL, 0.04),
        (GgmlType::Q3_K, 0.05),
        (GgmlType::Q2_K, 0.08),
    ];
    println!("| type | file tensor data | wgpu weights | activations + caches (70 tokens) | max rel. error vs CPU | top-1 |");
    for (t, bound) in types {
        let path = tmp.path().join(format!("{t}.gguf"));
        common::pure_gguf(&f32_model, t, &path);
        let mut cpu = load(&path, Backend::Cpu);
        let mut gpu = wgpu_model(&path);
        let want = cpu.forward(&tokens).unwrap();
        let got = gpu.forward(&tokens).unwrap();
        let (err, top1) = compare(&got, &want, 32000);
        let g = dlm::Gguf::open(&path).unwrap();
        let file: u64 = g.tensors().iter().map(|i| i.size).sum();
        let (weights, acts) = gpu.device_memory().unwrap();
        println!("| {t} | {:.2} MB | {:.2} MB | {:.2} MB | {err:.2e} | {:.0} % |", file as f64 / 1e6, weights as f64 / 1e6, acts as f64 / 1e6, top1 * 100.0);
        assert!(weights <= file + 6 * g.tensors().len() as u64, "{t}: {weights} bytes of weights on the device for {file} in the file");
        assert!(err <= bound, "{t}: {err:.2e} > {bound:.0e}");
        assert!(top1 >= 0.9, "{t}: top-1 agreement {top1}");
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_batches_and_cache_passes_match_the_cpu_backend() {
    if common::have_adapter() {
        batches_and_cache_passes_match(wgpu_model, 1e-4);
    }
}

// ggml's GPU kernels round matmul operands to f16 where the device has f16 arithmetic
// (ggml-vulkan keeps its shared-memory tiles in f16 even for f32 weights: 1.2e-3 on lavapipe,
// 1.0e-6 with GGML_VK_DISABLE_F16=1), so f32 gets the f16 bound; quantized types as the CPU.
#[cfg(any(feature = "cuda", feature = "metal", feature = "vulkan"))]
const GGML_GPU_BOUNDS: [(OutType, f32); 4] = [(OutType::F32, 2e-3), (OutType::F16, 2e-3), (OutType::Q8_0, 0.03), (OutType::Q4_0, 0.03)];

#[cfg(any(feature = "cuda", feature = "metal", feature = "vulkan"))]
#[test]
fn ggml_gpu_logits_match_the_cpu_backend_per_type() {
    if let Some(backend) = common::ggml_gpu() {
        let type_bound = |k: OutType| GGML_GPU_BOUNDS.iter().find(|b| b.0 == k).map_or(0.0, |b| b.1);
        logits_match_per_type(|p| load(p, backend), &GGML_GPU_BOUNDS, type_bound);
        // One of the two layers offloaded: the scheduler splits every graph between the
        // device and the CPU.
        logits_match_per_type(|p| load_layers(p, backend, Some(1)), &GGML_GPU_BOUNDS[..1], type_bound);
    }
}

#[cfg(any(feature = "cuda", feature = "metal", feature = "vulkan"))]
#[test]
fn ggml_gpu_batches_and_cache_passes_match_the_cpu_backend() {
    if let Some(backend) = common::ggml_gpu() {
        batches_and_cache_passes_match(|p| load(p, backend), 2e-3);
    }
}
