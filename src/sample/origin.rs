//! DiffuLLaMA's own rule ("origin" schedule of `generate_samples`): at step s of T, with
//! t = T − 1 − s, every still-masked position is committed independently with probability
//! 1/(t + 1); the last step (t = 0) commits everything left.

use super::{Candidate, Rng, Unmasker};

#[derive(Clone, Copy, Debug, Default)]
pub struct Origin;

impl Unmasker for Origin {
    fn select(&mut self, step: usize, steps: usize, cands: &[Candidate], rng: &mut Rng) -> Vec<usize> {
        let t = steps.saturating_sub(step + 1);
        if t == 0 {
            return (0..cands.len()).collect();
        }
        let p = 1.0 / (t as f64 + 1.0);
        (0..cands.len()).filter(|_| rng.uniform() < p).collect()
    }
}
