//! The token sampler's share of a denoising step: milliseconds to sample every masked row of a
//! step, the reference sampler (full softmax, entropy and vocabulary sort per row; what dlm ran
//! before issue 29) against the current one, same rows, same run, rows in parallel over the
//! threads as the engine samples them. The two give bit-identical results (tests/sampler.rs);
//! the bench checks the tokens agree too.
//!
//! Rows: "LM-like" logits (a Gaussian bulk of std 2.5 with one token 8–20 nats above it, as a
//! trained head gives) at the vocabulary sizes of LLaMA-2 (32000), LLaDA (126464) and
//! Dream/Qwen2 (151936), and the trained tiny DiffuLLaMA's own logits (32000 ids, every position
//! of a masked canvas of held-out prompts). Settings: what each family runs by default.
//!
//! The step it is compared with: one forward pass of the "DiffuLLaMA-1B shape" (22 layers,
//! hidden 2048, q4_0) over a 64-token prompt and 256 masked positions, LM head on the 256 rows.
//! Its vocabulary is 32000, so at 151936 ids a real step is longer (its LM head alone grows by
//! ~125 GFLOP) and the share printed is an upper bound.
//!
//!     cargo bench --bench sampler            # everything (about 10 minutes on 2 cores)
//!     cargo bench --bench sampler -- 151936  # one vocabulary size (or: tiny, step)

mod common;

use common::{diffullama_1b_sharp, gguf, median, selected, threads, time, tiny_q4};
use dlm::engine::DEVICE_CANDIDATES;
use dlm::generate::{Pass, SeqPass};
use dlm::sample::{reference, Candidate, Rng, Scores, TokenSampler};
use dlm::{Gguf, LoadOptions, Model, Tokenizer};
use dlm_convert::OutType;
use rayon::prelude::*;

struct Setting {
    name: &'static str,
    sampler: TokenSampler,
    scores: Scores,
}

fn settings() -> Vec<Setting> {
    let s = |temp, top_p, gumbel| TokenSampler { temp, top_k: 0, top_p, gumbel };
    vec![
        Setting { name: "greedy, origin rule (DiffuLLaMA default)", sampler: s(0.0, 1.0, false), scores: Scores::NONE },
        Setting { name: "greedy, confidence (LLaDA default)", sampler: s(0.0, 1.0, false), scores: Scores { confidence: true, ..Scores::NONE } },
        Setting { name: "greedy, entropy", sampler: s(0.0, 1.0, false), scores: Scores { entropy: true, ..Scores::NONE } },
        Setting { name: "temp 0.2, top-p 0.95, entropy (Dream default)", sampler: s(0.2, 0.95, false), scores: Scores { entropy: true, ..Scores::NONE } },
        Setting { name: "temp 0.9, top-p 0.95, confidence", sampler: s(0.9, 0.95, false), scores: Scores { confidence: true, ..Scores::NONE } },
        Setting { name: "temp 1, Gumbel, confidence (LLaDA sampling)", sampler: s(1.0, 1.0, true), scores: Scores { confidence: true, ..Scores::NONE } },
    ]
}


fn lm_like(vocab: usize, rows: usize, seed: u64) -> Vec<f32> {
    let mut g = Rng::new(seed);
    let mut out = Vec::with_capacity(vocab * rows);
    for _ in 0..rows {
        let start = out.len();
        out.extend((0..vocab).map(|_| 2.5 * g.normal() as f32));
        let top = start + (g.uniform() * vocab as f64) as usize % vocab;
        out[top] += 8.0 + 12.0 * g.uniform() as f32;
    }
    out
}

/// Samples every row as the engine does (rows in parallel, one random stream per position).
fn step(rows: &[f32], vocab: usize, f: &(dyn Fn(&[f32], &mut Rng) -> Candidate + Sync)) -> Vec<Candidate> {
    rows.par_chunks(vocab).enumerate().map(|(k, r)| f(r, &mut Rng::for_position(7, 1, k as u64))).collect()
}

/// Median milliseconds per step of the reference and of the current sampler, alternated.
fn compare(rows: &[f32], vocab: usize, s: &Setting, reps: usize) -> (f64, f64) {
    let old = |r: &[f32], rng: &mut Rng| reference::sample(&s.sampler, r, rng);
    let new = |r: &[f32], rng: &mut Rng| s.sampler.sample_scores(r, rng, s.scores);
    let (a, b) = (step(rows, vocab, &old), step(rows, vocab, &new));
    assert!(a.iter().zip(&b).all(|(x, y)| x.token == y.token), "{}: the samplers disagree", s.name);
    let (mut to, mut tn) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        to.push(time(|| step(rows, vocab, &old)).0 * 1e3);
        tn.push(time(|| step(rows, vocab, &new)).0 * 1e3);
    }
    (median(to), median(tn))
}

fn table(title: &str, rows: &[f32], vocab: usize, n_rows: usize, step_ms: Option<f64>) {
    println!();
    println!("{title}: {n_rows} rows × {vocab} ids, {} threads", threads());
    println!();
    // How far the sampler's f32 id-order sum of exponentials (kept bit-identical to the
    // reference) is from the f64 sum: the confidence it reports is off by this much.
    let worst = rows[..vocab * n_rows]
        .chunks(vocab)
        .map(|r| {
            let c = TokenSampler { temp: 0.0, top_k: 0, top_p: 1.0, gumbel: false }.sample(r, &mut Rng::new(0)).confidence as f64;
            let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let z: f64 = r.iter().map(|&x| (x as f64 - m).exp()).sum();
            (c * z - 1.0).abs()
        })
        .fold(0f64, f64::max);
    println!("greedy confidence, f32 sum in id order vs f64: up to {worst:.1e} relative");
    println!();
    println!("| setting | reference ms/step | dlm ms/step | speed-up | share of a 1B step |");
    println!("|---|---|---|---|---|");
    for s in settings() {
        let reps = if vocab * n_rows > 10_000_000 { 3 } else { 7 };
        let (old, new) = compare(&rows[..vocab * n_rows], vocab, &s, reps);
        let share = step_ms.map_or("-".to_string(), |f| format!("{:.1}% (was {:.1}%)", 100.0 * new / (f + new), 100.0 * old / (f + old)));
        println!("| {} | {old:.2} | {new:.2} | {:.1}× | {share} |", s.name, old / new);
    }
}

fn main() {
    let threads = threads();
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().ok();
    let step_ms = if selected("step") || selected("151936") {
        eprintln!("1B-shaped forward pass ...");
        let file = gguf(&diffullama_1b_sharp(), OutType::Q4_0);
        let mut model = Model::load(&file, &LoadOptions { threads, ..Default::default() }).unwrap();
        let canvas: Vec<u32> = (0..64).map(|i| 100 + i as u32).chain(std::iter::repeat_n(811, 256)).collect();
        let rows: Vec<usize> = (63..319).collect();
        model.forward_rows(&canvas, Pass::Full, Some(&rows)).unwrap();
        let ms = median((0..3).map(|_| time(|| model.forward_rows(&canvas, Pass::Full, Some(&rows)).unwrap()).0 * 1e3).collect());
        println!("1B-shaped q4_0 step (22 layers, 320 positions, LM head on 256 rows, vocabulary 32000): {ms:.0} ms");
        // The same step with the rows reduced in the graph (device candidates) against logits
        // then the host sampler, greedy confidence rule.
        let conf = Scores { confidence: true, ..Scores::NONE };
        let greedy = TokenSampler { temp: 0.0, top_k: 0, top_p: 1.0, gumbel: false };
        let mut host = || {
            let l = model.forward_rows(&canvas, Pass::Full, Some(&rows)).unwrap();
            step(&l, 32000, &|r: &[f32], rng: &mut Rng| greedy.sample_scores(r, rng, conf))
        };
        let mut model2 = Model::load(&file, &LoadOptions { threads, ..Default::default() }).unwrap();
        let mut device = || model2.forward_rows_stats(&canvas, Pass::Full, &rows).unwrap().iter().map(|r| r.candidate()).collect::<Vec<_>>();
        let (a, b) = (host(), device());
        let same = a.iter().zip(&b).filter(|(x, y)| x.token == y.token).count();
        let th = median((0..3).map(|_| time(&mut host).0 * 1e3).collect());
        let td = median((0..3).map(|_| time(&mut device).0 * 1e3).collect());
        println!();
        println!("| greedy step, 256 rows × 32000 ids | ms/step | bytes to the host per step | same tokens |");
        println!("|---|---|---|---|");
        println!("| logits, then the host sampler | {th:.0} | {} | - |", 256 * 32000 * 4);
        println!("| rows reduced in the graph (--device-candidates on) | {td:.0} | {} | {same}/256 |", 256 * 5 * 4);
        // A sampled step (Dream's default: temperature 0.2, top-p 0.95, entropy rule): logits
        // then the host sampler, against 64 candidates per row from the graph, drawn on the
        // host where certain, the rest of the rows read back from the kept logits.
        let all = Scores::ALL;
        for (name, sampler) in [("temp 0.2 top-p 0.95", TokenSampler { temp: 0.2, top_p: 0.95, ..greedy }), ("temp 0.9 top-p 0.95", TokenSampler { temp: 0.9, top_p: 0.95, ..greedy })] {
            let mut host = || {
                let l = model.forward_rows(&canvas, Pass::Full, Some(&rows)).unwrap();
                step(&l, 32000, &|r: &[f32], rng: &mut Rng| sampler.sample_scores(r, rng, all))
            };
            let mut device = || {
                let before = model2.bytes_read_back();
                let seq = SeqPass { tokens: &canvas, pass: Pass::Full, rows: Some(&rows) };
                let c = model2.forward_seqs_candidates(&[seq], &[1.0 / sampler.temp], DEVICE_CANDIDATES).unwrap();
                let mut out: Vec<Option<Candidate>> = c.par_iter().enumerate().map(|(k, c)| sampler.sample_candidates(c, 32000, &mut Rng::for_position(7, 1, k as u64), all)).collect();
                let miss: Vec<usize> = (0..out.len()).filter(|&k| out[k].is_none()).collect();
                if !miss.is_empty() {
                    let l = model2.read_kept_rows(&miss).unwrap();
                    for (r, &k) in l.chunks(32000).zip(&miss) {
                        out[k] = Some(sampler.sample_scores(r, &mut Rng::for_position(7, 1, k as u64), all));
                    }
                }
                (out.into_iter().map(Option::unwrap).collect::<Vec<_>>(), miss.len(), model2.bytes_read_back() - before)
            };
            let (a, (b, miss, bytes)) = (host(), device());
            let same = a.iter().zip(&b).filter(|(x, y)| x.token == y.token).count();
            let th = median((0..3).map(|_| time(&mut host).0 * 1e3).collect());
            let td = median((0..3).map(|_| time(&mut device).0 * 1e3).collect());
            println!();
            println!("| sampled step, {name}, 256 rows × 32000 ids | ms/step | bytes to the host per step | same tokens |");
            println!("|---|---|---|---|");
            println!("| logits, then the host sampler | {th:.0} | {} | - |", 256 * 32000 * 4);
            println!("| {DEVICE_CANDIDATES} candidates per row from the graph, {miss} rows read back | {td:.0} | {bytes} | {same}/256 |");
        }
        Some(ms)
    } else {
        None
    };
    for vocab in [32000usize, 126464, 151936] {
        if !selected(&vocab.to_string()) {
            continue;
        }
        let rows = lm_like(vocab, 256, vocab as u64);
        for n in [32usize, 256] {
            table("LM-like rows", &rows, vocab, n, if vocab == 151936 { step_ms } else { None });
        }
    }
    if selected("tiny") {
        let file = tiny_q4();
        let tok = Tokenizer::from_gguf(&Gguf::open(&file).unwrap()).unwrap();
        let mut model = Model::load(&file, &LoadOptions { threads, ..Default::default() }).unwrap();
        let vocab = model.params().n_vocab;
        let text = std::fs::read_to_string(common::root().join("models/tasks/test.jsonl")).unwrap();
        let mut rows = Vec::new();
        // Every 25th held-out problem (all tasks), its answer's positions masked (step 1).
        for line in text.lines().step_by(25) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let mut canvas = tok.prompt_ids(v["prompt"].as_str().unwrap()).unwrap();
            let (n, gen) = (canvas.len(), v["n"].as_u64().unwrap() as usize);
            canvas.extend(std::iter::repeat_n(dlm::keys::DIFFULLAMA_MASK_ID, gen));
            let wanted: Vec<usize> = (n - 1..n - 1 + gen).collect();
            rows.extend(model.forward_rows(&canvas, Pass::Full, Some(&wanted)).unwrap());
        }
        let n = rows.len() / vocab;
        table("trained tiny DiffuLLaMA's logits (held-out problems, first step)", &rows, vocab, n, None);
    }
}
