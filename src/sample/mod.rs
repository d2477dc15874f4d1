//! Sampling: which token each masked position would take ([`TokenSampler`]) and which positions
//! to commit this step ([`Unmasker`], one file per rule).
//!
//! Samplers never see a backend: they get logits rows and return decisions. All randomness
//! comes from one seeded [`Rng`] passed in explicitly, so the same seed gives the same canvas.

mod candidates;
mod confidence;
mod entropy;
mod margin;
mod origin;
mod random;
pub mod reference;
mod timestep;
mod token;
mod threshold;

pub use candidates::RowCandidates;
pub use confidence::Confidence;
pub use entropy::Entropy;
pub use margin::Margin;
pub use origin::Origin;
pub use random::Random;
pub use timestep::{sample_by_score, timestep_quota, Timestep};
pub use threshold::Threshold;
pub use token::{Scores, TokenSampler};

/// xoshiro256** seeded through splitmix64: small, fast, and identical on every platform.
#[derive(Clone, Debug)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// An independent stream for (`seed`, `step`, `position`): token draws then do not depend on
    /// which positions are sampled, in which order, or on how many threads.
    pub fn for_position(seed: u64, step: u64, position: u64) -> Rng {
        Rng::new(seed ^ step.wrapping_mul(0xA24B_AED4_963E_E407) ^ position.wrapping_mul(0x9FB2_1C65_1E98_DF25))
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller; one of the pair).
    pub fn normal(&mut self) -> f64 {
        let (a, b) = (self.uniform().max(f64::MIN_POSITIVE), self.uniform());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }
}

/// What one masked position would become, with the scores the unmasking rules rank by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub token: u32,
    /// Probability of `token` under the sampling distribution.
    pub confidence: f32,
    /// Top-1 minus top-2 probability.
    pub margin: f32,
    /// Entropy of the distribution (nats).
    pub entropy: f32,
}

/// What a greedy step needs of one logits row, reduced where the logits are
/// ([`crate::graph::Ops::row_stats`]): so a GPU sends 20 bytes per masked position to the host,
/// not the whole row. Greedy decoding only (temperature 0): a sampled draw needs the row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowStats {
    /// The lowest id of the largest logit.
    pub token: u32,
    /// `Σ exp(x − max)`: at least 1 for a finite row (NaN, infinite or −1 otherwise).
    pub z: f32,
    /// `Σ exp(x − max)·(x − max)`.
    pub s: f32,
    /// The second-largest logit minus the largest: 0 when the maximum is tied, −1e30 (or less)
    /// when the row has one entry.
    pub second: f32,
}

impl RowStats {
    /// From the backend's 5 values per row (see [`crate::graph::Ops::row_stats`]).
    pub fn parse(raw: &[f32], n_vocab: usize) -> Vec<RowStats> {
        raw.chunks_exact(5)
            .map(|r| {
                let at_max = n_vocab as f32 - r[4];
                RowStats {
                    token: (n_vocab as f32 - r[0]).max(0.0) as u32,
                    z: r[1],
                    s: r[2],
                    second: if at_max >= 2.0 { 0.0 } else { r[3] },
                }
            })
            .collect()
    }

    /// Whether the row was finite (the statistics of a NaN or infinite logit are not numbers).
    pub fn is_finite(&self) -> bool {
        self.z.is_finite() && self.z >= 1.0 && self.s.is_finite()
    }

    /// The greedy candidate. The token is the lowest id of the largest logit: the
    /// [`TokenSampler`]'s at temperature 0, which takes the lowest id of the largest rounded
    /// probability, except where two logits are within rounding of each other. The scores are
    /// the exact ones up to f32 rounding (the host sampler's f32 sum in id order can be up to
    /// ~1e-3 further off: see README "Token sampler").
    pub fn candidate(&self) -> Candidate {
        let confidence = 1.0 / self.z;
        Candidate {
            token: self.token,
            confidence,
            margin: (1.0 - self.second.exp()) * confidence,
            entropy: (self.z.ln() - self.s * confidence).max(0.0),
        }
    }
}

/// Decides which masked positions to commit at a step.
pub trait Unmasker {
    /// `cands[i]` is the candidate for the i-th still-masked position (in canvas order);
    /// `step` counts from 0 and `steps` is the budget for the current block. Returns indices
    /// into `cands`. On the last step of a block every remaining position must be returned.
    fn select(&mut self, step: usize, steps: usize, cands: &[Candidate], rng: &mut Rng) -> Vec<usize>;

    /// For a rule whose choice does not depend on the logits: the positions (indices among the
    /// `n` masked ones) it commits, drawn exactly as [`Unmasker::select`] would draw them.
    /// The canvas loop then runs no forward pass for a step that commits nothing and samples
    /// only the chosen positions. `None` (the default): the rule needs the candidates.
    fn select_blind(&mut self, step: usize, steps: usize, n: usize, rng: &mut Rng) -> Option<Vec<usize>> {
        let _ = (step, steps, n, rng);
        None
    }

    /// Which candidate scores [`Unmasker::select`] reads; the sampler skips the others (they are
    /// NaN). The default: all of them.
    fn scores(&self) -> Scores {
        Scores::ALL
    }
}

/// A borrowed rule is a rule (so `generate` can hand the caller's to the engine).
impl<U: Unmasker + ?Sized> Unmasker for &mut U {
    fn select(&mut self, step: usize, steps: usize, cands: &[Candidate], rng: &mut Rng) -> Vec<usize> {
        (**self).select(step, steps, cands, rng)
    }
    fn select_blind(&mut self, step: usize, steps: usize, n: usize, rng: &mut Rng) -> Option<Vec<usize>> {
        (**self).select_blind(step, steps, n, rng)
    }
    fn scores(&self) -> Scores {
        (**self).scores()
    }
}

/// The unmasking rules by name, for defaults and flags (`--unmask`: each value's `help` is what
/// `--help` shows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UnmaskRule {
    /// [`Origin`]: DiffuLLaMA's own, each masked position committed with probability 1/(t+1).
    #[value(help = "DiffuLLaMA's own: each masked position is committed with probability 1/(t+1)")]
    Origin,
    /// [`Confidence`]: the k most confident positions per step (LLaDA's low-confidence remasking).
    #[value(help = "the k most confident positions per step (linear schedule)")]
    Confidence,
    /// [`Margin`]: the k largest top-1 − top-2 margins.
    #[value(help = "the k positions with the largest top-1 − top-2 margin")]
    Margin,
    /// [`Entropy`]: the k lowest entropies (Dream's default order).
    #[value(help = "the k positions with the lowest entropy")]
    Entropy,
    /// [`Threshold`]: every position at or above a confidence threshold, at least one (Fast-dLLM).
    #[value(help = "every position with confidence ≥ --threshold, at least one (Fast-dLLM); steps adapt")]
    Threshold,
    /// [`Random`]: k positions chosen uniformly at random.
    #[value(help = "k positions chosen at random per step (linear schedule; llama.cpp's algorithm 3)")]
    Random,
}

impl UnmaskRule {
    /// The rule of llama.cpp's `--diffusion-algorithm N` (0 ORIGIN, 1 ENTROPY, 2 MARGIN,
    /// 3 RANDOM, 4 CONFIDENCE).
    pub fn from_llama_cpp(n: u8) -> Option<UnmaskRule> {
        Some(match n {
            0 => UnmaskRule::Origin,
            1 => UnmaskRule::Entropy,
            2 => UnmaskRule::Margin,
            3 => UnmaskRule::Random,
            4 => UnmaskRule::Confidence,
            _ => return None,
        })
    }

    /// The rule's flag value (`--unmask`).
    pub fn name(self) -> &'static str {
        match self {
            UnmaskRule::Origin => "origin",
            UnmaskRule::Confidence => "confidence",
            UnmaskRule::Margin => "margin",
            UnmaskRule::Entropy => "entropy",
            UnmaskRule::Threshold => "threshold",
            UnmaskRule::Random => "random",
        }
    }

    /// A fresh unmasker of this rule on Dream's timestep schedule ([`Timestep`], with its
    /// `alg_temp`) when `eps` is given and the rule ranks positions (confidence, margin, entropy,
    /// random); else as [`UnmaskRule::unmasker`].
    pub fn unmasker_with(self, threshold: f32, eps: Option<f32>, alg_temp: Option<f32>) -> Box<dyn Unmasker> {
        match (eps, self) {
            (Some(eps), UnmaskRule::Confidence | UnmaskRule::Margin | UnmaskRule::Entropy | UnmaskRule::Random) => Box::new(Timestep { eps, order: self, alg_temp }),
            _ => self.unmasker(threshold),
        }
    }

    /// A fresh unmasker of this rule (`threshold` is used by [`UnmaskRule::Threshold`] only).
    pub fn unmasker(self, threshold: f32) -> Box<dyn Unmasker> {
        match self {
            UnmaskRule::Origin => Box::new(Origin),
            UnmaskRule::Confidence => Box::new(Confidence),
            UnmaskRule::Margin => Box::new(Margin),
            UnmaskRule::Entropy => Box::new(Entropy),
            UnmaskRule::Threshold => Box::new(Threshold(threshold)),
            UnmaskRule::Random => Box::new(Random),
        }
    }
}

/// How many positions a linear schedule commits at `step` of `steps` when `remaining` are masked:
/// the rest split evenly over the steps left, at least one.
pub fn linear_quota(step: usize, steps: usize, remaining: usize) -> usize {
    let left = steps.saturating_sub(step).max(1);
    remaining.div_ceil(left).clamp(1.min(remaining), remaining)
}

/// The `k` highest-scoring candidates (ties to the leftmost position).
pub fn top_k_by(cands: &[Candidate], k: usize, score: impl Fn(&Candidate) -> f32) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..cands.len()).collect();
    idx.sort_by(|&a, &b| score(&cands[b]).total_cmp(&score(&cands[a])).then(a.cmp(&b)));
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_uniform() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<f64> = (0..10_000).map(|_| a.uniform()).collect();
        assert!(xs.iter().all(|&x| x == b.uniform() && (0.0..1.0).contains(&x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert_ne!(Rng::new(8).next_u64(), Rng::new(7).next_u64());
    }

    #[test]
    fn greedy_scores_and_truncation() {
        let logits = [0.0f32, 2.0, 1.0, -1.0];
        let mut rng = Rng::new(1);
        let c = TokenSampler { temp: 0.0, top_k: 0, top_p: 1.0, gumbel: false }.sample(&logits, &mut rng);
        let z: f32 = logits.iter().map(|x| x.exp()).sum();
        assert_eq!(c.token, 1);
        assert!((c.confidence - 2f32.exp() / z).abs() < 1e-6);
        assert!((c.margin - (2f32.exp() - 1f32.exp()) / z).abs() < 1e-6);
        // top-k 1 and a tiny top-p are greedy too, whatever the temperature.
        for s in [TokenSampler { temp: 5.0, top_k: 1, top_p: 1.0, gumbel: false }, TokenSampler { temp: 0.9, top_k: 0, top_p: 0.01, gumbel: false }] {
            assert!((0..200).all(|_| s.sample(&logits, &mut rng).token == 1));
        }
        // top-p 0.9 at temperature 1 keeps tokens 1, 2, 0 (mass 0.665+0.245+0.09 > 0.9): never 3.
        let s = TokenSampler { temp: 1.0, top_k: 0, top_p: 0.9, gumbel: false };
        let mut seen = [0usize; 4];
        (0..4000).for_each(|_| seen[s.sample(&logits, &mut rng).token as usize] += 1);
        assert_eq!(seen[3], 0, "{seen:?}");
        assert!(seen[1] > seen[2] && seen[2] > seen[0] && seen[0] > 0, "{seen:?}");
    }

    #[test]
    fn gumbel_draws_from_the_whole_tempered_softmax_and_scores_the_plain_one() {
        let logits = [0.0f32, 2.0, 1.0, -1.0];
        let mut rng = Rng::new(3);
        // Top-p 0.5 would keep token 1 alone; Gumbel sampling ignores it and draws from
        // softmax(logits / 2) over all four tokens.
        let s = TokenSampler { temp: 2.0, top_k: 0, top_p: 0.5, gumbel: true };
        let hot: Vec<f64> = logits.iter().map(|&x| (x as f64 / 2.0).exp()).collect();
        let z: f64 = hot.iter().sum();
        let n = 20_000;
        let mut seen = [0usize; 4];
        let plain_z: f32 = logits.iter().map(|x| x.exp()).sum();
        for _ in 0..n {
            let c = s.sample(&logits, &mut rng);
            seen[c.token as usize] += 1;
            // The confidence is the token's probability under the plain softmax.
            assert!((c.confidence - logits[c.token as usize].exp() / plain_z).abs() < 1e-6);
        }
        for i in 0..4 {
            let want = hot[i] / z;
            let sd = (want * (1.0 - want) / n as f64).sqrt();
            assert!((seen[i] as f64 / n as f64 - want).abs() < 4.0 * sd, "{seen:?} vs {want}");
        }
        // At temperature 0 it is greedy, like the plain sampler.
        assert_eq!(TokenSampler { temp: 0.0, top_k: 0, top_p: 1.0, gumbel: true }.sample(&logits, &mut rng).token, 1);
    }

    #[test]
    fn linear_quota_spreads_the_rest() {
        let mut remaining = 10;
        let mut per_step = Vec::new();
        for step in 0..4 {
            let k = linear_quota(step, 4, remaining);
            per_step.push(k);
            remaining -= k;
        }
        assert_eq!(per_step, vec![3, 3, 2, 2]);
        assert_eq!(linear_quota(3, 4, 5), 5, "the last step takes all");
    }
}
