//! End-to-end generation: 256 new tokens in 64 steps after a short prompt, on the 7B-shaped
//! two-layer q4_0 model, tokens/s, with the same sampler loop driving dlm's forward pass and
//! llama.cpp's (`llama_decode` of the whole canvas every step, as `llama-diffusion-cli` does).
//!
//!     cargo bench --bench generate             # ~7 min on 2 cores
//!     cargo bench --bench generate -- origin   # a subset

mod common;

use common::{diffullama_params, gguf, llama7b_2l, selected, threads, time};
use dlm::backend::ggml::{LlamaCpp, LlamaCppOptions};
use dlm::generate::{generate, Flow, Forward};
use dlm::sample::{Origin, Threshold, TokenSampler, Unmasker};
use dlm::{LoadOptions, Model, Tokenizer};
use dlm_convert::OutType;

const N_GEN: usize = 256;
const STEPS: usize = 64;

fn main() {
    let file = gguf(&llama7b_2l(), OutType::Q4_0);
    let threads = threads();
    let g = dlm::Gguf::open(&file).unwrap();
    let prompt = Tokenizer::from_gguf(&g).unwrap().encode("Today is a wonderful day,").unwrap();
    let n_ctx = prompt.len() + N_GEN;
    println!("generation, 7B-shaped layers x2, q4_0, {threads} threads: {} prompt tokens, {N_GEN} new, {STEPS} steps", prompt.len());
    println!("{:<22} {:>7} {:>10} {:>10} {:>9}", "case", "steps", "ms/step", "tokens/s", "vs llama");
    let params = diffullama_params(N_GEN, STEPS, TokenSampler { temp: 0.9, top_k: 0, top_p: 0.9, gumbel: false }, 0);
    let mut base = None;
    let cases: [(&str, fn() -> Box<dyn Unmasker>, bool); 3] = [
        ("llama.cpp/origin", || Box::new(Origin), true),
        ("dlm/origin", || Box::new(Origin), false),
        ("dlm/threshold-0.9", || Box::new(Threshold(0.9)), false),
    ];
    for (name, rule, peer) in cases {
        if !selected(name) {
            continue;
        }
        let mut model: Box<dyn Forward> = if peer {
            Box::new(LlamaCpp::load(&file, &LlamaCppOptions::new(threads, n_ctx)).unwrap())
        } else {
            Box::new(Model::load(&file, &LoadOptions { threads, ..Default::default() }).unwrap())
        };
        model.forward(&prompt).unwrap(); // warm-up: page in the weights
        let (secs, out) = time(|| generate(model.as_mut(), &prompt, &[], &params, rule().as_mut(), |_| Flow::Continue).unwrap());
        let tps = N_GEN as f64 / secs;
        base = base.or(peer.then_some(tps));
        let ratio = base.map_or("-".into(), |b| format!("{:.2}x", tps / b));
        println!("{name:<22} {:>7} {:>10.0} {:>10.2} {:>9}", out.steps, secs * 1e3 / out.steps as f64, tps, ratio);
    }
}
