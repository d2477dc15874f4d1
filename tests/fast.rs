//! The speed-ups of the sampling loop against the exact computation on the small model:
//! the LM head restricted to the rows the sampler reads, and the key/value cache passes.

mod common;

use common::tiny_gqa_gguf;
use dlm::generate::{generate, Cache, Flow, GenParams, Pass};
use dlm::sample::{Origin, Threshold, TokenSampler, Unmasker};
use dlm::{LoadOptions, Model};
use dlm_convert::OutType;

const V: usize = 32000;

fn canvas(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| if i == 0 { 1 } else if i % 4 == 0 || i > 20 { 811 } else { (i * 7919) % V as u32 }).collect()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn rows_of(all: &[f32], rows: &[usize]) -> Vec<f32> {
    rows.iter().flat_map(|&r| all[r * V..(r + 1) * V].iter().copied()).collect()
}

#[test]
fn restricted_lm_head_gives_the_same_rows() {
    for kind in [OutType::F32, OutType::Q4_0] {
        let (_tmp, file) = tiny_gqa_gguf(kind);
        let mut m = Model::load(&file, &LoadOptions::default()).unwrap();
        let toks = canvas(45);
        let all = m.forward(&toks).unwrap();
        // Unordered, repeated, and counts around the padding multiple of 16.
        for rows in [vec![44usize], vec![3, 0, 44, 3], (5..22).collect::<Vec<_>>(), (0..45).rev().collect()] {
            let got = m.forward_rows(&toks, Pass::Full, Some(&rows)).unwrap();
            let err = max_rel(&got, &rows_of(&all, &rows));
            assert!(err <= 1e-6, "{} rows {rows:?}: {err}", kind.name());
        }
        assert!(m.forward_rows(&toks, Pass::Full, Some(&[45])).is_err(), "row outside the sequence");
    }
}

#[test]
fn cache_passes_on_an_unchanged_canvas_equal_the_full_pass() {
    let (_tmp, file) = tiny_gqa_gguf(OutType::Q8_0);
    let mut m = Model::load(&file, &LoadOptions::default()).unwrap();
    let toks = canvas(50);
    assert!(m.forward_rows(&toks, Pass::Reuse { cache: 1, start: 10, end: 20 }, None).is_err(), "no cache yet");
    let stored = m.forward_rows(&toks, Pass::Store { cache: 1 }, None).unwrap();
    let all = m.forward(&toks).unwrap();
    assert!(max_rel(&stored, &all) <= 1e-6, "a storing pass computes the same logits");
    for (start, end) in [(10, 50), (10, 20), (0, 7), (49, 50)] {
        let rows: Vec<usize> = (start..end).collect();
        let got = m.forward_rows(&toks, Pass::Reuse { cache: 1, start, end }, None).unwrap();
        let err = max_rel(&got, &rows_of(&all, &rows));
        println!("reuse {start}..{end}: {err:.2e}");
        assert!(err <= 1e-5, "reuse {start}..{end} on the canvas the cache was made from: {err}");
        let some = [end - 1, start];
        let got = m.forward_rows(&toks, Pass::Reuse { cache: 1, start, end }, Some(&some)).unwrap();
        assert!(max_rel(&got, &rows_of(&all, &some)) <= 1e-5);
    }
    // Once the canvas changes outside the computed range, the cache is stale: the result is the
    // approximation, measurably different from the exact pass (the test can tell).
    let mut changed = toks.clone();
    changed[30] = 1234;
    let exact = m.forward(&changed).unwrap();
    let approx = m.forward_rows(&changed, Pass::Reuse { cache: 1, start: 10, end: 20 }, None).unwrap();
    let err = max_rel(&approx, &rows_of(&exact, &(10..20).collect::<Vec<_>>()));
    assert!(err > 1e-4, "a stale cache should show ({err})");
    assert!(m.forward_rows(&toks[..40], Pass::Reuse { cache: 1, start: 10, end: 20 }, None).is_err(), "cache is for 50 tokens");
    assert!(m.forward_rows(&toks, Pass::Reuse { cache: 1, start: 20, end: 20 }, None).is_err());
    assert!(m.forward_rows(&toks, Pass::Reuse { cache: 1, start: 10, end: 20 }, Some(&[25])).is_err(), "row not computed");
}

fn params(cache: Cache, full_lm_head: bool, block: Option<usize>, steps: usize) -> GenParams {
    GenParams {
        n_gen: 48,
        steps,
        block_length: block,
        sampler: TokenSampler { temp: 0.0, top_k: 0, top_p: 1.0, gumbel: false },
        seed: 7,
        mask_id: 811,
        shift_logits: true,
        eos: None,
        cache,
        full_lm_head,
        cfg_scale: 0.0,
        prune: Default::default(),
    }
}

fn run(m: &mut Model, p: &GenParams, rule: &mut dyn Unmasker) -> Vec<u32> {
    let g = generate(m, &[1, 450, 2462, 338], &[], p, rule, |_| Flow::Continue).unwrap();
    assert_eq!(g.tokens.len(), 48);
    assert!(!g.canvas.contains(&811), "every mask filled");
    assert_eq!(&g.canvas[..4], &[1, 450, 2462, 338]);
    g.canvas
}

#[test]
fn restricted_lm_head_generates_exactly_the_same_text() {
    let (_tmp, file) = tiny_gqa_gguf(OutType::Q4_0);
    let mut m = Model::load(&file, &LoadOptions::default()).unwrap();
    for block in [None, Some(16)] {
        let full = run(&mut m, &params(Cache::None, true, block, 12), &mut Origin);
        let fast = run(&mut m, &params(Cache::None, false, block, 12), &mut Origin);
        assert_eq!(full, fast, "origin, block {block:?}");
        let full = run(&mut m, &params(Cache::None, true, block, 12), &mut Threshold(0.05));
        let fast = run(&mut m, &params(Cache::None, false, block, 12), &mut Threshold(0.05));
        assert_eq!(full, fast, "threshold, block {block:?}");
    }
}

#[test]
fn caches_refreshed_every_step_are_exact_and_stale_ones_still_complete() {
    let (_tmp, file) = tiny_gqa_gguf(OutType::Q8_0);
    let mut m = Model::load(&file, &LoadOptions::default()).unwrap();
    // One step per block: every step is a storing full pass, so the result is the exact one.
    let exact = run(&mut m, &params(Cache::None, false, Some(16), 3), &mut Origin);
    for cache in [Cache::Prefix, Cache::Dual] {
        assert_eq!(run(&mut m, &params(cache, false, Some(16), 3), &mut Origin), exact, "{cache:?}");
    }
    // Several steps per block: the approximation; report how close it stays.
    let exact = run(&mut m, &params(Cache::None, false, Some(16), 24), &mut Origin);
    for cache in [Cache::Prefix, Cache::Dual] {
        let got = run(&mut m, &params(cache, false, Some(16), 24), &mut Origin);
        let same = got.iter().zip(&exact).skip(4).filter(|(a, b)| a == b).count();
        println!("{cache:?}: {same}/48 tokens as the exact run (greedy, random weights)");
    }
}

#[test]
fn cached_graphs_survive_the_switch_between_storing_and_reusing_passes() {
    // Prefix-cache block decoding alternates a storing full pass (the same graph every block)
    // with reusing passes (a graph per block): with one graph kept, every switch rebuilds; with
    // the default few, the storing graph stays planned. The text is the same either way.
    let (_tmp, file) = tiny_gqa_gguf(OutType::Q8_0);
    let p = params(Cache::Prefix, false, Some(16), 24);
    let mut built = Vec::new();
    let mut texts = Vec::new();
    for max_graphs in [1, dlm::graph::PlanCache::<()>::DEFAULT_CAPACITY] {
        let mut m = Model::load(&file, &LoadOptions { max_graphs, ..Default::default() }).unwrap();
        let before = m.graphs_built();
        texts.push(run(&mut m, &p, &mut Origin));
        built.push(m.graphs_built() - before);
    }
    println!("graphs planned for 3 blocks of prefix-cache decoding: {} keeping one, {} keeping {}", built[0], built[1], dlm::graph::PlanCache::<()>::DEFAULT_CAPACITY);
    assert_eq!(texts[0], texts[1], "which plans are kept changes nothing computed");
    assert!(built[0] >= 6, "one graph kept: a rebuild at every switch, two per block ({})", built[0]);
    assert!(built[1] < built[0], "kept graphs are reused ({} vs {})", built[1], built[0]);
}
