//! Commit the k positions with the largest top-1 − top-2 probability margin (Dream's
//! "topk_margin"), k from a linear schedule over the steps.

use super::{Scores, linear_quota, top_k_by, Candidate, Rng, Unmasker};

#[derive(Clone, Copy, Debug, Default)]
pub struct Margin;

impl Unmasker for Margin {
    fn select(&mut self, step: usize, steps: usize, cands: &[Candidate], _rng: &mut Rng) -> Vec<usize> {
        top_k_by(cands, linear_quota(step, steps, cands.len()), |c| c.margin)
    }

    fn scores(&self) -> Scores {
        Scores { margin: true, ..Scores::NONE }
    }
}
