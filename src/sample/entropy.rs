//! Commit the k positions whose predictive distribution has the lowest entropy (Dream's
//! "entropy" rule), k from a linear schedule over the steps.

use super::{Scores, linear_quota, top_k_by, Candidate, Rng, Unmasker};

#[derive(Clone, Copy, Debug, Default)]
pub struct Entropy;

impl Unmasker for Entropy {
    fn select(&mut self, step: usize, steps: usize, cands: &[Candidate], _rng: &mut Rng) -> Vec<usize> {
        top_k_by(cands, linear_quota(step, steps, cands.len()), |c| -c.entropy)
    }

    fn scores(&self) -> Scores {
        Scores { entropy: true, ..Scores::NONE }
    }
}
