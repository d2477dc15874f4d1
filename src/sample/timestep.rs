//! Dream's timestep schedule (llama-diffusion-cli's `--diffusion-eps`): time runs from 1 down to
//! `eps` over the steps; at step i of T, with t = 1 − i/T·(1 − eps) and s = 1 − (i+1)/T·(1 − eps),
//! a fraction 1 − s/t of the masked positions is committed (all of them at the last step),
//! rounded down, in the order of a ranking rule (confidence, margin, entropy, or random). Unlike
//! the linear schedule a step may commit nothing; more is committed late than early.

use super::random::random_subset;
use super::{top_k_by, Candidate, Rng, UnmaskRule, Unmasker};

#[derive(Clone, Copy, Debug)]
pub struct Timestep {
    /// Where time ends (0 < eps < 1; Dream uses 1e-3).
    pub eps: f32,
    /// Which positions go first: [`UnmaskRule::Confidence`], [`UnmaskRule::Margin`],
    /// [`UnmaskRule::Entropy`] or [`UnmaskRule::Random`].
    pub order: UnmaskRule,
}

/// How many of `n` masked positions step `step` of `steps` commits, as llama.cpp computes it
/// (in f32, truncated).
pub fn timestep_quota(step: usize, steps: usize, n: usize, eps: f32) -> usize {
    if step + 1 >= steps {
        return n;
    }
    let t = 1.0 - step as f32 / steps as f32 * (1.0 - eps);
    let s = 1.0 - (step + 1) as f32 / steps as f32 * (1.0 - eps);
    ((n as f32 * (1.0 - s / t)) as usize).min(n)
}

impl Unmasker for Timestep {
    fn select(&mut self, step: usize, steps: usize, cands: &[Candidate], rng: &mut Rng) -> Vec<usize> {
        let k = timestep_quota(step, steps, cands.len(), self.eps);
        match self.order {
            UnmaskRule::Margin => top_k_by(cands, k, |c| c.margin),
            UnmaskRule::Entropy => top_k_by(cands, k, |c| -c.entropy),
            UnmaskRule::Random => random_subset(cands.len(), k, rng),
            _ => top_k_by(cands, k, |c| c.confidence),
        }
    }

    fn select_blind(&mut self, step: usize, steps: usize, n: usize, rng: &mut Rng) -> Option<Vec<usize>> {
        (self.order == UnmaskRule::Random).then(|| random_subset(n, timestep_quota(step, steps, n, self.eps), rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_commits_everything_back_loaded() {
        for (n, steps, eps) in [(64usize, 16usize, 1e-3f32), (10, 4, 0.5), (7, 7, 1e-3), (100, 3, 0.9)] {
            let (mut left, mut taken) = (n, Vec::new());
            for step in 0..steps {
                let k = timestep_quota(step, steps, left, eps);
                // The fraction 1 − s/t, in f64: the f32 count is its truncation (±1 for rounding).
                let t = 1.0 - step as f64 / steps as f64 * (1.0 - eps as f64);
                let s = 1.0 - (step + 1) as f64 / steps as f64 * (1.0 - eps as f64);
                let want = if step + 1 == steps { left as f64 } else { (left as f64 * (1.0 - s / t)).floor() };
                assert!((k as f64 - want).abs() <= 1.0, "n {n} steps {steps} eps {eps} step {step}: {k} vs {want}");
                taken.push(k);
                left -= k;
            }
            assert_eq!(left, 0, "the last step commits what is left");
            // Back-loaded: the first half of the steps commits less than the second.
            let half: usize = taken[..steps / 2].iter().sum();
            assert!(half * 2 <= n, "{taken:?}");
        }
        // With eps near 0 the fraction is just under 1/(steps − step), so the count is the
        // linear schedule's rounded down, and an exact multiple lands one lower (as in llama.cpp).
        assert_eq!(timestep_quota(0, 4, 10, 1e-6), 2);
        assert_eq!(timestep_quota(2, 4, 6, 1e-6), 2);
        assert_eq!(timestep_quota(2, 4, 7, 1e-6), 3);
    }
}
