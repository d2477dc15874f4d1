//! Dream's timestep schedule (llama-diffusion-cli's `--diffusion-eps`): time runs from 1 down to
//! `eps` over the steps; at step i of T, with t = 1 − i/T·(1 − eps) and s = 1 − (i+1)/T·(1 − eps),
//! a fraction 1 − s/t of the masked positions is committed (all of them at the last step),
//! rounded down, in the order of a ranking rule (confidence, margin, entropy, or random). Unlike
//! the linear schedule a step may commit nothing; more is committed late than early.

use super::random::random_subset;
use super::{top_k_by, Scores, Candidate, Rng, UnmaskRule, Unmasker};

#[derive(Clone, Copy, Debug)]
pub struct Timestep {
    /// Where time ends (0 < eps < 1; Dream uses 1e-3).
    pub eps: f32,
    /// Which positions go first: [`UnmaskRule::Confidence`], [`UnmaskRule::Margin`],
    /// [`UnmaskRule::Entropy`] or [`UnmaskRule::Random`].
    pub order: UnmaskRule,
    /// Dream's `alg_temp` (llama-diffusion-cli's `--diffusion-alg-temp`): instead of the
    /// highest-ranked positions, draw the step's positions without replacement with
    /// probabilities softmax(score / alg_temp). `None` (or 0): the highest-ranked, deterministic.
    pub alg_temp: Option<f32>,
}

/// `k` of the indices of `scores`, drawn one after another without replacement, each with
/// probability proportional to exp(score / temp) among those left; returned in ascending order.
pub fn sample_by_score(scores: &[f32], k: usize, temp: f32, rng: &mut Rng) -> Vec<usize> {
    if k >= scores.len() {
        return (0..scores.len()).collect(); // all of them, whatever the order of the draws
    }
    let mut left: Vec<usize> = (0..scores.len()).collect();
    let mut out = Vec::with_capacity(k);
    for _ in 0..k.min(scores.len()) {
        let max = left.iter().fold(f32::NEG_INFINITY, |m, &i| m.max(scores[i]));
        let weights: Vec<f64> = left.iter().map(|&i| (((scores[i] - max) / temp) as f64).exp()).collect();
        let mut u = rng.uniform() * weights.iter().sum::<f64>();
        let mut pick = left.len() - 1;
        for (j, w) in weights.iter().enumerate() {
            u -= w;
            if u < 0.0 {
                pick = j;
                break;
            }
        }
        out.push(left.swap_remove(pick));
    }
    out.sort_unstable();
    out
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
        let score = |c: &Candidate| match self.order {
            UnmaskRule::Margin => c.margin,
            UnmaskRule::Entropy => -c.entropy,
            _ => c.confidence,
        };
        if let Some(t) = self.alg_temp.filter(|&t| t > 0.0 && self.order != UnmaskRule::Random) {
            let scores: Vec<f32> = cands.iter().map(score).collect();
            return sample_by_score(&scores, k, t, rng);
        }
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

    fn scores(&self) -> Scores {
        match self.order {
            UnmaskRule::Margin => Scores { margin: true, ..Scores::NONE },
            UnmaskRule::Entropy => Scores { entropy: true, ..Scores::NONE },
            UnmaskRule::Random => Scores::NONE,
            _ => Scores { confidence: true, ..Scores::NONE },
        }
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

    #[test]
    fn alg_temp_draws_by_softmax_of_the_scores() {
        let scores = [0.0f32, (2f32).ln(), (4f32).ln(), -30.0];
        let mut rng = Rng::new(9);
        // One draw: probabilities 1:2:4:~0, so 1/7, 2/7, 4/7 (within 3 standard deviations).
        let mut seen = [0usize; 4];
        let n = 14_000;
        for _ in 0..n {
            seen[sample_by_score(&scores, 1, 1.0, &mut rng)[0]] += 1;
        }
        for (i, want) in [(0, 1.0 / 7.0), (1, 2.0 / 7.0), (2, 4.0 / 7.0)] {
            let sd = (want * (1.0 - want) / n as f64).sqrt();
            assert!((seen[i] as f64 / n as f64 - want).abs() < 3.0 * sd + 1e-3, "{seen:?}");
        }
        assert!(seen[3] <= 1, "{seen:?}");
        // Without replacement: k distinct indices, sorted; all of them when k = n.
        for k in 0..=4 {
            let got = sample_by_score(&scores, k, 0.5, &mut rng);
            assert_eq!(got.len(), k);
            assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        }
        // A small temperature is the deterministic ranking; a huge one is uniform-ish.
        assert!((0..50).all(|_| sample_by_score(&scores, 2, 1e-3, &mut rng) == vec![1, 2]));
        let cands: Vec<Candidate> = scores.iter().map(|&s| Candidate { token: 0, confidence: s.exp(), margin: 0.0, entropy: 0.0 }).collect();
        let mut t = Timestep { eps: 1e-3, order: UnmaskRule::Confidence, alg_temp: Some(1e-4) };
        assert_eq!(t.select(3, 4, &cands, &mut rng), vec![0, 1, 2, 3], "the last step commits all");
        let mut picks = std::collections::BTreeSet::new();
        let mut t = Timestep { eps: 0.5, order: UnmaskRule::Confidence, alg_temp: Some(10.0) };
        for _ in 0..200 {
            picks.extend(t.select(0, 2, &cands, &mut rng));
        }
        assert_eq!(picks.len(), 4, "a hot alg_temp reaches every position: {picks:?}");
    }
}
