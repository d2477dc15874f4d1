//! One forward pass per architecture, dlm against llama.cpp's own graph for it in the same run on
//! the same GGUF: LLaDA (`llada`, LLaDA-8B's layer shape), Dream (`dream`, Dream-7B's: grouped
//! KV 28/4, Q/K/V biases, NEOX RoPE) and DiffuGPT (`gpt2`, GPT-2 medium's: LayerNorm, GELU,
//! fused Q/K/V, learned positions, tied head). Two layers each, random weights in each family's
//! real Hugging Face layout (tests/make_checkpoint.py --arch) converted by dlm-convert to q4_0
//! (LLaDA, Dream: 2 layers of a 7–8B model; DiffuGPT-M: 2 of its 24 layers), 256 tokens, with
//! bidirectional attention and logits for every position (what each diffusion step computes).
//!
//! The peer is llama.cpp's `llama_decode` with its defaults (f16 K/V cache, flash attention,
//! Q4_0 repacked for the CPU). Runs alternate; the median of `DLM_BENCH_REPS` (default 3) runs
//! after one warm-up each is reported, with the ratio dlm / llama.cpp (below 1: dlm is faster).
//!
//!     cargo bench --bench arch            # all three (~5 min on 2 cores, the first run also
//!                                         # writes the checkpoints into target/bench-data)
//!     cargo bench --bench arch -- dream   # one

mod common;

use common::{alternate, checkpoint, gguf, selected, threads};
use dlm::backend::ggml::{LlamaCpp, LlamaCppOptions};
use dlm::{LoadOptions, Model};
use dlm_convert::OutType;

const N: usize = 256;

fn main() {
    let reps: usize = std::env::var("DLM_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    let threads = threads();
    let cases: [(&str, &str, &[&str]); 3] = [
        ("llada", "LLaDA-8B layers", &["--arch", "llada", "--layers", "2", "--hidden", "4096", "--heads", "32", "--ffn", "12288", "--shards", "2"]),
        ("dream", "Dream-7B layers", &["--arch", "dream", "--layers", "2", "--hidden", "3584", "--heads", "28", "--kv-heads", "4", "--ffn", "18944", "--shards", "2"]),
        ("gpt2", "DiffuGPT-M layers", &["--arch", "gpt2", "--layers", "2", "--hidden", "1024", "--heads", "16", "--positions", "1024", "--shards", "1"]),
    ];
    println!("forward pass of {N} tokens per architecture, q4_0, 2 layers, {threads} threads, median of {reps}");
    println!("{:<8} {:<20} {:>10} {:>10} {:>12}", "arch", "shape", "dlm ms", "llama ms", "dlm/llama");
    for (arch, shape, flags) in cases {
        if !selected(arch) {
            continue;
        }
        let hf = checkpoint(&format!("{arch}-bench-2l"), flags);
        let file = gguf(&hf, OutType::Q4_0);
        let mut ours = Model::load(&file, &LoadOptions { threads, ..Default::default() }).unwrap();
        let mut peer = LlamaCpp::load(&file, &LlamaCppOptions::new(threads, N)).unwrap();
        let n_vocab = ours.params().n_vocab as u32;
        let tokens: Vec<u32> = (0..N as u32).map(|i| (i * 7919 + 13) % n_vocab.min(50257)).collect();
        let (ta, tb) = alternate(reps, || ours.forward(&tokens).unwrap(), || peer.forward(&tokens).unwrap());
        println!("{arch:<8} {shape:<20} {:>10.1} {:>10.1} {:>11.2}x", ta * 1e3, tb * 1e3, ta / tb);
    }
}
