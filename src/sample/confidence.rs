//! Commit the k most confident positions (highest probability of the sampled token), k from a
//! linear schedule over the steps (LLaDA's "low-confidence remasking").

use super::{Scores, linear_quota, top_k_by, Candidate, Rng, Unmasker};

#[derive(Clone, Copy, Debug, Default)]
pub struct Confidence;

impl Unmasker for Confidence {
    fn select(&mut self, step: usize, steps: usize, cands: &[Candidate], _rng: &mut Rng) -> Vec<usize> {
        top_k_by(cands, linear_quota(step, steps, cands.len()), |c| c.confidence)
    }

    fn scores(&self) -> Scores {
        Scores { confidence: true, ..Scores::NONE }
    }
}
