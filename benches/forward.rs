//! One forward pass over the whole sequence (the cost of every diffusion step), dlm against
//! llama.cpp in the same run on the same GGUF: 7B-shaped layers (hidden 4096, 32 heads, FFN
//! 11008, vocabulary 32000, 2 layers, random weights), q4_0 and q8_0, 128/256/512 tokens.
//!
//! The peer is llama.cpp's own `llama_decode` of the same tokens with bidirectional attention
//! and logits for every position (what `llama-diffusion-cli` does each step), with its default
//! settings: f16 K/V cache, flash attention, Q4_0 repacked for the CPU. Runs alternate between
//! the two so drift in the machine's speed hits both; the median of `DLM_BENCH_REPS` (default 3)
//! runs after one warm-up each is reported.
//!
//!     cargo bench --bench forward              # all cases (~5 min on 2 cores)
//!     cargo bench --bench forward -- q4_0/128  # a subset
//!
//! Cases `check/q4_0` and `check/q8_0`: the load-time check of every tensor's values
//! (`--check-tensors`) on the same file, dlm's against ggml's own `ggml_validate_row_data`
//! (llama.cpp's `--check-tensors`, one thread) and against one forward pass of 128 tokens,
//! with the file in the page cache.

mod common;

use common::{alternate, gguf, llama7b_2l, selected, threads};
use dlm::backend::ggml::{LlamaCpp, LlamaCppOptions};
use dlm::{LoadOptions, Model};
use dlm_convert::OutType;

fn main() {
    let reps: usize = std::env::var("DLM_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    let hf = llama7b_2l();
    let threads = threads();
    println!("forward pass, 7B-shaped layers x2, {threads} threads, median of {reps}");
    println!("{:<12} {:>10} {:>10} {:>10} {:>10} {:>12}", "case", "dlm ms", "llama ms", "dlm GF/s", "llama GF/s", "dlm/llama");
    check_cost(&hf, reps, threads);
    for kind in [OutType::Q4_0, OutType::Q8_0] {
        let lengths: Vec<usize> = [128, 256, 512].into_iter().filter(|n| selected(&format!("{}/{n}", kind.name()))).collect();
        if lengths.is_empty() {
            continue;
        }
        let file = gguf(&hf, kind);
        let mut ours = Model::load(&file, &LoadOptions { threads, ..Default::default() }).unwrap();
        let mut peer = LlamaCpp::load(&file, &LlamaCppOptions::new(threads, 512)).unwrap();
        let p = ours.params().clone();
        for n in lengths {
            let tokens: Vec<u32> = (0..n as u32).map(|i| if i == 0 { 1 } else { 811 + (i * 7919) % 3000 }).collect();
            let (ta, tb) = alternate(reps, || ours.forward(&tokens).unwrap(), || peer.forward(&tokens).unwrap());
            let gf = flops(&p, n) / 1e9;
            println!(
                "{:<12} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>11.2}x",
                format!("{}/{n}", kind.name()),
                ta * 1e3,
                tb * 1e3,
                gf / ta,
                gf / tb,
                ta / tb
            );
        }
    }
}

/// Multiply-adds ×2 of one forward pass of `n` tokens: projections, attention scores and
/// values, FFN, and the LM head over every position.
fn flops(p: &dlm::model::Hparams, n: usize) -> f64 {
    let (e, q, kv, ff, v) = (p.n_embd, p.n_head * p.head_dim(), p.n_head_kv * p.head_dim(), p.n_ff, p.n_vocab);
    let per_layer = e * q + 2 * e * kv + q * e + 3 * e * ff;
    let attention = 2 * n * q; // scores and weighted values, per token
    2.0 * n as f64 * (p.n_layer * (per_layer + attention) + e * v) as f64
}

/// The value check of a whole file against ggml's and against one 128-token pass.
fn check_cost(hf: &std::path::Path, reps: usize, threads: usize) {
    for kind in [OutType::Q4_0, OutType::Q8_0] {
        if !selected(&format!("check/{}", kind.name())) {
            continue;
        }
        let file = gguf(hf, kind);
        let g = dlm::Gguf::open(&file).unwrap();
        let mb = g.tensors().iter().map(|t| t.size).sum::<u64>() as f64 / 1e6;
        let ggml = || {
            assert!(g.tensors().iter().all(|t| dlm::backend::ggml::validate_row_data(t.ggml_type, g.tensor_data(t))));
            Vec::new()
        };
        let (ours, peer) = alternate(reps, || {
            dlm::model::check_values(&g).unwrap();
            Vec::new()
        }, ggml);
        let mut m = Model::load(&file, &LoadOptions { threads, ..Default::default() }).unwrap();
        let tokens: Vec<u32> = (0..128u32).map(|i| 811 + i).collect();
        let pass = common::median((0..=reps).map(|_| common::time(|| m.forward(&tokens).unwrap()).0).skip(1).collect());
        println!(
            "check/{:<6} {mb:.0} MB: dlm {:.1} ms ({:.1} GB/s), ggml_validate_row_data {:.1} ms, dlm/ggml {:.2}x; one 128-token pass {:.1} ms, check/pass {:.2}",
            kind.name(),
            ours * 1e3,
            mb / 1e3 / ours,
            peer * 1e3,
            ours / peer,
            pass * 1e3,
            ours / pass
        );
    }
}
