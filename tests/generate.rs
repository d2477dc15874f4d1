//! The canvas loop with a fake model whose logits are known exactly, so every decision of the
//! loop (logit shift, fixed prefix/suffix, schedules, EOS, blocks, seeds) can be checked.

use dlm::generate::{generate, Event, Flow, Forward, GenParams};
use dlm::sample::{Confidence, Entropy, Margin, Origin, Threshold, TokenSampler, Unmasker};
use dlm::Result;

const V: usize = 64;
const MASK: u32 = 63;

/// Row i prefers token `10 + i` with logit `sharp`, everything else 0.
struct ByPosition {
    sharp: f32,
    calls: usize,
}

impl Forward for ByPosition {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.calls += 1;
        let mut l = vec![0f32; tokens.len() * V];
        for i in 0..tokens.len() {
            l[i * V + 10 + i] = self.sharp;
        }
        Ok(l)
    }
    fn n_vocab(&self) -> usize {
        V
    }
}

fn params(n_gen: usize, steps: usize, shift: bool) -> GenParams {
    GenParams {
        n_gen,
        steps,
        block_length: None,
        sampler: TokenSampler { temp: 0.0, top_k: 0, top_p: 1.0, gumbel: false },
        seed: 1,
        mask_id: MASK,
        shift_logits: shift,
        eos: None,
        cache: Default::default(),
        full_lm_head: false,
        cfg_scale: 0.0,
        prune: Default::default(),
    }
}

fn run(p: &GenParams, rule: &mut dyn Unmasker, sharp: f32) -> (dlm::generate::Generation, Vec<Vec<bool>>, usize) {
    let mut m = ByPosition { sharp, calls: 0 };
    let mut masks = Vec::new();
    let g = generate(&mut m, &[1, 2, 3], &[4, 5], p, rule, |Event::Step { masked, .. }| {
        masks.push(masked.to_vec());
        Flow::Continue
    })
    .unwrap();
    (g, masks, m.calls)
}

#[test]
fn shift_reads_the_previous_row_and_fixed_positions_stay() {
    for shift in [false, true] {
        for rule in [&mut Origin as &mut dyn Unmasker, &mut Confidence, &mut Margin, &mut Entropy, &mut Threshold(0.9)] {
            let (g, _, _) = run(&params(8, 4, shift), rule, 5.0);
            assert_eq!(&g.canvas[..3], &[1, 2, 3]);
            assert_eq!(&g.canvas[11..], &[4, 5]);
            let want: Vec<u32> = (3..11).map(|p| 10 + p as u32 - u32::from(shift)).collect();
            assert_eq!(g.tokens, want, "shift={shift}");
        }
    }
}

#[test]
fn ranked_rules_follow_the_linear_schedule() {
    let (g, masks, calls) = run(&params(10, 4, true), &mut Confidence, 5.0);
    assert_eq!((g.steps, calls), (4, 4));
    let left: Vec<usize> = masks.iter().map(|m| m.iter().filter(|&&x| x).count()).collect();
    assert_eq!(left, vec![7, 4, 2, 0]);
}

#[test]
fn origin_commits_everything_by_the_last_step_with_about_1_over_t_plus_1() {
    // Step s of T commits each masked position with probability 1/(T - s): with T = 2, about
    // half at the first step, the rest at the second.
    let mut first = 0usize;
    for seed in 0..200 {
        let mut p = params(20, 2, true);
        p.seed = seed;
        let (g, masks, _) = run(&p, &mut Origin, 5.0);
        assert!(masks.last().unwrap().iter().all(|&m| !m));
        assert_eq!(g.tokens.len(), 20);
        first += 20 - masks[0].iter().filter(|&&m| m).count();
    }
    let rate = first as f64 / 4000.0;
    assert!((rate - 0.5).abs() < 0.03, "{rate}");
}

#[test]
fn threshold_takes_fewer_steps_when_the_model_is_sure() {
    let (g, _, _) = run(&params(10, 10, true), &mut Threshold(0.9), 20.0); // p ≈ 1
    assert_eq!(g.steps, 1);
    let (g, _, _) = run(&params(10, 10, true), &mut Threshold(0.9), 1.0); // p ≈ 0.04: one per step
    assert_eq!(g.steps, 10);
}

#[test]
fn eos_finalizes_what_follows_it() {
    let mut p = params(8, 8, true);
    p.eos = Some(10 + 5 - 1); // the token predicted for canvas position 5 (shifted)
    let (g, _, _) = run(&p, &mut Confidence, 5.0);
    assert_eq!(g.tokens, vec![12, 13]);
    assert!(g.canvas[5..11].iter().all(|&t| t == 14));
}

#[test]
fn blocks_unmask_left_to_right() {
    let mut p = params(10, 6, true);
    p.block_length = Some(4);
    let (g, masks, _) = run(&p, &mut Confidence, 5.0);
    assert_eq!(g.steps, 6, "3 blocks of 2 steps");
    for (s, m) in masks.iter().enumerate() {
        let block = s / 2;
        let done_until = 3 + 4 * block;
        assert!(m[3..done_until].iter().all(|&x| !x), "earlier blocks are finished at step {s}");
        assert!(m[(done_until + 4).min(13)..13].iter().all(|&x| x), "later blocks untouched at step {s}");
    }
}

#[test]
fn seeds_reproduce_and_differ() {
    let mut p = params(16, 4, true);
    p.sampler = TokenSampler { temp: 1.0, top_k: 0, top_p: 1.0, gumbel: false };
    let a = run(&p, &mut Origin, 0.5).0.tokens;
    assert_eq!(a, run(&p, &mut Origin, 0.5).0.tokens);
    p.seed = 2;
    assert_ne!(a, run(&p, &mut Origin, 0.5).0.tokens);
}

#[test]
fn stop_and_bad_parameters() {
    let mut m = ByPosition { sharp: 5.0, calls: 0 };
    let p = params(8, 8, true);
    let g = generate(&mut m, &[1], &[], &p, &mut Confidence, |_| Flow::Stop).unwrap();
    assert_eq!(g.steps, 1);
    assert!(generate(&mut m, &[], &[], &p, &mut Confidence, |_| Flow::Continue).is_err(), "shift needs a prefix");
    assert!(generate(&mut m, &[1], &[], &params(0, 8, true), &mut Confidence, |_| Flow::Continue).is_err());
}

/// Logits as an exact integer formula of the canvas (mirrored in tests/ref_sampler.py).
struct Formula;

impl Forward for Formula {
    fn forward(&mut self, x: &[u32]) -> Result<Vec<f32>> {
        let v = 50usize;
        Ok((0..x.len() * v)
            .map(|k| {
                let (i, t) = (k / v, k % v);
                ((x[i] as usize * 31 + t * 17 + i * 7) % 97) as f32 / 97.0 * 4.0 - 2.0
            })
            .collect())
    }
    fn n_vocab(&self) -> usize {
        50
    }
}

#[test]
fn origin_reproduces_the_reference_generate_samples_step_for_step() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for (seed, n_gen, steps) in [(3u64, 6usize, 4usize), (11, 24, 64), (5, 40, 8), (9, 12, 12)] {
        let prefix = [1u32, 5, 9];
        let p = GenParams {
            n_gen,
            steps,
            block_length: None,
            sampler: TokenSampler { temp: 0.9, top_k: 0, top_p: 0.9, gumbel: false },
            seed,
            mask_id: 49,
            shift_logits: true,
            eos: None,
            cache: Default::default(),
            full_lm_head: false,
            cfg_scale: 0.0,
            prune: Default::default(),
        };
        let mut ours = Vec::new();
        let g = generate(&mut Formula, &prefix, &[], &p, &mut Origin, |Event::Step { canvas, .. }| {
            ours.push(canvas.to_vec());
            Flow::Continue
        })
        .unwrap();
        let args = serde_json::json!({"prefix": prefix, "n_gen": n_gen, "steps": steps, "mask": 49, "vocab": 50,
                                      "temp": 0.9, "top_p": 0.9, "seed": seed});
        let out = std::process::Command::new("python3")
            .args(["tests/ref_sampler.py", &args.to_string()])
            .current_dir(root)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let all: Vec<Vec<u32>> = serde_json::from_value(r["steps"].clone()).unwrap();
        // A step that commits nothing runs no forward pass here (the draws are the same): the
        // reference's steps that committed nothing are not in ours.
        let committed: Vec<usize> = serde_json::from_value(r["committed"].clone()).unwrap();
        assert_eq!(committed.len(), all.len());
        let theirs: Vec<Vec<u32>> = all.iter().zip(&committed).filter(|(_, &n)| n > 0).map(|(c, _)| c.clone()).collect();
        assert_eq!(ours.len(), theirs.len(), "seed {seed}: number of steps that commit ({} in all)", all.len());
        for (s, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a, b, "seed {seed}, step {s}");
        }
        assert_eq!(serde_json::to_value(&g.canvas).unwrap(), r["final"], "seed {seed}");
        checked += all.len();
    }
    assert!(checked > 60, "{checked} reference steps covered");
}

/// Row i prefers token `10 + i`, except row `eos_row`, which prefers EOS (2) with certainty;
/// records the length of every pass's tokens.
struct EosAt {
    eos_row: usize,
    lens: Vec<usize>,
}

impl Forward for EosAt {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.lens.push(tokens.len());
        let mut l = vec![0f32; tokens.len() * V];
        for i in 0..tokens.len() {
            if i == self.eos_row {
                l[i * V + 2] = 40.0;
            } else {
                l[i * V + 10 + (i % 40)] = 2.0;
            }
        }
        Ok(l)
    }
    fn n_vocab(&self) -> usize {
        V
    }
}

/// Pruning leaves out what it says and nothing else: after a committed EOS the passes stop at
/// it; with a window, no pass reaches more than that many positions past the current block; a
/// canvas with a suffix is never pruned; a window past the canvas changes nothing.
#[test]
fn pruning_leaves_out_the_padding_and_far_future_masks() {
    use dlm::generate::Prune;
    // BOS + 24 masks; with shift, position p reads row p - 1: EOS lands at position 5.
    let base = GenParams { eos: Some(2), block_length: Some(8), ..params(24, 24, true) };
    let run = |p: &GenParams, suffix: &[u32]| {
        let mut m = EosAt { eos_row: 4, lens: Vec::new() };
        let g = generate(&mut m, &[1], suffix, p, &mut Confidence, |_| Flow::Continue).unwrap();
        (g, m.lens)
    };
    let (exact, exact_lens) = run(&base, &[]);
    assert!(exact_lens.iter().all(|&n| n == 25), "{exact_lens:?}");
    assert_eq!(exact.canvas[5], 2, "EOS committed at position 5");
    assert_eq!(exact_lens.len(), 5, "one pass commits EOS, four the positions before it");

    // After EOS: its pass sees everything, the later ones stop at it.
    let eos = GenParams { prune: Prune { after_eos: true, window: None }, ..base.clone() };
    let (g, lens) = run(&eos, &[]);
    assert_eq!(g.canvas, exact.canvas, "this model's rows do not depend on the pruned positions");
    assert_eq!(lens, [25, 6, 6, 6, 6]);
    let (_, lens) = run(&GenParams { block_length: None, ..eos.clone() }, &[]);
    assert_eq!(lens, [25, 6, 6, 6, 6], "one block");

    // A window of 3 masked positions after the block: the first block's passes see 1 + 8 + 3.
    // Without EOS, the three blocks' passes see 12, 20 and all 25 positions.
    let window = GenParams { prune: Prune { after_eos: false, window: Some(3) }, eos: None, ..base.clone() };
    let (_, lens) = run(&window, &[]);
    let mut seen = lens.clone();
    seen.dedup();
    assert_eq!(seen, [12, 20, 25], "{lens:?}");
    // Past the canvas: nothing pruned, the same answer.
    let wide = GenParams { prune: Prune { after_eos: true, window: Some(100) }, block_length: None, eos: None, ..base.clone() };
    let (g, lens) = run(&wide, &[]);
    let (plain, _) = run(&GenParams { block_length: None, eos: None, ..base.clone() }, &[]);
    assert_eq!(g.canvas, plain.canvas);
    assert!(lens.iter().all(|&n| n == 25), "{lens:?}");
    // Infilling keeps every position.
    let (_, lens) = run(&eos, &[40, 41]);
    assert!(lens.iter().all(|&n| n == 27), "{lens:?}");
}
