//! The README's headline table: what each sampling speed-up buys end to end, against llama.cpp
//! decoding the whole canvas every step (what `llama-diffusion-cli` does), same run, same GGUF.
//!
//! Model: "DiffuLLaMA-1B shape" (22 layers, hidden 2048, 16 heads, FFN 5632, vocabulary 32000,
//! random weights, LM head sharpened so confidences spread over ~0.4–1.0), q4_0. A 64-token
//! prompt, 256 new tokens, `DLM_BENCH_STEPS` steps (default 64), greedy token choice. On
//! 2 cores the whole table takes about two hours; `DLM_BENCH_KL=0` saves a quarter of it.
//!
//! Agreement: for each speed-up, the fraction of generated tokens identical to the exact run
//! it approximates (same rule and blocks, no cache, full LM head; for threshold rules, the
//! `confidence` rule at the full step budget, which is what parallel decoding replaces), and
//! for cache modes the mean KL(exact ‖ cached) of the per-step distributions of the masked
//! positions, the exact ones computed on the same canvases (`DLM_BENCH_KL=0` skips that).
//!
//!     cargo bench --bench sampling

mod common;

use common::{diffullama_params, diffullama_1b_sharp, gguf, threads, time};
use dlm::backend::ggml::{LlamaCpp, LlamaCppOptions};
use dlm::generate::{generate, Cache, Flow, Forward, GenParams, Generation, Pass};
use dlm::sample::{Confidence, Origin, Threshold, TokenSampler, Unmasker};
use dlm::{Gguf, LoadOptions, Model, Tokenizer};
use dlm_convert::OutType;

const PROMPT: usize = 64;
const N_GEN: usize = 256;
const BLOCK: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    Origin,
    Confidence,
    Threshold,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Setup {
    rule: Rule,
    block: Option<usize>,
    cache: Cache,
    full_lm_head: bool,
}

impl Setup {
    /// The exact run this setup approximates.
    fn reference(self) -> Setup {
        let rule = if self.rule == Rule::Threshold { Rule::Confidence } else { self.rule };
        Setup { rule, block: self.block, cache: Cache::None, full_lm_head: true }
    }
}

fn unmasker(r: Rule) -> Box<dyn Unmasker> {
    match r {
        Rule::Origin => Box::new(Origin),
        Rule::Confidence => Box::new(Confidence),
        Rule::Threshold => Box::new(Threshold(0.9)),
    }
}

fn run(model: &mut dyn Forward, prompt: &[u32], s: Setup, steps: usize) -> (f64, Generation) {
    let p = GenParams {
        block_length: s.block,
        cache: s.cache,
        full_lm_head: s.full_lm_head,
        cfg_scale: 0.0,
        prune: Default::default(),
        ..diffullama_params(N_GEN, steps, TokenSampler { temp: 0.0, top_k: 0, top_p: 1.0, gumbel: false }, 42)
    };
    time(|| generate(model, prompt, &[], &p, unmasker(s.rule).as_mut(), |_| Flow::Continue).unwrap())
}

/// Wraps the model: every cached pass is also computed exactly on the same canvas, and the KL
/// divergence of the two distributions per masked row is accumulated.
struct KlProbe<'m> {
    model: &'m mut Model,
    sum: f64,
    rows: usize,
}

impl Forward for KlProbe<'_> {
    fn forward(&mut self, tokens: &[u32]) -> dlm::Result<Vec<f32>> {
        self.model.forward(tokens)
    }
    fn free_cache(&mut self, cache: dlm::generate::CacheId) {
        self.model.free_cache(cache)
    }
    fn n_vocab(&self) -> usize {
        self.model.params().n_vocab
    }
    fn forward_rows(&mut self, tokens: &[u32], pass: Pass, rows: Option<&[usize]>) -> dlm::Result<Vec<f32>> {
        let fast = self.model.forward_rows(tokens, pass, rows)?;
        if let (Pass::Reuse { .. }, Some(rows)) = (pass, rows) {
            let exact = self.model.forward_rows(tokens, Pass::Full, Some(rows))?;
            let v = self.n_vocab();
            for (e, f) in exact.chunks(v).zip(fast.chunks(v)) {
                self.sum += kl(e, f);
                self.rows += 1;
            }
        }
        Ok(fast)
    }
}

/// KL(softmax(p) ‖ softmax(q)) in nats.
fn kl(p: &[f32], q: &[f32]) -> f64 {
    let lse = |x: &[f32]| {
        let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
    };
    let (lp, lq) = (lse(p), lse(q));
    p.iter().zip(q).map(|(&a, &b)| ((a as f64 - lp).exp()) * ((a as f64 - lp) - (b as f64 - lq))).sum()
}

fn agreement(a: &Generation, b: &Generation) -> f64 {
    a.tokens.iter().zip(&b.tokens).filter(|(x, y)| x == y).count() as f64 / N_GEN as f64
}

fn main() {
    let steps: usize = std::env::var("DLM_BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    let with_kl = std::env::var("DLM_BENCH_KL").map_or(true, |v| v != "0");
    let file = gguf(&diffullama_1b_sharp(), OutType::Q4_0);
    let threads = threads();
    let tok = Tokenizer::from_gguf(&Gguf::open(&file).unwrap()).unwrap();
    let text = "The history of the city begins in the early middle ages, when a small settlement grew \
        around the river crossing. Merchants came from the north and the south, and within two \
        centuries the town had walls, a market, a cathedral and a charter of its own, which the \
        citizens defended against the claims of bishops and kings alike for many generations.";
    let mut prompt = tok.encode(text).unwrap();
    assert!(prompt.len() >= PROMPT, "prompt text too short: {}", prompt.len());
    prompt.truncate(PROMPT);

    let mut model = Model::load(&file, &LoadOptions { threads, ..Default::default() }).unwrap();
    let canvas: Vec<u32> = prompt.iter().copied().chain(std::iter::repeat_n(811, N_GEN)).collect();
    model.forward(&canvas).unwrap(); // warm-up: page the weights in

    let exact = Setup { rule: Rule::Origin, block: None, cache: Cache::None, full_lm_head: true };
    let rows: [(&str, Setup); 5] = [
        ("dlm exact (origin)", exact),
        ("dlm + LM-head restriction", Setup { full_lm_head: false, ..exact }),
        ("dlm + threshold 0.9", Setup { rule: Rule::Threshold, full_lm_head: false, ..exact }),
        ("dlm + block 32 + prefix cache", Setup { block: Some(BLOCK), cache: Cache::Prefix, full_lm_head: false, ..exact }),
        (
            "dlm + block 32 + dual cache + threshold 0.9",
            Setup { rule: Rule::Threshold, block: Some(BLOCK), cache: Cache::Dual, full_lm_head: false },
        ),
    ];

    eprintln!("llama.cpp ...");
    let (peer_s, peer_gen) = {
        let mut peer = LlamaCpp::load(&file, &LlamaCppOptions::new(threads, PROMPT + N_GEN)).unwrap();
        peer.forward(&canvas).unwrap();
        run(&mut peer, &prompt, exact, steps)
    };
    let peer_tps = N_GEN as f64 / peer_s;
    let mut results: Vec<(&str, Setup, f64, Generation)> = Vec::new();
    for (name, s) in rows {
        eprintln!("{name} ...");
        let (secs, g) = run(&mut model, &prompt, s, steps);
        results.push((name, s, secs, g));
    }
    let mut references: Vec<(Setup, Generation)> = results.iter().map(|(_, s, _, g)| (*s, g.clone())).collect();

    println!();
    println!("1B-shaped q4_0 (22 layers), {threads} threads, prompt {PROMPT}, {N_GEN} new tokens, {steps} steps, greedy");
    println!();
    println!("| system | steps | tokens/s | ratio | greedy agreement | mean KL (nats) |");
    println!("|---|---|---|---|---|---|");
    let dlm_exact = &results[0].3;
    println!(
        "| llama.cpp non-causal decode of the full sequence every step | {} | {:.2} | 1.00 | {:.0}% vs dlm exact | - |",
        peer_gen.steps,
        peer_tps,
        100.0 * agreement(&peer_gen, dlm_exact)
    );
    for (name, s, secs, g) in &results {
        let reference = s.reference();
        let agree = if reference == *s {
            "-".to_string()
        } else {
            let r = match references.iter().find(|(rs, _)| *rs == reference) {
                Some((_, r)) => r.clone(),
                None => {
                    eprintln!("reference for {name} ...");
                    let (_, r) = run(&mut model, &prompt, reference, steps);
                    references.push((reference, r.clone()));
                    r
                }
            };
            format!("{:.0}%", 100.0 * agreement(g, &r))
        };
        let kl = if s.cache != Cache::None && with_kl {
            eprintln!("KL probe for {name} ...");
            let mut probe = KlProbe { model: &mut model, sum: 0.0, rows: 0 };
            run(&mut probe, &prompt, *s, steps);
            format!("{:.3}", probe.sum / probe.rows.max(1) as f64)
        } else if s.cache != Cache::None {
            "not run".into()
        } else {
            "0 (exact logits)".into()
        };
        let tps = N_GEN as f64 / secs;
        println!("| {name} | {} | {tps:.2} | {:.2} | {agree} | {kl} |", g.steps, tps / peer_tps);
    }
}
