//! The GPU forward pass: milliseconds per diffusion step (one forward pass over the whole
//! sequence) at 256 and 1024 tokens on 7B-shaped q4_0 and q4_k_m layers, on every GPU backend this build
//! and machine have (a ggml GPU backend from the `cuda`/`metal`/`vulkan` features; our wgpu
//! backend), beside the bound ggml's own kernels set: the same matmuls alone, on the same ggml
//! device, in the same run. The model (random weights, hidden 4096, 32 heads, FFN 11008,
//! vocabulary 32000; q4_0 with a Q6_K LM head, and llama.cpp's Q4_K_M mix, as dlm-convert
//! writes them) is generated here, in
//! Rust, so the benchmark needs no Python or network on the GPU machine.
//!
//!     cargo bench --bench gpu                     # wgpu only
//!     cargo bench --features vulkan --bench gpu   # ggml Vulkan and wgpu, and the bound
//!
//! Environment: DLM_BENCH_LAYERS (default 4), DLM_BENCH_TOKENS (default 256,1024),
//! DLM_BENCH_TYPES (default q4_0,q4_k_m),
//! DLM_BENCH_REPS (default 5), DLM_BENCH_SOFTWARE=1 to include software adapters (lavapipe),
//! DLM_BENCH_DIR (default target/bench-data) for the generated GGUF. benches/README.md has
//! the exact commands for a GPU machine without a Rust toolchain.

mod common;

use std::path::{Path, PathBuf};

use common::{median, threads, time};
use dlm::backend::ggml::{gpu_devices, quantize, GgmlDevice, MatmulChain};
use dlm::gguf::{GgmlType, Gguf, GgufWriter, Value};
use dlm::{Backend, LoadOptions, Model};
use clap::ValueEnum as _;
use dlm_convert::{policy, OutType};
use rayon::prelude::*;

const EMBD: usize = 4096;
const FF: usize = 11008;
const VOCAB: usize = 32000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Normal-ish values (sum of four uniforms) with standard deviation `std`, from `seed`.
fn random(n: usize, seed: u64, std: f32) -> Vec<f32> {
    (0..n)
        .into_par_iter()
        .chunks(1 << 16)
        .flat_map_iter(|idx| {
            let mut s = seed ^ (idx[0] as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            idx.into_iter().map(move |_| {
                let mut u = 0f32;
                for _ in 0..4 {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    u += (s >> 40) as f32 / (1u64 << 24) as f32;
                }
                (u - 2.0) * std * 1.732
            })
        })
        .collect()
}

/// The tensors of a LLaMA file: name, shape, and the type dlm-convert's `--type kind` gives.
fn tensors(layers: usize, kind: OutType) -> Vec<(String, Vec<u64>, GgmlType)> {
    let (e, f, v) = (EMBD as u64, FF as u64, VOCAB as u64);
    let mut t: Vec<(String, Vec<u64>, Option<u64>)> = vec![("token_embd.weight".to_string(), vec![e, v], None)];
    for i in 0..layers {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        t.push((n("attn_norm"), vec![e], Some(i as u64)));
        for w in ["attn_q", "attn_k", "attn_v", "attn_output"] {
            t.push((n(w), vec![e, e], Some(i as u64)));
        }
        t.push((n("ffn_norm"), vec![e], Some(i as u64)));
        t.push((n("ffn_gate"), vec![e, f], Some(i as u64)));
        t.push((n("ffn_up"), vec![e, f], Some(i as u64)));
        t.push((n("ffn_down"), vec![f, e], Some(i as u64)));
    }
    t.push(("output_norm.weight".into(), vec![e], None));
    t.push(("output.weight".into(), vec![e, v], None));
    t.into_iter()
        .map(|(name, shape, layer)| {
            let at = policy::Place { layer, n_layer: layers as u64, n_dims: shape.len(), tied: false, n_gqa: 1 };
            let ty = policy::fit(policy::choose(kind, &name, at), shape[0]);
            (name, shape, ty)
        })
        .collect()
}

/// A random 7B-shaped DiffuLLaMA GGUF with `layers` layers of `kind` (written once, then reused).
fn model_file(layers: usize, kind: OutType) -> PathBuf {
    let dir = PathBuf::from(std::env::var("DLM_BENCH_DIR").unwrap_or_else(|_| common::root().join("target/bench-data").to_string_lossy().into()));
    let path = dir.join(format!("diffullama-7b-shape-{layers}l-{}-rust.gguf", kind.name()));
    if path.exists() {
        return path;
    }
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!("writing {} ...", path.display());
    let mut w = GgufWriter::new();
    w.set("general.architecture", "llama").unwrap();
    w.set("general.file_type", Value::U32(kind.file_type())).unwrap();
    for (k, v) in [("embedding_length", EMBD), ("block_count", layers), ("attention.head_count", 32), ("attention.head_count_kv", 32)] {
        w.set(&format!("llama.{k}"), Value::U32(v as u32)).unwrap();
    }
    for (k, v) in [("feed_forward_length", FF), ("context_length", 4096), ("rope.dimension_count", 128), ("vocab_size", VOCAB)] {
        w.set(&format!("llama.{k}"), Value::U32(v as u32)).unwrap();
    }
    w.set("llama.rope.freq_base", Value::F32(10000.0)).unwrap();
    w.set("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)).unwrap();
    w.set("llama.attention.causal", Value::Bool(false)).unwrap();
    let list = tensors(layers, kind);
    for (name, shape, t) in &list {
        w.add_tensor(name, shape, *t).unwrap();
    }
    let partial = path.with_extension("partial");
    let mut s = w.create(&partial).unwrap();
    for (i, (_, shape, t)) in list.iter().enumerate() {
        let ne0 = shape[0] as usize;
        let n: usize = shape.iter().product::<u64>() as usize;
        if *t == GgmlType::F32 {
            s.write_tensor(&vec![1f32; n].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
            continue;
        }
        let vals = random(n, i as u64 * 7 + 1, 0.02);
        let row = t.row_bytes(ne0 as u64).unwrap() as usize;
        let mut q = vec![0u8; row * (n / ne0)];
        // 64 rows per job: ggml's quantizer is single-threaded per call.
        q.par_chunks_mut(row * 64).zip(vals.par_chunks(ne0 * 64)).for_each(|(d, v)| quantize(*t, v, ne0, d).unwrap());
        s.write_tensor(&q).unwrap();
    }
    s.finish().unwrap();
    std::fs::rename(&partial, &path).unwrap();
    path
}

/// Median milliseconds of a full forward pass of `n` tokens.
fn forward_ms(m: &mut Model, n: usize, reps: usize) -> f64 {
    let tokens: Vec<u32> = (0..n as u32).map(|i| if i % 2 == 0 { 811 } else { 1 + (i * 7919) % 31999 }).collect();
    m.forward(&tokens).unwrap(); // warm-up: plans, uploads, first-touch
    median((0..reps).map(|_| time(|| m.forward(&tokens).unwrap()).0 * 1e3).collect())
}

/// Median milliseconds of only the forward pass's matmuls (same shapes, same weights, one
/// graph) on the ggml device: what ggml's own matmul throughput allows.
fn matmul_bound_ms(path: &Path, dev: &GgmlDevice, layers: usize, n: usize, reps: usize) -> f64 {
    let mut chain = MatmulChain::new(Gguf::open(path).unwrap(), dev, threads()).unwrap();
    chain.run(layers, n).unwrap();
    median((0..reps).map(|_| time(|| chain.run(layers, n).unwrap()).0 * 1e3).collect())
}

/// Multiply-adds ×2 of one forward pass of `n` tokens (matmuls, attention, LM head).
fn gflop(layers: usize, n: usize) -> f64 {
    let per_layer = 4 * EMBD * EMBD + 3 * EMBD * FF + 2 * n * EMBD;
    2.0 * n as f64 * (layers * per_layer + EMBD * VOCAB) as f64 / 1e9
}

fn main() {
    let layers: usize = env_or("DLM_BENCH_LAYERS", 4);
    let reps: usize = env_or("DLM_BENCH_REPS", 5usize).max(1);
    let lens: Vec<usize> = std::env::var("DLM_BENCH_TOKENS")
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|_| vec![256, 1024]);
    let software = std::env::var_os("DLM_BENCH_SOFTWARE").is_some();
    let ggml_devs: Vec<GgmlDevice> = {
        let mut seen = std::collections::HashSet::new();
        gpu_devices().into_iter().filter(|d| seen.insert(d.api.clone())).collect()
    };
    #[cfg(feature = "wgpu")]
    let wgpu_index = dlm::backend::wgpu::adapters().into_iter().find(|a| software || !a.software).map(|a| a.index);
    #[cfg(not(feature = "wgpu"))]
    let wgpu_index: Option<usize> = None;
    if ggml_devs.is_empty() && wgpu_index.is_none() {
        println!("gpu bench: no GPU backend here (no ggml GPU device; no hardware wgpu adapter; DLM_BENCH_SOFTWARE=1 includes lavapipe)");
        return;
    }
    let kinds: Vec<OutType> = std::env::var("DLM_BENCH_TYPES")
        .unwrap_or_else(|_| "q4_0,q4_k_m".into())
        .split(',')
        .map(|k| OutType::from_str(k.trim(), true).unwrap_or_else(|e| panic!("DLM_BENCH_TYPES: {e}")))
        .collect();
    for kind in kinds {
        bench_kind(kind, layers, reps, &lens, &ggml_devs, wgpu_index);
    }
}

/// Every backend on `kind`'s file, beside the bound.
fn bench_kind(kind: OutType, layers: usize, reps: usize, lens: &[usize], ggml_devs: &[GgmlDevice], wgpu_index: Option<usize>) {
    let path = model_file(layers, kind);
    println!("forward pass, 7B-shaped {} layers x{layers}, median of {reps}; bound = the same matmuls alone on the ggml device", kind.name());
    println!("{:<44} {:>6} {:>10} {:>9} {:>10}", "backend", "tokens", "ms/step", "GFLOP/s", "vs bound");
    let mut backends: Vec<(Backend, Option<usize>)> = ggml_devs
        .iter()
        .map(|d| (match d.api.as_str() { "CUDA" => Backend::Cuda, "Metal" => Backend::Metal, _ => Backend::Vulkan }, None))
        .collect();
    if let Some(i) = wgpu_index {
        backends.push((Backend::Wgpu, Some(i)));
    }
    let mut bounds = std::collections::HashMap::new();
    for n in lens {
        if let Some(d) = ggml_devs.first() {
            bounds.insert(*n, matmul_bound_ms(&path, d, layers, *n, reps));
            println!("{:<44} {:>6} {:>10.2} {:>9.1} {:>10}", format!("bound: ggml matmuls on {}", d.name), n, bounds[n], gflop(layers, *n) / bounds[n] * 1e3, "1.00x");
        }
    }
    for (backend, device) in backends {
        let opts = LoadOptions { threads: threads(), backend, device, ..Default::default() };
        let mut m = Model::load(&path, &opts).unwrap();
        for &n in lens {
            let ms = forward_ms(&mut m, n, reps);
            let vs = bounds.get(&n).map_or("-".to_string(), |b| format!("{:.2}x", ms / b));
            println!("{:<44} {:>6} {:>10.2} {:>9.1} {:>10}", m.backend_description(), n, ms, gflop(layers, n) / ms * 1e3, vs);
        }
    }
}
