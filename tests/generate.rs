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
        sampler: TokenSampler { temp: 0.0, top_k: 0, top_p: 1.0 },
        seed: 1,
        mask_id: MASK,
        shift_logits: shift,
        eos: None,
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
    p.sampler = TokenSampler { temp: 1.0, top_k: 0, top_p: 1.0 };
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
