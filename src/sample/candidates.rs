//! Sampled steps from a row reduced where the logits are ([`crate::graph::Ops::row_candidates`]):
//! the row's statistics at the sampling temperature and its `k` largest logits with their ids,
//! instead of the whole vocabulary.
//!
//! A draw from these is certified or refused, never guessed. Every id that did not come back
//! has a logit at most the smallest one that did, so its probability is at most that one's: the
//! returned probabilities are the row's largest, as a multiset. They decide how many ids top-k
//! and top-p keep and the mass the walk goes through, whichever ids hold equal values. The draw
//! is taken here when those fall within the returned values and the id it lands on has a
//! probability strictly above the smallest returned one (so every id of that probability came
//! back, and they sort by id as on the host). Otherwise [`TokenSampler::sample_candidates`] says
//! `None` and the caller samples the full row (the logits stay on the device for that:
//! [`crate::graph::Engine::read_kept`]).
//!
//! What differs from the host sampler on the full row: the softmax denominator comes from the
//! device (an exact sum up to f32 rounding, where the host's f32 sum in id order can be ~1e-3
//! low at high temperatures: README "Token sampler"). So probabilities differ in their last
//! bits, or by that much: a draw whose uniform lands that close to a boundary between two
//! tokens can take the other one, two near-equal probabilities can round equal under one
//! denominator and not the other (their ids then swap places in the order), and the host's
//! top-p cut can fall one id earlier. Equality with the host path is therefore statistical
//! (tested on many rows and seeds); with the device's denominator a certified draw is the host
//! algorithm's exactly.

use super::{Candidate, Rng, RowStats, Scores, TokenSampler};

/// One row's reduction for a sampled step: statistics at the sampling temperature and the `k`
/// largest logits (raw, not scaled) with their ids, in no particular order.
#[derive(Clone, Debug, PartialEq)]
pub struct RowCandidates {
    /// [`RowStats`] of the row scaled by 1/temperature.
    pub stats: RowStats,
    pub ids: Vec<u32>,
    pub logits: Vec<f32>,
}

impl RowCandidates {
    /// From the backend's `5 + 2k` values per row: [`RowStats`]' five, `k` ids as f32, `k`
    /// logits (see [`crate::graph::Ops::row_candidates`]). `None` when `raw` is not whole rows
    /// or an id is out of range.
    pub fn parse(raw: &[f32], n_vocab: usize, k: usize) -> Option<Vec<RowCandidates>> {
        let width = 5 + 2 * k;
        if k == 0 || raw.len() % width != 0 {
            return None;
        }
        raw.chunks_exact(width)
            .map(|r| {
                let stats = RowStats::parse(&r[..5], n_vocab)[0];
                let ids: Option<Vec<u32>> = r[5..5 + k].iter().map(|&f| (f >= 0.0 && f < n_vocab as f32 && f.fract() == 0.0).then_some(f as u32)).collect();
                Some(RowCandidates { stats, ids: ids?, logits: r[5 + k..].to_vec() })
            })
            .collect()
    }
}

impl TokenSampler {
    /// Whether [`TokenSampler::sample_candidates`] can serve this sampler at all: sampled, at a
    /// temperature whose inverse is a finite positive f32 (what the backend scales rows by), and
    /// not Gumbel (whose scores and draw need two temperatures).
    pub fn draws_from_candidates(&self) -> bool {
        let inv = 1.0 / self.temp;
        self.temp > 0.0 && self.temp.is_finite() && inv.is_finite() && inv > 0.0 && !self.gumbel
    }

    /// The token and scores [`TokenSampler::sample_scores`] would give the full row of `c`
    /// (up to the rounding of the softmax denominator: see the module doc), consuming one
    /// uniform of `rng` as it does; `None` when the draw cannot be certified from the returned
    /// candidates (or the row is not finite), and then `rng` must be taken afresh for the full
    /// row. `n_vocab` says whether every id came back.
    pub fn sample_candidates(&self, c: &RowCandidates, n_vocab: usize, rng: &mut Rng, need: Scores) -> Option<Candidate> {
        if !self.draws_from_candidates() || !c.stats.is_finite() || c.ids.is_empty() || c.ids.len() != c.logits.len() {
            return None;
        }
        if c.logits.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let complete = c.ids.len() >= n_vocab;
        let max = c.logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let z = c.stats.z;
        // Probabilities as the host computes them from its scaled logits, over the device's sum.
        let mut order: Vec<(f32, u32)> = c.logits.iter().zip(&c.ids).map(|(&x, &i)| (((x - max) / self.temp).exp() / z, i)).collect();
        order.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        // Every id left on the device has at most the smallest returned probability, so the
        // returned probabilities are the largest ones as a multiset: the first `len` values of
        // the host's order, whichever ids hold equal values. Those values decide how many ids
        // top-k and top-p keep and the mass the walk goes through; only the id the walk lands
        // on must be certain, which it is when its probability is above that smallest one (then
        // every id of its probability came back and sorts by id as on the host).
        let floor = order.last().expect("nonempty").0;
        let certain = |p: f32| complete || p > floor;
        let mut kept = order.len();
        // Whether `kept` is the host's whole kept set (else it keeps values we do not have).
        let mut whole = complete;
        if self.top_k > 0 && self.top_k < n_vocab {
            if self.top_k > order.len() {
                return None;
            }
            kept = self.top_k;
            whole = true;
        }
        if self.top_p < 1.0 {
            let mut mass = 0.0f32;
            match order[..kept].iter().position(|&(p, _)| {
                mass += p;
                mass >= self.top_p
            }) {
                Some(cut) => {
                    kept = cut + 1;
                    whole = true;
                }
                // The mass never reaches top-p: the host keeps everything it had.
                None if whole => {}
                None => return None,
            }
        }
        // The host walks Σ kept probabilities; for the whole vocabulary that is the device's 1.
        let total: f64 = if whole { order[..kept].iter().map(|&(p, _)| p as f64).sum() } else { 1.0 };
        let mut u = rng.uniform() * total;
        let mut token = None;
        for &(p, i) in &order[..kept] {
            u -= p as f64;
            if u < 0.0 {
                token = Some((p, i));
                break;
            }
        }
        // Past the end (by rounding) the host takes the last id of its order, which only a
        // complete row places for certain.
        let (p, token) = match token {
            Some((p, i)) if certain(p) => (p, i),
            None if complete => order[kept - 1],
            _ => return None,
        };
        let base = c.stats.candidate();
        Some(Candidate {
            token,
            confidence: if need.confidence { p } else { f32::NAN },
            margin: if need.margin { base.margin } else { f32::NAN },
            entropy: if need.entropy { base.entropy } else { f32::NAN },
        })
    }
}
