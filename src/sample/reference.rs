//! The token sampler as first written: a full softmax, entropy and top-2 scan over every id, and
//! a full sort of the vocabulary for every sampled draw. It is the specification
//! [`TokenSampler::sample`] must equal bit for bit (the tests and `cargo bench --bench sampler`
//! compare the two), kept here unchanged so that promise can be checked.

use super::{Candidate, Rng, TokenSampler};

/// [`TokenSampler::sample`] computed the slow, obvious way.
pub fn sample(s: &TokenSampler, logits: &[f32], rng: &mut Rng) -> Candidate {
    let gumbel = s.gumbel && s.temp > 0.0;
    let t = if s.temp > 0.0 && !gumbel { s.temp } else { 1.0 };
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut probs: Vec<f32> = logits.iter().map(|&x| ((x - max) / t).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    let entropy = -probs.iter().filter(|&&p| p > 0.0).map(|&p| p * p.ln()).sum::<f32>();
    let (mut i1, mut p1, mut p2) = (0usize, f32::NEG_INFINITY, 0f32);
    for (i, &p) in probs.iter().enumerate() {
        if p > p1 {
            (i1, p1, p2) = (i, p, p1.max(0.0));
        } else if p > p2 {
            p2 = p;
        }
    }
    let token = if s.temp <= 0.0 {
        i1
    } else if gumbel {
        let hot: Vec<f32> = logits.iter().map(|&x| ((x - max) / s.temp).exp()).collect();
        draw(&TokenSampler { temp: s.temp, top_k: 0, top_p: 1.0, gumbel: false }, &hot, rng)
    } else {
        draw(s, &probs, rng)
    };
    Candidate { token: token as u32, confidence: probs[token], margin: p1 - p2, entropy }
}

/// Draws from `probs` truncated by top-k and top-p: the ids sorted by probability (ties to the
/// lower id), the smallest prefix whose mass reaches top-p kept, one uniform walked through it.
pub(super) fn draw(s: &TokenSampler, probs: &[f32], rng: &mut Rng) -> usize {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    let keep_k = if s.top_k > 0 { s.top_k.min(probs.len()) } else { probs.len() };
    if keep_k < probs.len() {
        // Ties to the lower id here too, so that which of equal probabilities top-k keeps is
        // the order's, not the select's (it was unspecified before device candidates).
        order.select_nth_unstable_by(keep_k - 1, |&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        order.truncate(keep_k);
    }
    order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    if s.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (at least one token).
        let mut mass = 0.0;
        let cut = order.iter().position(|&i| {
            mass += probs[i];
            mass >= s.top_p
        });
        order.truncate(cut.map_or(order.len(), |c| c + 1));
    }
    let total: f64 = order.iter().map(|&i| probs[i] as f64).sum();
    let mut u = rng.uniform() * total;
    for &i in &order {
        u -= probs[i] as f64;
        if u < 0.0 {
            return i;
        }
    }
    *order.last().expect("at least one token kept")
}
