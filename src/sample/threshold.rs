//! Fast-dLLM's parallel decoding: commit every position whose confidence is at least the
//! threshold, and at least the single most confident one, so the number of steps adapts to how
//! sure the model is. The step budget still bounds it: the last step commits everything left.

use super::{Scores, top_k_by, Candidate, Rng, Unmasker};

#[derive(Clone, Copy, Debug)]
pub struct Threshold(pub f32);

impl Unmasker for Threshold {
    fn select(&mut self, step: usize, steps: usize, cands: &[Candidate], _rng: &mut Rng) -> Vec<usize> {
        if step + 1 >= steps {
            return (0..cands.len()).collect();
        }
        let sure: Vec<usize> = (0..cands.len()).filter(|&i| cands[i].confidence >= self.0).collect();
        if sure.is_empty() {
            top_k_by(cands, 1, |c| c.confidence)
        } else {
            sure
        }
    }

    fn scores(&self) -> Scores {
        Scores { confidence: true, ..Scores::NONE }
    }
}
