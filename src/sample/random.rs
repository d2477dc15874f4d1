//! Commit k positions chosen uniformly at random, k from a linear schedule over the steps
//! (llama.cpp's `--diffusion-algorithm 3`, LLaDA's "random remasking"). The choice needs no
//! logits, so a step samples only the positions it commits.

use super::{Scores, linear_quota, Candidate, Rng, Unmasker};

#[derive(Clone, Copy, Debug, Default)]
pub struct Random;

impl Unmasker for Random {
    fn select(&mut self, step: usize, steps: usize, cands: &[Candidate], rng: &mut Rng) -> Vec<usize> {
        random_draws(step, steps, cands.len(), rng)
    }

    fn select_blind(&mut self, step: usize, steps: usize, n: usize, rng: &mut Rng) -> Option<Vec<usize>> {
        Some(random_draws(step, steps, n, rng))
    }

    fn scores(&self) -> Scores {
        Scores::NONE
    }
}

/// `linear_quota` of the `n` masked positions, uniformly without replacement, in canvas order.
fn random_draws(step: usize, steps: usize, n: usize, rng: &mut Rng) -> Vec<usize> {
    random_subset(n, linear_quota(step, steps, n), rng)
}

/// `k` of `0..n`, uniformly without replacement, in ascending order.
pub(crate) fn random_subset(n: usize, k: usize, rng: &mut Rng) -> Vec<usize> {
    // A partial Fisher-Yates shuffle: the first k slots end up a uniform k-subset.
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = i + ((rng.uniform() * (n - i) as f64) as usize).min(n - i - 1);
        idx.swap(i, j);
    }
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_the_schedule_count_uniformly_and_everything_at_the_end() {
        let (n, steps) = (10usize, 4usize);
        let mut first = vec![0usize; n];
        for seed in 0..4000 {
            let mut rng = Rng::new(seed);
            let mut left = n;
            for step in 0..steps {
                let got = random_draws(step, steps, left, &mut rng);
                assert_eq!(got.len(), linear_quota(step, steps, left));
                assert!(got.windows(2).all(|w| w[0] < w[1]) && got.iter().all(|&i| i < left), "{got:?}");
                if step == 0 {
                    got.iter().for_each(|&i| first[i] += 1);
                }
                left -= got.len();
            }
            assert_eq!(left, 0, "the last step commits what is left");
        }
        // Step 0 commits 3 of 10: each position about 1200 times in 4000 runs (binomial sd ~29).
        let (lo, hi) = (first.iter().min().unwrap(), first.iter().max().unwrap());
        assert!(*lo > 1050 && *hi < 1350, "{first:?}");
    }
}
