//! Fast-dLLM's prefix and dual caches in batches: every sequence keeps its own key/value cache in
//! the model, several cached sequences run in one forward pass, and each gets exactly what it
//! gets alone; a sequence that fails or is cancelled leaves the others' caches alone, and a
//! sequence's cache is refreshed by a full pass at every block boundary.

mod common;

use std::collections::HashMap;

use common::tiny_gqa_gguf;
use dlm::engine::Engine;
use dlm::generate::{generate, generate_batch_seeded, Cache, CacheId, Flow, Forward, GenParams, Pass, SeqPass};
use dlm::sample::{Threshold, TokenSampler, UnmaskRule};
use dlm::{LoadOptions, Model, Result};
use dlm_convert::OutType;

fn params(cache: Cache, block: usize, n_gen: usize) -> GenParams {
    GenParams {
        n_gen,
        steps: n_gen,
        block_length: Some(block),
        sampler: TokenSampler { temp: 0.0, top_k: 0, top_p: 1.0, gumbel: false },
        seed: 7,
        mask_id: 811,
        shift_logits: true,
        eos: None,
        cache,
        full_lm_head: false,
        cfg_scale: 0.0,
        prune: Default::default(),
    }
}

/// The model, counting the sequences of each pass and checking each cache's schedule: after a
/// storing pass, every reusing pass of that cache decodes the same block (its first computed
/// position is the block's start), so a block boundary crossed without a new full pass (a stale
/// cache) fails the run.
struct Watch<'m> {
    m: &'m mut Model,
    widths: Vec<usize>,
    stored_for: HashMap<CacheId, Option<usize>>,
    stores: usize,
}

impl Watch<'_> {
    fn check(&mut self, pass: Pass) {
        match pass {
            Pass::Full => {}
            Pass::Store { cache } => {
                self.stores += 1;
                self.stored_for.insert(cache, None);
            }
            Pass::Reuse { cache, start, .. } => {
                let block = self.stored_for.get_mut(&cache).expect("a reusing pass after a storing one");
                match block {
                    None => *block = Some(start),
                    Some(b) => assert_eq!(*b, start, "cache {cache}: a new block ({start}) reuses keys/values stored for the block at {b}"),
                }
            }
        }
    }
}

impl Forward for Watch<'_> {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.m.forward(tokens)
    }
    fn n_vocab(&self) -> usize {
        self.m.params().n_vocab
    }
    fn forward_rows(&mut self, tokens: &[u32], pass: Pass, rows: Option<&[usize]>) -> Result<Vec<f32>> {
        self.forward_seqs(&[SeqPass { tokens, pass, rows }])
    }
    fn forward_seqs(&mut self, seqs: &[SeqPass<'_>]) -> Result<Vec<f32>> {
        self.widths.push(seqs.len());
        for s in seqs {
            self.check(s.pass);
        }
        self.m.forward_seqs(seqs)
    }
    fn free_cache(&mut self, cache: CacheId) {
        self.stored_for.remove(&cache);
        self.m.free_cache(cache)
    }
}

/// `prompts` generated as one batch (seed `i` for prompt `i`) equal each generated alone; the
/// model holds no cache afterwards.
fn batch_equals_alone(m: &mut Model, prompts: &[Vec<u32>], p: &GenParams, what: &str) {
    let batch: Vec<(&[u32], &[u32])> = prompts.iter().map(|p| (p.as_slice(), &[][..])).collect();
    let seeds: Vec<u64> = (0..prompts.len() as u64).collect();
    let got = generate_batch_seeded(m, &batch, &seeds, p, &|| Box::new(Threshold(0.3)), |_| Flow::Continue).unwrap();
    assert_eq!(m.caches_held(), 0, "{what}");
    for (i, prompt) in prompts.iter().enumerate() {
        let alone = generate(m, prompt, &[], &GenParams { seed: seeds[i], ..p.clone() }, &mut Threshold(0.3), |_| Flow::Continue).unwrap();
        assert_eq!(got[i].canvas, alone.canvas, "{what}: prompt {i}");
    }
}

/// Prompts of different lengths (so different canvases and positions).
fn prompts() -> Vec<Vec<u32>> {
    vec![vec![1, 450, 2462], vec![1], vec![1, 3118, 338, 263, 1243], vec![1, 4997, 29889]]
}

#[test]
fn cached_sequences_in_one_pass_equal_each_alone() {
    for kind in [OutType::F16, OutType::Q8_0, OutType::Q4_0] {
        let (_tmp, file) = tiny_gqa_gguf(kind);
        let mut m = Model::load(&file, &LoadOptions::default()).unwrap();
        let prompts = prompts();
        let batch: Vec<(&[u32], &[u32])> = prompts.iter().map(|p| (p.as_slice(), &[][..])).collect();
        let seeds: Vec<u64> = (0..prompts.len() as u64).map(|i| 40 + i).collect();
        for cache in [Cache::Prefix, Cache::Dual] {
            let p = params(cache, 8, 24);
            let mut w = Watch { m: &mut m, widths: Vec::new(), stored_for: HashMap::new(), stores: 0 };
            let got = generate_batch_seeded(&mut w, &batch, &seeds, &p, &|| Box::new(Threshold(0.3)), |_| Flow::Continue).unwrap();
            let (widths, stores) = (w.widths.clone(), w.stores);
            assert!(widths.iter().any(|&n| n == prompts.len()), "{kind:?} {cache:?}: the cached sequences never shared a pass: {widths:?}");
            assert!(stores >= 3 * prompts.len(), "{kind:?} {cache:?}: a full pass per block and sequence ({stores})");
            assert_eq!(m.caches_held(), 0, "{kind:?} {cache:?}: every finished sequence's cache is freed");
            for (i, prompt) in prompts.iter().enumerate() {
                let own = GenParams { seed: seeds[i], ..p.clone() };
                let alone = generate(&mut m, prompt, &[], &own, &mut Threshold(0.3), |_| Flow::Continue).unwrap();
                assert_eq!(got[i].canvas, alone.canvas, "{kind:?} {cache:?}: prompt {i} batched vs alone");
                assert_eq!(got[i].steps, alone.steps, "{kind:?} {cache:?}: prompt {i}");
            }
            assert_eq!(m.caches_held(), 0);
        }
    }
}

/// Our wgpu backend (lavapipe in CI) keeps a cache per sequence too: batched equals alone.
#[cfg(feature = "wgpu")]
#[test]
fn on_wgpu_cached_sequences_batch_like_on_ggml() {
    if !common::have_adapter() {
        return;
    }
    let (_tmp, file) = tiny_gqa_gguf(OutType::Q8_0);
    let mut m = Model::load(&file, &LoadOptions { backend: dlm::Backend::Wgpu, ..Default::default() }).unwrap();
    assert_eq!(m.backend(), dlm::Backend::Wgpu);
    // Kept small: lavapipe runs a pass in tens of milliseconds.
    let prompts = &prompts()[..3];
    // With a window the canvas each cache holds changes length from block to block: caches
    // are reallocated while others are held.
    let window = dlm::generate::Prune { after_eos: false, window: Some(2) };
    for (cache, prune) in [(Cache::Prefix, Default::default()), (Cache::Dual, window)] {
        batch_equals_alone(&mut m, prompts, &GenParams { prune, ..params(cache, 4, 8) }, &format!("wgpu {cache:?} {prune:?}"));
    }
}

/// With pruning (a window of masks past the block, and the padding after a committed EOS) the
/// cached sequences still batch exactly: each pass computes a shorter canvas per sequence.
#[test]
fn pruned_cached_sequences_batch_like_alone() {
    let (_tmp, file) = tiny_gqa_gguf(OutType::Q8_0);
    let mut m = Model::load(&file, &LoadOptions::default()).unwrap();
    let prune = dlm::generate::Prune { after_eos: true, window: Some(4) };
    for cache in [Cache::None, Cache::Prefix, Cache::Dual] {
        batch_equals_alone(&mut m, &prompts(), &GenParams { prune, eos: Some(2), ..params(cache, 8, 24) }, &format!("{cache:?}"));
    }
}

/// A cache that is read: the batched prefix-cached answer of a model whose later passes see a
/// changed canvas differs from the exact answer for some prompt (else the equality above could
/// come from caches that are never used).
#[test]
fn the_caches_are_read() {
    let (_tmp, file) = tiny_gqa_gguf(OutType::Q8_0);
    let mut m = Model::load(&file, &LoadOptions::default()).unwrap();
    let prompts = prompts();
    let batch: Vec<(&[u32], &[u32])> = prompts.iter().map(|p| (p.as_slice(), &[][..])).collect();
    let seeds = vec![3u64; prompts.len()];
    let exact = generate_batch_seeded(&mut m, &batch, &seeds, &params(Cache::None, 8, 24), &|| Box::new(Threshold(0.3)), |_| Flow::Continue).unwrap();
    let dual = generate_batch_seeded(&mut m, &batch, &seeds, &params(Cache::Dual, 8, 24), &|| Box::new(Threshold(0.3)), |_| Flow::Continue).unwrap();
    assert!(exact.iter().zip(&dual).any(|(a, b)| a.canvas != b.canvas), "the dual cache changed no answer: is it read?");
}

/// A cancelled cached sequence and one whose pass fails leave the others going, each still
/// equal to its run alone, and their caches are freed.
#[test]
fn a_failed_or_cancelled_cached_sequence_leaves_the_others_alone() {
    let (_tmp, file) = tiny_gqa_gguf(OutType::Q4_0);
    let mut m = Model::load(&file, &LoadOptions::default()).unwrap();
    let p = params(Cache::Prefix, 6, 18);
    let mut engine = Engine::new();
    let good = [vec![1u32, 450, 2462], vec![1, 3118, 338]];
    let ids: Vec<u64> = good.iter().map(|g| engine.add(g, &[], p.clone(), UnmaskRule::Threshold.unmasker(0.3)).unwrap()).collect();
    let doomed = engine.add(&[1, 263], &[], p.clone(), UnmaskRule::Threshold.unmasker(0.3)).unwrap();
    // A token outside the vocabulary: the model refuses this sequence's pass.
    let bad = engine.add(&[1, 40_000], &[], p.clone(), UnmaskRule::Threshold.unmasker(0.3)).unwrap();
    let st = engine.step(&mut m).unwrap().unwrap();
    assert_eq!(st.failed.len(), 1, "{:?}", st.failed);
    assert_eq!(st.failed[0].0, bad);
    assert!(st.failed[0].1.to_string().contains("outside"), "{}", st.failed[0].1);
    assert_eq!(st.ran.len(), 3, "{:?}", st.ran);
    engine.step(&mut m).unwrap();
    assert_eq!(m.caches_held(), 3);
    engine.remove(doomed).expect("running");
    let mut results = HashMap::new();
    while let Some(st) = engine.step(&mut m).unwrap() {
        assert!(st.failed.is_empty(), "{:?}", st.failed);
        results.extend(st.finished);
    }
    assert_eq!(m.caches_held(), 0, "every cache freed");
    for (id, g) in ids.iter().zip(&good) {
        let alone = generate(&mut m, g, &[], &p, UnmaskRule::Threshold.unmasker(0.3).as_mut(), |_| Flow::Continue).unwrap();
        assert_eq!(results[id].canvas, alone.canvas);
    }
}
