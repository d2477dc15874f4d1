//! Batching: several sequences denoised in one pass must give each sequence exactly what it gets
//! alone (logits, then tokens under any seed), and finished sequences must leave the batch.

mod common;

use common::tiny_gqa_gguf;
use dlm::engine::Engine;
use dlm::generate::{generate, generate_batch, generate_batch_seeded, Cache, Flow, Forward, GenParams, Generation, Pass};
use dlm::sample::{Confidence, Origin, Threshold, TokenSampler, UnmaskRule, Unmasker};
use dlm::{LoadOptions, Model, Result};
use dlm_convert::OutType;

/// `n` tokens, BOS first, mask tokens sprinkled in, varied by `salt`.
fn sequence(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| if i == 0 { 1 } else if (i + salt) % 5 == 0 { 811 } else { (i * 7919 + salt * 104_729) % 32000 }).collect()
}

#[test]
fn batched_logits_equal_each_sequence_alone() {
    // f16, q8_0 and q4_0: bit for bit (what the server's "same answer whatever the batch" rests
    // on); f32 and the K-quants' matmuls take other kernels at other column counts (3e-7).
    let kinds = [(OutType::F32, 1e-6f32), (OutType::F16, 0.0), (OutType::Q8_0, 0.0), (OutType::Q4_0, 0.0), (OutType::Q4_K_M, 1e-6)];
    for (kind, bound) in kinds {
        let (_tmp, file) = tiny_gqa_gguf(kind);
        let mut m = Model::load(&file, &LoadOptions::default()).unwrap();
        // Lengths below, at and above ggml's flash-attention tile, rows in any order.
        let seqs = [sequence(7, 0), sequence(70, 1), sequence(33, 2), sequence(1, 3)];
        let rows: [Vec<usize>; 4] = [vec![6, 0, 3], (10..70).rev().collect(), vec![32], vec![0]];
        let tokens: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let row_refs: Vec<&[usize]> = rows.iter().map(Vec::as_slice).collect();
        let batched = m.forward_batch(&tokens, &row_refs).unwrap();
        let alone: Vec<f32> = seqs.iter().zip(&rows).flat_map(|(s, r)| m.forward_rows(s, Pass::Full, Some(r)).unwrap()).collect();
        assert_eq!(batched.len(), alone.len());
        let scale = alone.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = batched.iter().zip(&alone).fold(0f32, |a, (x, y)| a.max((x - y).abs())) / scale;
        eprintln!("{}: batched vs alone max rel {err:.2e}", kind.name());
        assert!(err <= bound, "{}: {err}", kind.name());
        // Attention really stays inside each sequence: the same tokens as one sequence differ.
        let joined: Vec<u32> = seqs[..2].concat();
        let one = m.forward_rows(&joined, Pass::Full, Some(&[6])).unwrap();
        let diff = one.iter().zip(&batched[..32000]).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(diff > 1e-3 * scale, "a joined sequence should see the other tokens: {diff}");
        assert!(m.forward_batch(&tokens[..2], &row_refs[..1]).is_err(), "row lists must match");
        assert!(m.forward_batch(&[&[1, 2]], &[&[2]]).is_err(), "row outside its sequence");
    }
}

fn params(temp: f32, steps: usize, block: Option<usize>) -> GenParams {
    GenParams {
        n_gen: 24,
        steps,
        block_length: block,
        sampler: TokenSampler { temp, top_k: 0, top_p: 0.9, gumbel: false },
        seed: 7,
        mask_id: 811,
        shift_logits: true,
        eos: Some(2),
        cache: Default::default(),
        full_lm_head: false,
        cfg_scale: 0.0,
        prune: Default::default(),
    }
}

#[test]
fn batched_generation_is_each_prompt_alone() {
    let (_tmp, file) = tiny_gqa_gguf(OutType::Q8_0);
    let mut m = Model::load(&file, &LoadOptions::default()).unwrap();
    let prompts: [Vec<u32>; 3] = [vec![1, 450, 2462], vec![1, 3118, 338, 263, 4997, 2462, 29892, 322], vec![1]];
    let suffix: &[u32] = &[29889, 13];
    type Make = fn() -> Box<dyn Unmasker>;
    let rules: [(&str, Make); 3] = [("origin", || Box::new(Origin)), ("confidence", || Box::new(Confidence)), ("threshold", || Box::new(Threshold(0.02)))];
    for (name, make) in rules {
        for p in [params(0.0, 8, None), params(0.9, 6, Some(8))] {
            let batch: Vec<(&[u32], &[u32])> = prompts.iter().map(|x| (x.as_slice(), suffix)).collect();
            let mut sizes = Vec::new();
            let got = generate_batch(&mut m, &batch, &p, &make, |s| {
                sizes.push(s.sequences);
                Flow::Continue
            })
            .unwrap();
            assert_eq!(sizes[0], 3, "{name}: every prompt in the first pass");
            for (i, prefix) in prompts.iter().enumerate() {
                let alone = generate(&mut m, prefix, suffix, &p, make().as_mut(), |_| Flow::Continue).unwrap();
                assert_eq!(got[i].canvas, alone.canvas, "{name} temp {} prompt {i}", p.sampler.temp);
                assert_eq!(got[i].steps, alone.steps, "{name} prompt {i}");
            }
        }
    }
    // A seed per sequence: each equals generate with its own seed, and the seeds matter.
    let p = params(0.9, 6, None);
    let batch: Vec<(&[u32], &[u32])> = prompts.iter().map(|x| (x.as_slice(), suffix)).collect();
    let seeds = [11u64, 12, 13];
    let got = generate_batch_seeded(&mut m, &batch, &seeds, &p, &|| Box::new(Origin), |_| Flow::Continue).unwrap();
    for (i, prefix) in prompts.iter().enumerate() {
        let own = GenParams { seed: seeds[i], ..p.clone() };
        let alone = generate(&mut m, prefix, suffix, &own, &mut Origin, |_| Flow::Continue).unwrap();
        assert_eq!(got[i].canvas, alone.canvas, "seeded prompt {i}");
    }
    let same = generate_batch(&mut m, &batch, &p, &|| Box::new(Origin), |_| Flow::Continue).unwrap();
    assert!(same.iter().zip(&got).any(|(a, b)| a.canvas != b.canvas), "per-sequence seeds changed nothing");
    assert!(generate_batch_seeded(&mut m, &batch, &seeds[..2], &p, &|| Box::new(Origin), |_| Flow::Continue).is_err());
}

/// Sequences starting with token 7 predict EOS (2) everywhere with certainty; others predict
/// token 10 + i at row i with a confidence of about 0.25. Records the batch sizes it is given.
struct EosFirst {
    batches: Vec<Vec<usize>>,
}

impl Forward for EosFirst {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let v = self.n_vocab();
        let mut l = vec![0f32; tokens.len() * v];
        for i in 0..tokens.len() {
            if tokens[0] == 7 {
                l[i * v + 2] = 30.0;
            } else {
                l[i * v + 10 + i] = 3.0;
            }
        }
        Ok(l)
    }
    fn n_vocab(&self) -> usize {
        64
    }
    /// A sequence alone in a pass takes this path: a batch of one.
    fn forward_rows(&mut self, tokens: &[u32], _: Pass, rows: Option<&[usize]>) -> Result<Vec<f32>> {
        self.forward_batch(&[tokens], &[rows.expect("the sampler's rows")])
    }
    fn forward_batch(&mut self, seqs: &[&[u32]], rows: &[&[usize]]) -> Result<Vec<f32>> {
        self.batches.push(seqs.iter().map(|s| s[0] as usize).collect());
        let v = self.n_vocab();
        let mut out = Vec::new();
        for (s, r) in seqs.iter().zip(rows) {
            let all = self.forward(s)?;
            out.extend(r.iter().flat_map(|&i| all[i * v..(i + 1) * v].iter().copied()));
        }
        Ok(out)
    }
}

#[test]
fn finished_sequences_leave_the_batch() {
    let mut m = EosFirst { batches: Vec::new() };
    let mut p = params(0.0, 6, None);
    p.n_gen = 6;
    p.mask_id = 63;
    let batch: [(&[u32], &[u32]); 2] = [(&[5, 5], &[]), (&[7, 5], &[])];
    let got = generate_batch(&mut m, &batch, &p, &|| Box::new(Threshold(0.9)), |_| Flow::Continue).unwrap();
    // The EOS sequence commits everything in its first pass and leaves; the other takes one
    // position per pass (confidence 0.25 < 0.9) until its last step commits the rest.
    assert_eq!(got[1].steps, 1);
    assert!(got[1].tokens.is_empty(), "cut at the first EOS: {:?}", got[1].tokens);
    assert_eq!(got[0].steps, 6);
    assert_eq!(got[0].tokens, (11..17).collect::<Vec<u32>>());
    assert_eq!(m.batches[0], vec![5, 7]);
    assert!(m.batches[1..].iter().all(|b| b == &[5]), "{:?}", m.batches);
    assert_eq!(m.batches.len(), 6);
}

/// Classifier-free guidance written as a model wrapper, apart from the canvas loop: each call
/// runs the canvas and a copy with every position outside `span` (the prompt and the suffix)
/// masked, and returns uncond + (scale + 1)(cond − uncond).
struct Guided<'a> {
    m: &'a mut Model,
    span: std::ops::Range<usize>,
    scale: f32,
    mask: u32,
}

impl Forward for Guided<'_> {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let all: Vec<usize> = (0..tokens.len()).collect();
        self.forward_rows(tokens, Pass::Full, Some(&all))
    }
    fn n_vocab(&self) -> usize {
        self.m.params().n_vocab
    }
    fn forward_rows(&mut self, tokens: &[u32], _: Pass, rows: Option<&[usize]>) -> Result<Vec<f32>> {
        let all: Vec<usize> = (0..tokens.len()).collect();
        let rows = rows.unwrap_or(&all);
        let un: Vec<u32> = (0..tokens.len()).map(|i| if self.span.contains(&i) { tokens[i] } else { self.mask }).collect();
        let both = self.m.forward_batch(&[tokens, &un], &[rows, rows])?;
        let (c, u) = both.split_at(both.len() / 2);
        Ok(c.iter().zip(u).map(|(c, u)| u + (self.scale + 1.0) * (c - u)).collect())
    }
}

#[test]
fn guidance_masks_the_prompt_and_batches_like_the_rest() {
    let (_tmp, file) = tiny_gqa_gguf(OutType::Q8_0);
    let mut m = Model::load(&file, &LoadOptions::default()).unwrap();
    let prompts: [Vec<u32>; 2] = [vec![1, 3118, 338, 263, 4997, 2462], vec![1, 450]];
    let suffix: &[u32] = &[29889, 13];
    for (temp, block) in [(0.0, None), (0.9, Some(8))] {
        let plain = params(temp, 8, block);
        let guided = GenParams { cfg_scale: 1.5, ..plain.clone() };
        for prompt in &prompts {
            for suffix in [&[][..], suffix] {
                let ours = generate(&mut m, prompt, suffix, &guided, &mut Confidence, |_| Flow::Continue).unwrap();
                let span = prompt.len()..prompt.len() + plain.n_gen;
                let mut wrapper = Guided { m: &mut m, span, scale: 1.5, mask: plain.mask_id };
                let want = generate(&mut wrapper, prompt, suffix, &plain, &mut Confidence, |_| Flow::Continue).unwrap();
                assert_eq!(ours.canvas, want.canvas, "temp {temp}, prompt {prompt:?}, suffix {suffix:?}");
                let unguided = generate(&mut m, prompt, suffix, &plain, &mut Confidence, |_| Flow::Continue).unwrap();
                assert_ne!(ours.canvas, unguided.canvas, "guidance changed nothing (temp {temp}, prompt {prompt:?})");
            }
        }
        // In a batch each sequence brings its own unconditional canvas and gets what it gets alone.
        let batch: Vec<(&[u32], &[u32])> = prompts.iter().map(|x| (x.as_slice(), suffix)).collect();
        let got = generate_batch(&mut m, &batch, &guided, &|| Box::new(Confidence), |_| Flow::Continue).unwrap();
        for (i, prompt) in prompts.iter().enumerate() {
            let alone = generate(&mut m, prompt, suffix, &guided, &mut Confidence, |_| Flow::Continue).unwrap();
            assert_eq!(got[i].canvas, alone.canvas, "batched guidance, prompt {i}");
        }
    }
    let mut bad = GenParams { cfg_scale: 1.0, ..params(0.0, 8, Some(8)) };
    bad.cache = dlm::generate::Cache::Prefix;
    assert!(generate(&mut m, &prompts[0], &[], &bad, &mut Origin, |_| Flow::Continue).is_err(), "guidance keeps no cache");
    for scale in [-1.0, f32::NAN, 1e9] {
        let bad = GenParams { cfg_scale: scale, ..params(0.0, 8, None) };
        assert!(generate(&mut m, &prompts[0], &[], &bad, &mut Origin, |_| Flow::Continue).is_err(), "scale {scale}");
    }
}

/// Continuous batching: sequences with their own lengths, schedules, rules, seeds, guidance and
/// one with a key/value cache join the engine at different passes and leave when done; each
/// result equals `generate` alone with its settings, and the passes really were shared.
#[test]
fn sequences_join_and_leave_between_passes() {
    let (_tmp, file) = tiny_gqa_gguf(OutType::Q4_0);
    let mut m = Model::load(&file, &LoadOptions::default()).unwrap();
    let base = params(0.0, 8, None);
    let jobs: Vec<(Vec<u32>, Vec<u32>, GenParams, UnmaskRule, usize)> = vec![
        (vec![1, 450, 2462], vec![], GenParams { n_gen: 12, steps: 6, ..base.clone() }, UnmaskRule::Confidence, 0),
        (vec![1, 3118, 338], vec![29889], GenParams { n_gen: 20, steps: 5, seed: 3, sampler: TokenSampler { temp: 0.9, ..base.sampler }, ..base.clone() }, UnmaskRule::Origin, 0),
        (vec![1], vec![], GenParams { n_gen: 16, steps: 8, block_length: Some(8), cache: Cache::Prefix, ..base.clone() }, UnmaskRule::Entropy, 1),
        (vec![1, 263], vec![13], GenParams { n_gen: 8, steps: 4, cfg_scale: 1.5, ..base.clone() }, UnmaskRule::Margin, 2),
        (vec![1, 4997], vec![], GenParams { n_gen: 10, steps: 10, seed: 99, sampler: TokenSampler { temp: 0.7, ..base.sampler }, ..base.clone() }, UnmaskRule::Threshold, 3),
    ];
    let mut engine = Engine::new();
    let mut results: Vec<Option<Generation>> = vec![None; jobs.len()];
    let mut ids = vec![u64::MAX; jobs.len()];
    let (mut pass, mut widest) = (0, 0);
    loop {
        for (k, job) in jobs.iter().enumerate().filter(|(_, j)| j.4 == pass) {
            ids[k] = engine.add(&job.0, &job.1, job.2.clone(), job.3.unmasker(0.3)).unwrap();
        }
        let Some(st) = engine.step(&mut m).unwrap() else { break };
        widest = widest.max(st.ran.len());
        for (id, g) in st.finished {
            results[ids.iter().position(|&i| i == id).unwrap()] = Some(g);
        }
        pass += 1;
        assert!(pass < 200, "the engine never emptied");
    }
    assert!(widest >= 3, "passes were shared: at most {widest} sequences in one");
    for (k, (prefix, suffix, p, rule, _)) in jobs.iter().enumerate() {
        let alone = generate(&mut m, prefix, suffix, p, rule.unmasker(0.3).as_mut(), |_| Flow::Continue).unwrap();
        let got = results[k].as_ref().expect("every sequence finished");
        assert_eq!(got.canvas, alone.canvas, "sequence {k} ({rule:?})");
        assert_eq!(got.steps, alone.steps, "sequence {k}");
    }
    // Cached sequences share passes too (each has its own cache); a cancelled one gives its
    // canvas so far and leaves, and its cache is freed at the next step.
    let cached = jobs[2].2.clone();
    let a = engine.add(&[1], &[], cached.clone(), UnmaskRule::Confidence.unmasker(0.3)).unwrap();
    let c = engine.add(&[1, 263], &[], cached, UnmaskRule::Confidence.unmasker(0.3)).unwrap();
    let b = engine.add(&[1, 450], &[], base.clone(), UnmaskRule::Confidence.unmasker(0.3)).unwrap();
    let st = engine.step(&mut m).unwrap().unwrap();
    assert_eq!(st.ran.len(), 3, "{:?}", st.ran);
    assert_eq!(m.caches_held(), 2);
    let part = engine.remove(a).unwrap();
    assert_eq!(part.steps, 1);
    assert!(part.canvas.contains(&811), "still masked somewhere after one of 8 steps");
    assert!(engine.view(a).is_none() && engine.view(b).is_some() && engine.view(c).is_some());
    assert_eq!(engine.len(), 2);
    engine.step(&mut m).unwrap();
    assert_eq!(m.caches_held(), 1, "the removed sequence's cache was freed");
}

/// [`EosFirst`] whose passes fail when a sequence starts with token 9 (a model error).
struct Failing(EosFirst);

impl Forward for Failing {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.0.forward(tokens)
    }
    fn n_vocab(&self) -> usize {
        self.0.n_vocab()
    }
    fn forward_rows(&mut self, tokens: &[u32], pass: Pass, rows: Option<&[usize]>) -> Result<Vec<f32>> {
        if tokens[0] == 9 {
            return Err(dlm::Error::Invalid("poisoned".into()));
        }
        self.0.forward_rows(tokens, pass, rows)
    }
    fn forward_batch(&mut self, seqs: &[&[u32]], rows: &[&[usize]]) -> Result<Vec<f32>> {
        if seqs.iter().any(|s| s[0] == 9) {
            return Err(dlm::Error::Invalid("poisoned".into()));
        }
        self.0.forward_batch(seqs, rows)
    }
}

/// A pass that fails ends only the sequences it was for: the cached sequence runs in its own
/// call, so its failure leaves the batch's sequences going, each still equal to `generate`.
#[test]
fn a_failed_pass_ends_only_its_own_sequences() {
    let mut m = Failing(EosFirst { batches: Vec::new() });
    let mut p = params(0.0, 6, None);
    p.n_gen = 6;
    p.mask_id = 63;
    let cached = GenParams { cache: Cache::Prefix, block_length: Some(3), ..p.clone() };
    let mut engine = Engine::new();
    let bad = engine.add(&[9, 5], &[], cached, Box::new(Threshold(0.9))).unwrap();
    let good = engine.add(&[5, 5], &[], p.clone(), Box::new(Threshold(0.9))).unwrap();
    let st = engine.step(&mut m).unwrap().unwrap();
    assert_eq!(st.failed.len(), 1);
    assert_eq!(st.failed[0].0, bad);
    assert!(st.failed[0].1.to_string().contains("poisoned"), "{}", st.failed[0].1);
    assert_eq!(st.ran, vec![(good, 1)]);
    let mut last = None;
    while let Some(st) = engine.step(&mut m).unwrap() {
        assert!(st.failed.is_empty());
        last = st.finished.into_iter().next().or(last);
    }
    let alone = generate(&mut m, &[5, 5], &[], &p, &mut Threshold(0.9), |_| Flow::Continue).unwrap();
    assert_eq!(last.expect("finished").1.canvas, alone.canvas);
    // Alone, the failure is generate's error.
    assert!(generate(&mut m, &[9, 5], &[], &p, &mut Threshold(0.9), |_| Flow::Continue).is_err());
}
