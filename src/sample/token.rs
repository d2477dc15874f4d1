//! Which token one masked position would take, and the scores the unmasking rules rank by,
//! without a full softmax, entropy and sort over the vocabulary.
//!
//! The result is bit for bit that of the obvious computation ([`super::reference::sample`]): a
//! softmax summed in f32 in id order, an entropy summed the same way, a top-2 scan, and for a
//! sampled draw the ids sorted by probability (ties to the lower id), cut at top-p, one uniform
//! walked through them. The same seed therefore gives the same canvas as it always did. What
//! makes it cheaper, with why each step is exact:
//!
//! - **Terms that cannot change a sum are not computed.** A float sum in id order only changes
//!   when a term is at least half a unit in the last place of the running sum. `expf(y)` is 0 in
//!   f32 for `y < -104`, and below `(E − 24)·ln 2` (E the running sum's binary exponent) it is
//!   below half an ulp, so the sum of exponentials skips those ids; the entropy sum skips terms
//!   `p·ln p` bounded the same way. At low temperature almost every id is such a term, and many
//!   are subnormal, which costs a hundred cycles per operation on x86.
//! - **Only the scores the rule reads** ([`Scores`]): the origin and random rules need no score,
//!   so a greedy step for them is one vectorized max per row.
//! - **The top two probabilities come from the ids near the top two logits.** The chain
//!   logit → (x − max)/t → expf → /sum is accurate to well under 1e-6 relative, so an id whose
//!   scaled logit is 1e-5 below another's has a strictly smaller probability. Only ids within
//!   1e-5 of the first or second largest scaled logit are examined, exactly, in id order.
//! - **Top-p sorts only the nucleus.** The ids above a logit threshold whose mass (from a
//!   histogram filled while summing) reaches top-p are sorted by (probability, id) as one `u64`
//!   key. The prefix up to the cut is certified: every id in it is 1e-5 above the threshold, so
//!   no id left out can have an equal or larger probability; otherwise the threshold is lowered.
//! - Draws with no truncation (temperature alone, Gumbel sampling) sort only the nonzero
//!   weights; top-k computes the full distribution and selects as before.
//!
//! Rows with a non-finite logit, empty rows and an infinite temperature take the reference path
//! unchanged.

use std::cell::RefCell;

use super::{reference, Candidate, Rng};

/// Token sampling: greedy when `temp == 0`, else temperature, then top-k, then top-p
/// (temperature before top-p, as DiffuLLaMA's reference sampler does).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenSampler {
    pub temp: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// LLaDA's Gumbel-max sampling (llama-diffusion-cli's `--diffusion-add-gumbel-noise`): with
    /// `temp > 0`, the token is argmax(logits / temp + Gumbel noise), which is a draw from the
    /// whole softmax(logits / temp) (no top-k or top-p), and the scores are those of the plain
    /// softmax(logits), as LLaDA's low-confidence remasking ranks them. Drawn here by one uniform
    /// through the cumulative distribution: the same distribution, without a noise value per
    /// vocabulary entry.
    pub gumbel: bool,
}

/// Which of a [`Candidate`]'s scores are computed; the others are NaN. The token is always
/// drawn exactly as with every score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scores {
    pub confidence: bool,
    pub margin: bool,
    pub entropy: bool,
}

impl Scores {
    pub const ALL: Scores = Scores { confidence: true, margin: true, entropy: true };
    /// The token only (rules that choose positions without looking at the logits).
    pub const NONE: Scores = Scores { confidence: false, margin: false, entropy: false };
}

impl TokenSampler {
    /// Samples from one logits row. Scores use the softmax of `logits / temp` (plain softmax when
    /// greedy or with `gumbel`) before truncation.
    pub fn sample(&self, logits: &[f32], rng: &mut Rng) -> Candidate {
        self.sample_scores(logits, rng, Scores::ALL)
    }

    /// [`TokenSampler::sample`] computing only the scores `scores` asks for (the others are NaN);
    /// the token is the same.
    pub fn sample_scores(&self, logits: &[f32], rng: &mut Rng, scores: Scores) -> Candidate {
        if logits.is_empty() || logits.len() > u32::MAX as usize {
            return reference::sample(self, logits, rng);
        }
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => self.fast(logits, rng, scores, &mut s),
            // Re-entered on this thread (cannot happen today): a fresh buffer.
            Err(_) => self.fast(logits, rng, scores, &mut Scratch::default()),
        })
        .unwrap_or_else(|| reference::sample(self, logits, rng))
    }

    /// `None` when the row has a non-finite logit (the reference path handles it).
    fn fast(&self, logits: &[f32], rng: &mut Rng, need: Scores, sc: &mut Scratch) -> Option<Candidate> {
        let v = logits.len();
        let max = finite_max(logits)?;
        if self.temp.is_infinite() {
            // (x − max)/∞ is NaN where x − max overflowed to −∞: the reference's arithmetic.
            return None;
        }
        let gumbel = self.gumbel && self.temp > 0.0;
        let t = if self.temp > 0.0 && !gumbel { self.temp } else { 1.0 };
        let greedy = self.temp <= 0.0;
        sc.y.clear();
        sc.y.extend(logits.iter().map(|&x| (x - max) / t));
        let y = &sc.y[..];

        // The ids that can hold the largest or second-largest probability.
        let (zeros, below) = top_two(y);
        let y2 = if zeros >= 2 { 0.0 } else { below };
        let near = if y2 - TIE >= ZERO_BELOW { y2 - TIE } else { -TIE };
        collect_ge(y, near, &mut sc.near);
        let ambiguous = sc.near.iter().any(|&i| y[i as usize] != 0.0 && y[i as usize] >= -TIE);
        let nothing_else = greedy && !need.confidence && !need.margin && !need.entropy;
        if nothing_else && !ambiguous {
            let first = sc.near.iter().copied().find(|&i| y[i as usize] == 0.0).expect("the max is near itself");
            return Some(Candidate { token: first, confidence: f32::NAN, margin: f32::NAN, entropy: f32::NAN });
        }

        // The softmax denominator, exactly as summed in id order.
        let nucleus = !greedy && !gumbel && self.top_p < 1.0 && !(self.top_k > 0 && self.top_k < v);
        sc.e.clear();
        sc.e.resize(v, 0.0);
        sc.hist.clear();
        sc.hist.resize(if nucleus { HIST } else { 0 }, 0.0);
        let sum = exp_sum(y, &mut sc.e, &mut sc.hist);
        let p_of = |e: &[f32], i: usize| {
            let ei = e[i];
            (if ei.is_nan() { exp0(y[i]) } else { ei }) / sum
        };

        let (mut i1, mut p1, mut p2) = (0usize, f32::NEG_INFINITY, 0f32);
        for &i in &sc.near {
            let p = p_of(&sc.e, i as usize);
            if p > p1 {
                (i1, p1, p2) = (i as usize, p, p1.max(0.0));
            } else if p > p2 {
                p2 = p;
            }
        }
        let entropy = if need.entropy { entropy(y, &sc.e, sum) } else { f32::NAN };

        let token = if greedy {
            i1
        } else if gumbel {
            // Weights exp((x − max)/temp), unnormalized, drawn from without truncation.
            let hot = &mut sc.w;
            hot.clear();
            hot.extend(logits.iter().map(|&x| {
                let z = (x - max) / self.temp;
                if z < ZERO_BELOW {
                    0.0
                } else {
                    z.exp()
                }
            }));
            draw_all(hot, &mut sc.keys, &mut sc.tmp, rng)
        } else if nucleus {
            let top_p = self.top_p;
            match draw_nucleus(y, &sc.e, sum, top_p, &sc.hist, &mut sc.near, &mut sc.keys, rng) {
                Some(tok) => tok,
                None => {
                    dense_probs(y, &sc.e, sum, &mut sc.w);
                    let mut s = *self;
                    s.top_k = 0;
                    reference::draw(&s, &sc.w, rng)
                }
            }
        } else {
            dense_probs(y, &sc.e, sum, &mut sc.w);
            if self.top_k > 0 && self.top_k < v {
                reference::draw(self, &sc.w, rng)
            } else {
                draw_all(&sc.w, &mut sc.keys, &mut sc.tmp, rng)
            }
        };
        let confidence = if !need.confidence {
            f32::NAN
        } else if token == i1 {
            p1
        } else {
            p_of(&sc.e, token)
        };
        let margin = if need.margin { p1 - p2 } else { f32::NAN };
        Some(Candidate { token: token as u32, confidence, margin, entropy })
    }
}

/// Below this, `expf` is exactly 0 in f32 (exp(−104) < 2^−150; tested against libm).
const ZERO_BELOW: f32 = -104.0;
/// Scaled logits this far apart give strictly ordered probabilities.
const TIE: f32 = 1e-5;
/// Histogram of the softmax mass by scaled logit, for top-p: buckets of 1/4 nat down to −104.
const HIST: usize = 417;

#[derive(Default)]
struct Scratch {
    y: Vec<f32>,
    e: Vec<f32>,
    w: Vec<f32>,
    near: Vec<u32>,
    keys: Vec<u64>,
    tmp: Vec<u64>,
    hist: Vec<f64>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

const LANES: usize = 16;

/// The largest logit, or `None` if any is NaN or infinite.
fn finite_max(x: &[f32]) -> Option<f32> {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut bad = [false; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            m[j] = if c[j] > m[j] { c[j] } else { m[j] };
            bad[j] |= !c[j].is_finite();
        }
    }
    let mut max = m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut any_bad = bad.iter().any(|&b| b);
    for &v in chunks.remainder() {
        max = max.max(v);
        any_bad |= !v.is_finite();
    }
    (!any_bad).then_some(max)
}

/// How many scaled logits are exactly 0 (the maximum), and the largest one below 0.
fn top_two(y: &[f32]) -> (usize, f32) {
    let mut below = [f32::NEG_INFINITY; LANES];
    let mut zeros = [0u32; LANES];
    let mut chunks = y.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            let v = c[j];
            below[j] = if v < 0.0 && v > below[j] { v } else { below[j] };
            zeros[j] += u32::from(v == 0.0);
        }
    }
    let mut b = below.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let mut z: usize = zeros.iter().map(|&n| n as usize).sum();
    for &v in chunks.remainder() {
        if v < 0.0 {
            b = b.max(v);
        }
        z += usize::from(v == 0.0);
    }
    (z, b)
}

/// The ids `i` with `y[i] >= thr`, in order.
fn collect_ge(y: &[f32], thr: f32, out: &mut Vec<u32>) {
    out.clear();
    for (c, chunk) in y.chunks(LANES).enumerate() {
        if chunk.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a }) >= thr {
            out.extend(chunk.iter().enumerate().filter(|(_, &v)| v >= thr).map(|(j, _)| (c * LANES + j) as u32));
        }
    }
}

/// `expf(y)`, which is exactly 0 below [`ZERO_BELOW`] (without libm's slow underflow path).
fn exp0(y: f32) -> f32 {
    let z = if y < ZERO_BELOW { 0.0 } else { y };
    if y < ZERO_BELOW {
        0.0
    } else {
        z.exp()
    }
}

/// The largest value of a chunk (vectorized; NaN-free input).
fn chunk_max(c: &[f32]) -> f32 {
    c.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

/// The smallest power of two above a positive normal `x` (infinity past the largest).
fn next_binade(x: f32) -> f32 {
    let e = (x.to_bits() >> 23) & 0xff;
    if e >= 254 {
        f32::INFINITY
    } else {
        f32::from_bits((e + 1) << 23)
    }
}

/// Σ expf(y[i]) in id order, in f32, equal to the plain sequential sum (which starts at −0 and
/// adds every term). A chunk of ids is skipped only when every term in it is exactly 0 or below
/// half an ulp of the running sum (which only grows), so adding it could not change the sum;
/// every other term is added in order. `e[i]` gets each computed term, NaN for the ids of a
/// skipped chunk. A nonempty `hist` gets each computed term's mass in its 1/4-nat bucket.
fn exp_sum(y: &[f32], e: &mut [f32], hist: &mut [f64]) -> f32 {
    let mut sum = -0.0f32;
    let mut thr = ZERO_BELOW;
    let mut next = f32::MIN_POSITIVE;
    for (yc, ec) in y.chunks(LANES).zip(e.chunks_mut(LANES)) {
        if chunk_max(yc) < thr {
            ec.fill(f32::NAN);
            continue;
        }
        for (t, &yi) in ec.iter_mut().zip(yc) {
            *t = exp0(yi);
        }
        for &t in ec.iter() {
            sum += t;
        }
        if !hist.is_empty() {
            for (&yi, &t) in yc.iter().zip(ec.iter()) {
                if t > 0.0 {
                    hist[((-yi * 4.0) as usize).min(HIST - 1)] += t as f64;
                }
            }
        }
        if sum >= next {
            // expf(y) < 2^(E−24), half an ulp of a sum of exponent E, for y below (E − 24)·ln 2
            // less a margin for expf's error.
            // Only while that half ulp is a normal float: below 2^-126 expf's error is a whole
            // subnormal step, and a term can round up to exactly the half ulp.
            let ex = ((sum.to_bits() >> 23) & 0xff) as i32 - 127;
            thr = if ex - 24 < -125 { ZERO_BELOW } else { (((ex - 24) as f64) * std::f64::consts::LN_2 - 2e-3).max(ZERO_BELOW as f64) as f32 };
            next = next_binade(sum);
        }
    }
    sum
}

/// −Σ p·ln p over the ids with p = e/sum > 0, summed in f32 in id order exactly as the plain
/// sequential sum, skipping chunks whose terms cannot reach half an ulp of the running sum.
fn entropy(y: &[f32], e: &[f32], sum: f32) -> f32 {
    let ln_sum = (sum as f64).ln().max(0.0);
    let mut h = -0.0f32;
    let mut thr = ZERO_BELOW;
    let mut next = f32::MIN_POSITIVE;
    let mut p = [0f32; LANES];
    for (yc, ec) in y.chunks(LANES).zip(e.chunks(LANES)) {
        if chunk_max(yc) < thr {
            continue;
        }
        // A chunk is computed whole or skipped whole by `exp_sum`.
        if ec[0].is_nan() {
            for (p, &yi) in p.iter_mut().zip(yc) {
                *p = exp0(yi) / sum;
            }
        } else {
            for (p, &ei) in p.iter_mut().zip(ec) {
                *p = ei / sum;
            }
        }
        let mut l = [0f32; LANES];
        for (l, &p) in l.iter_mut().zip(&p[..yc.len()]) {
            *l = if p > 0.0 { p.ln() } else { 0.0 };
        }
        for (&p, &l) in p[..yc.len()].iter().zip(&l) {
            if p > 0.0 {
                h += p * l;
            }
        }
        if -h >= next {
            let ex = (((-h).to_bits() >> 23) & 0xff) as i32 - 127;
            thr = entropy_threshold(ex, ln_sum);
            next = next_binade(-h);
        }
    }
    -h
}

/// The scaled logit below which a term p·ln p, as computed in f32 (p = expf(y)/sum, sum ≥ 1),
/// is surely under half an ulp of a running sum with binary exponent `e`.
fn entropy_threshold(e: i32, ln_sum: f64) -> f32 {
    let tiny = f64::powi(2.0, -149);
    let bound = 0.99 * f64::powi(2.0, e - 24);
    // |p| ≤ exp(y)(1 + 2e-7) + 2^-149 (rounding, subnormal p); |ln p| ≤ −y + ln sum (+ slack)
    // for a normal p and ≤ 103.3 for any positive f32; the product rounds by at most 2^-149
    // more. Increasing in y for y < −1.
    let term = |y: f64| (y.exp() * (1.0 + 1e-6) + tiny) * (-y + ln_sum + 0.01).max(103.3) * (1.0 + 1e-6) + tiny;
    let (mut lo, mut hi) = (ZERO_BELOW as f64, -1.0f64);
    if term(lo) >= bound {
        return ZERO_BELOW;
    }
    if term(hi) < bound {
        return hi as f32;
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if term(mid) < bound {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // Round down so every y below the f32 threshold is below `lo`.
    let t = lo as f32;
    if t as f64 > lo {
        f32::from_bits(t.to_bits() + 1) // t < 0: one ulp more negative
    } else {
        t
    }
}

/// Every probability `e/sum` (0 where the term is 0), as the reference computes them.
fn dense_probs(y: &[f32], e: &[f32], sum: f32, out: &mut Vec<f32>) {
    out.clear();
    out.extend(y.iter().zip(e).map(|(&yi, &ei)| (if ei.is_nan() { exp0(yi) } else { ei }) / sum));
}

/// The sort key of id `i` with weight `w >= 0`: ascending keys are descending weights, ties by id.
fn key(w: f32, i: usize) -> u64 {
    ((!w.to_bits()) as u64) << 32 | i as u64
}

/// A draw from all of `w` (no truncation): the reference's walk over the ids sorted by weight.
/// Zero weights sort last and are never walked past unless every nonzero one was.
fn draw_all(w: &[f32], keys: &mut Vec<u64>, tmp: &mut Vec<u64>, rng: &mut Rng) -> usize {
    keys.clear();
    keys.extend(w.iter().enumerate().filter(|(_, &x)| x > 0.0).map(|(i, &x)| key(x, i)));
    sort_keys(keys, tmp);
    walk(keys, rng.uniform()).unwrap_or_else(|| last_in_order(w, keys))
}

/// The reference's last id in its order when its walk never went below 0: the highest id of
/// weight 0 if any, else the last of the sorted nonzero `keys`.
fn last_in_order(w: &[f32], keys: &[u64]) -> usize {
    match w.iter().rposition(|&x| x == 0.0) {
        Some(i) => i,
        None => (*keys.last().expect("a finite row has a nonzero weight") as u32) as usize,
    }
}

/// Sorts `keys` made by [`key`] in ascending id order: a stable radix sort on the weight half
/// (three passes of 11 bits, a pass skipped when every key has the same digit), so equal weights
/// stay in id order and the result is what `sort_unstable` gives, in linear time.
fn sort_keys(keys: &mut Vec<u64>, tmp: &mut Vec<u64>) {
    if keys.len() < 512 {
        keys.sort_unstable();
        return;
    }
    debug_assert!(keys.windows(2).all(|k| (k[0] as u32) < (k[1] as u32)));
    tmp.clear();
    tmp.resize(keys.len(), 0);
    for shift in [32u32, 43, 54] {
        let mut count = [0usize; 2048];
        for &k in keys.iter() {
            count[((k >> shift) & 2047) as usize] += 1;
        }
        if count.iter().any(|&c| c == keys.len()) {
            continue;
        }
        let mut at = 0;
        for c in count.iter_mut() {
            (*c, at) = (at, at + *c);
        }
        for &k in keys.iter() {
            let d = ((k >> shift) & 2047) as usize;
            tmp[count[d]] = k;
            count[d] += 1;
        }
        std::mem::swap(keys, tmp);
    }
}

/// The weight a key was made from.
fn weight(k: u64) -> f32 {
    f32::from_bits(!((k >> 32) as u32))
}

/// The reference's walk: `uniform` times the total (summed in order, in f64), less each weight in
/// order, until it goes below 0. `None` if it never does (rounding, with `uniform` near 1).
fn walk(keys: &[u64], uniform: f64) -> Option<usize> {
    let total: f64 = keys.iter().map(|&k| weight(k) as f64).sum();
    let mut u = uniform * total;
    for &k in keys {
        u -= weight(k) as f64;
        if u < 0.0 {
            return Some((k as u32) as usize);
        }
    }
    None
}

/// A top-p draw that sorts only the nucleus: `None` when the cut cannot be certified within the
/// computed terms (then the caller takes the full path).
#[allow(clippy::too_many_arguments)]
fn draw_nucleus(y: &[f32], e: &[f32], sum: f32, top_p: f32, hist: &[f64], ids: &mut Vec<u32>, keys: &mut Vec<u64>, rng: &mut Rng) -> Option<usize> {
    // The bucket where the histogram's mass passes top-p with room for rounding.
    let target = (top_p as f64 + 1e-3).min(0.999_999) * sum as f64;
    let mut mass = 0.0;
    let mut b = 0;
    while b < HIST - 1 {
        mass += hist[b];
        if mass >= target {
            break;
        }
        b += 1;
    }
    let mut thr = -((b + 1) as f32) / 4.0 - 2.0 * TIE;
    loop {
        collect_ge(y, thr, ids);
        keys.clear();
        keys.extend(ids.iter().map(|&i| {
            let i = i as usize;
            let ei = if e[i].is_nan() { exp0(y[i]) } else { e[i] };
            key(ei / sum, i)
        }));
        keys.sort_unstable();
        let sure = thr + TIE;
        let mut mass = 0f32;
        let mut cut = None;
        for (n, &k) in keys.iter().enumerate() {
            let i = (k as u32) as usize;
            let p = weight(k);
            if y[i] < sure || p < 1e-30 {
                // An id below the threshold might tie with this one (near subnormal
                // probabilities, rounding can tie ids far apart).
                break;
            }
            mass += p;
            if mass >= top_p {
                cut = Some(n + 1);
                break;
            }
        }
        match cut {
            Some(n) => return Some(walk(&keys[..n], rng.uniform()).unwrap_or((keys[n - 1] as u32) as usize)),
            None if thr <= ZERO_BELOW => return None,
            None => thr = (thr - 8.0).max(ZERO_BELOW - 1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_order(w: &[f32]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..w.len()).collect();
        order.sort_unstable_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
        order
    }

    #[test]
    fn the_radix_sort_orders_keys_as_sort_unstable_does() {
        let mut g = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            g ^= g << 13;
            g ^= g >> 7;
            g ^= g << 17;
            g
        };
        let (mut keys, mut tmp) = (Vec::new(), Vec::new());
        for n in [0usize, 1, 600, 5000, 40_000] {
            for spread in [3u64, 1000, u64::MAX] {
                // Weights with many ties (a few distinct values) or all distinct, any magnitude.
                let w: Vec<f32> = (0..n).map(|_| f32::from_bits(((next() % spread) as u32 % 0x7f00_0000) + 1)).collect();
                keys.clear();
                keys.extend(w.iter().enumerate().map(|(i, &x)| key(x, i)));
                let mut want = keys.clone();
                want.sort_unstable();
                sort_keys(&mut keys, &mut tmp);
                assert_eq!(keys, want, "n {n} spread {spread}");
            }
        }
    }

    #[test]
    fn a_walk_that_never_goes_below_zero_ends_where_the_reference_does() {
        for w in [vec![0.25f32, 0.0, 0.5, 0.0, 0.25], vec![0.25, 0.5, 0.25], vec![1.0], vec![0.0, 2.0, 0.0]] {
            let mut keys: Vec<u64> = w.iter().enumerate().filter(|(_, &x)| x > 0.0).map(|(i, &x)| key(x, i)).collect();
            keys.sort_unstable();
            let order: Vec<usize> = keys.iter().map(|&k| (k as u32) as usize).collect();
            assert_eq!(order[..], reference_order(&w)[..order.len()], "{w:?}");
            // uniform = 1: u runs out exactly at 0 (these weights sum exactly).
            assert_eq!(walk(&keys, 1.0), None);
            assert_eq!(last_in_order(&w, &keys), *reference_order(&w).last().unwrap(), "{w:?}");
        }
    }

    #[test]
    fn a_wrong_guess_from_the_histogram_still_gives_the_reference_draw() {
        // Ids whose scaled logits sit a few ulps either side of the first threshold a histogram
        // gives, with equal probabilities; the lower id of each pair is outside.
        let v = 200;
        let up = |t: f32, n: u32| f32::from_bits(t.to_bits() - n); // toward 0 (inside)
        let down = |t: f32, n: u32| f32::from_bits(t.to_bits() + n); // away from 0 (outside)
        // An id just inside and one just outside the first bucket's threshold with equal
        // probabilities in this row.
        let build = |inside: f32, outside: f32, filler: usize| {
            let mut y = vec![-50.0f32; v];
            y[150] = 0.0;
            y[160..160 + filler].fill(-2.0); // tunes the sum, so some pair rounds to one probability
            for k in 0..40 {
                y[2 * k] = outside;
                y[2 * k + 1] = inside;
            }
            let mut e = vec![0.0; v];
            let sum = exp_sum(&y, &mut e, &mut vec![0.0; HIST]);
            (y, e, sum)
        };
        let thr = -0.25 - 2.0 * TIE;
        let (y, e, sum) = (0..40)
            .flat_map(|filler| (0..4).flat_map(move |i| (1..4).map(move |j| (up(thr, i), down(thr, j), filler))))
            .find_map(|(inside, outside, filler)| {
                let (y, e, sum) = build(inside, outside, filler);
                (inside.exp() / sum == outside.exp() / sum).then_some((y, e, sum))
            })
            .expect("some sum ties a pair across the threshold");
        let probs: Vec<f32> = y.iter().map(|&t| t.exp() / sum).collect();
        let ties = (0..40).filter(|&k| probs[2 * k] == probs[2 * k + 1]).count();
        assert!(ties == 40 && probs[0] > 1e-20, "the construction ties normal probabilities across the threshold: {ties}");
        // A histogram that puts all the mass in the first bucket: the first threshold is `thr`.
        let mut lying = vec![0.0; HIST];
        lying[0] = 1e9;
        let (mut ids, mut keys) = (Vec::new(), Vec::new());
        for top_p in [0.05f32, 0.1, 0.2, 0.3, 0.5, 0.8] {
            let s = TokenSampler { temp: 1.0, top_k: 0, top_p, gumbel: false };
            for seed in 0..300 {
                let (mut a, mut b) = (Rng::new(seed), Rng::new(seed));
                let want = reference::draw(&s, &probs, &mut a);
                let got = draw_nucleus(&y, &e, sum, top_p, &lying, &mut ids, &mut keys, &mut b);
                assert_eq!(got, Some(want), "top-p {top_p} seed {seed}");
            }
        }
    }
}
