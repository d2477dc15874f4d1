//! DiffuLLaMA's own rule ("origin" schedule of `generate_samples`): at step s of T, with
//! t = T − 1 − s, every still-masked position is committed independently with probability
//! 1/(t + 1); the last step (t = 0) commits everything left.

use super::{Scores, Candidate, Rng, Unmasker};

#[derive(Clone, Copy, Debug, Default)]
pub struct Origin;

impl Unmasker for Origin {
    fn select(&mut self, step: usize, steps: usize, cands: &[Candidate], rng: &mut Rng) -> Vec<usize> {
        origin_draws(step, steps, cands.len(), rng)
    }

    /// The draws need no logits: a step that commits nothing runs no forward pass, and one
    /// that commits some samples only those positions.
    fn select_blind(&mut self, step: usize, steps: usize, n: usize, rng: &mut Rng) -> Option<Vec<usize>> {
        Some(origin_draws(step, steps, n, rng))
    }

    fn scores(&self) -> Scores {
        Scores::NONE
    }
}

/// Which of `n` masked positions the origin rule commits at `step` of `steps`.
fn origin_draws(step: usize, steps: usize, n: usize, rng: &mut Rng) -> Vec<usize> {
    let t = steps.saturating_sub(step + 1);
    if t == 0 {
        return (0..n).collect();
    }
    let p = 1.0 / (t as f64 + 1.0);
    (0..n).filter(|_| rng.uniform() < p).collect()
}
