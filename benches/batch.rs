//! Throughput against batch size: 8 short prompts denoised in batches of 1, 2, 4 and 8
//! (`generate_batch`: one pass over the weights per step for the whole batch), against
//! llama.cpp decoding each canvas on its own every step, same run, same GGUF.
//!
//! Model: the "DiffuLLaMA-1B shape" q4_0 file of the sampling bench (22 layers, hidden 2048).
//! 8 prompts of 16 tokens, 32 new tokens each, 4 steps, greedy. Every batch size must produce
//! exactly the tokens of batch size 1 (checked here too).
//!
//!     cargo bench --bench batch      # ~4 min on 2 cores

mod common;

use common::{diffullama_params, diffullama_1b_sharp, gguf, threads, time};
use dlm::backend::ggml::{LlamaCpp, LlamaCppOptions};
use dlm::generate::{generate, generate_batch, Flow};
use dlm::sample::{Origin, TokenSampler, Unmasker};
use dlm::{Gguf, LoadOptions, Model, Tokenizer};
use dlm_convert::OutType;

const PROMPTS: usize = 8;
const PROMPT_LEN: usize = 16;
const N_GEN: usize = 32;
const STEPS: usize = 4;

fn main() {
    let file = gguf(&diffullama_1b_sharp(), OutType::Q4_0);
    let threads = threads();
    let tok = Tokenizer::from_gguf(&Gguf::open(&file).unwrap()).unwrap();
    let words = "the river city market walls north south merchants came settlement grew crossing \
        bishops kings charter citizens defended claims generations cathedral centuries town";
    let all = tok.encode(words).unwrap();
    let prompts: Vec<Vec<u32>> = (0..PROMPTS)
        .map(|i| std::iter::once(1).chain(all.iter().cycle().skip(1 + 3 * i).take(PROMPT_LEN - 1).copied()).collect())
        .collect();
    let p = diffullama_params(N_GEN, STEPS, TokenSampler { temp: 0.0, top_k: 0, top_p: 1.0, gumbel: false }, 1);
    let total_tokens = (PROMPTS * N_GEN) as f64;
    println!("batching, 1B-shaped q4_0 (22 layers), {threads} threads: {PROMPTS} prompts of {PROMPT_LEN} tokens, {N_GEN} new tokens each, {STEPS} steps, greedy");
    println!();
    println!("| system | batch size | passes | tokens/s | ratio |");
    println!("|---|---|---|---|---|");

    let peer_tps = {
        let mut peer = LlamaCpp::load(&file, &LlamaCppOptions::new(threads, PROMPT_LEN + N_GEN)).unwrap();
        peer.forward(&prompts[0]).unwrap();
        let (secs, passes) = time(|| {
            prompts.iter().map(|x| generate(&mut peer, x, &[], &p, &mut Origin, |_| Flow::Continue).unwrap().steps).sum::<usize>()
        });
        let tps = total_tokens / secs;
        println!("| llama.cpp, one canvas per decode | 1 | {passes} | {tps:.2} | 1.00 |");
        tps
    };
    let mut model = Model::load(&file, &LoadOptions { threads, ..Default::default() }).unwrap();
    model.forward(&prompts[0]).unwrap();
    let mut first: Option<Vec<Vec<u32>>> = None;
    for batch in [1, 2, 4, 8] {
        let mut passes = 0;
        let (secs, tokens) = time(|| {
            let mut out = Vec::new();
            for chunk in prompts.chunks(batch) {
                let b: Vec<(&[u32], &[u32])> = chunk.iter().map(|x| (x.as_slice(), &[][..])).collect();
                let make = || -> Box<dyn Unmasker> { Box::new(Origin) };
                let gens = generate_batch(&mut model, &b, &p, &make, |_| {
                    passes += 1;
                    Flow::Continue
                })
                .unwrap();
                out.extend(gens.into_iter().map(|g| g.tokens));
            }
            out
        });
        match &first {
            None => first = Some(tokens),
            Some(f) => assert_eq!(f, &tokens, "batch {batch} changed the tokens"),
        }
        let tps = total_tokens / secs;
        println!("| dlm generate_batch | {batch} | {passes} | {tps:.2} | {:.2} |", tps / peer_tps);
    }
}
