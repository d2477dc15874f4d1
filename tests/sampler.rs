//! The fast token sampler equals the reference sampler bit for bit: the same token, the same
//! confidence, margin and entropy bits, the same random numbers consumed, on rows shaped like
//! real logits and on rows built to hit every corner (ties, near-ties, one-hot, uniform, huge and
//! tiny temperatures, top-p cuts that land exactly on the mass, subnormal tails).

use dlm::sample::{reference, Rng, Scores, TokenSampler};

/// Rows come from the sampler's own generator (a different stream from the draws').
struct Gen(Rng);

impl Gen {
    fn u(&mut self) -> f64 {
        self.0.uniform()
    }
    fn gauss(&mut self) -> f32 {
        self.0.normal() as f32
    }
    fn below(&mut self, n: usize) -> usize {
        (self.u() * n as f64) as usize % n.max(1)
    }
}

/// Logits rows of many shapes.
fn rows(g: &mut Gen) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for &v in &[1usize, 2, 3, 17, 100, 1000, 32000] {
        for &std in &[0.5f32, 2.5, 6.0, 25.0] {
            // A Gaussian bulk with a few peaks, as an LM head gives.
            let mut r: Vec<f32> = (0..v).map(|_| g.gauss() * std).collect();
            for k in 0..v.min(4) {
                let i = g.below(v);
                r[i] += (12 - 3 * k as i32) as f32 * std / 2.5;
            }
            out.push((format!("gauss v{v} std{std}"), r.clone()));
            // The same, quantized: many exact ties, several maxima.
            out.push((format!("ties v{v} std{std}"), r.iter().map(|x| (x * 2.0).round() / 2.0).collect()));
        }
        if v >= 2 {
            // Near-ties with the maximum: one ulp, 1e-7, 1e-6, 1e-5 below it, before and after.
            for d in [f32::EPSILON, 1e-7, 1e-6, 9e-6, 1e-5, 2e-5] {
                let mut r: Vec<f32> = (0..v).map(|_| g.gauss()).collect();
                let (a, b) = (g.below(v), g.below(v));
                r[a] = 9.0;
                r[b] = 9.0 - d * 9.0;
                out.push((format!("near-tie v{v} d{d}"), r.clone()));
                // The second-largest near-tied instead.
                let c = g.below(v);
                if c != a {
                    r[b] = 5.0;
                    r[c] = 5.0 - d * 5.0;
                    out.push((format!("near-second v{v} d{d}"), r));
                }
            }
        }
        out.push((format!("uniform v{v}"), vec![0.25; v]));
        let mut one_hot = vec![-3.0e38f32; v];
        one_hot[g.below(v)] = 3.0e38;
        out.push((format!("one-hot extreme v{v}"), one_hot));
        let mut peaked = vec![-60.0f32; v];
        peaked[g.below(v)] = 30.0;
        out.push((format!("peaked v{v}"), peaked));
        // A subnormal tail: terms between 2^-149 and 2^-126 after the exponential.
        out.push((format!("subnormal tail v{v}"), (0..v).map(|i| if i % 97 == 5 { 0.0 } else { -88.0 - 15.0 * g.u() as f32 }).collect()));
        // Logits far from zero.
        out.push((format!("offset v{v}"), (0..v).map(|_| 1.0e6 + g.gauss() * 4.0).collect()));
    }
    // Logits a few ulps below the maximum, at lower ids: their probabilities can round to the
    // maximum's, and then the lowest id wins. The filler count varies the sum.
    for filler in 0..24 {
        let mut r = vec![-3.0f32; 8 + filler];
        for k in 0..6 {
            r[k] = f32::from_bits(0.5f32.to_bits() - [3, 4, 3, 4, 3, 2][k]);
        }
        r[7 + filler] = 0.5;
        out.push((format!("ulp-ties filler{filler}"), r));
    }
    // A sum that stays tiny through its first terms, so half an ulp of it is subnormal and a
    // term can round up to exactly that half ulp (found by review: the skip rule was off by
    // one ulp at 2^-125, carried to the final sum).
    let mut r = Vec::new();
    for x in [-86.6f32, -103.5, -86.45638, -70.9913, -59.70911, -45.917614, -32.1882, -20.763655, -7.261715, -0.6942465, -0.20782726, -0.3746935, 0.0] {
        r.push(x);
        r.extend([-200.0f32; 15]);
    }
    out.push(("tiny running sum".into(), r));
    // Exact top-p boundaries: groups of equal logits give probabilities 1/4, 1/8, ... exactly.
    for groups in [vec![4usize], vec![2, 4], vec![4, 8, 16], vec![1, 1, 2]] {
        let n: usize = groups.iter().sum();
        let mut r = vec![-500.0f32; n + 40];
        let mut at = 0;
        for (k, &size) in groups.iter().enumerate() {
            for _ in 0..size {
                r[at * 3 % (n + 40)] = -(k as f32) * std::f32::consts::LN_2;
                at += 1;
            }
        }
        out.push((format!("exact groups {groups:?}"), r));
    }
    out
}

fn samplers() -> Vec<TokenSampler> {
    let mut out = Vec::new();
    for &temp in &[0.0f32, 1e-3, 0.2, 0.7, 1.0, 1.5, 1e3] {
        for &top_p in &[1.0f32, 0.999_999, 0.95, 0.9, 0.75, 0.5, 0.25, 0.0] {
            for &top_k in &[0usize, 1, 5, 50] {
                out.push(TokenSampler { temp, top_k, top_p, gumbel: false });
            }
        }
        out.push(TokenSampler { temp, top_k: 0, top_p: 0.9, gumbel: true });
    }
    out
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn fast_sampler_equals_the_reference_bit_for_bit() {
    let mut g = Gen(Rng::new(0x5eed_1234_abcd_0001));
    let rows = rows(&mut g);
    let samplers = samplers();
    let singles = [Scores::ALL, Scores::NONE, Scores { confidence: true, ..Scores::NONE }, Scores { margin: true, ..Scores::NONE }, Scores { entropy: true, ..Scores::NONE }];
    let mut checked = 0usize;
    let mut sampled_tokens = std::collections::HashSet::new();
    for (name, row) in &rows {
        for (si, s) in samplers.iter().enumerate() {
            // Rows of 32000 ids are costly: a subset of the samplers there.
            if row.len() > 1000 && si % 5 != 0 {
                continue;
            }
            for draw in 0..3u64 {
                let seed = (checked as u64) << 8 | draw;
                let mut r1 = Rng::new(seed);
                let want = reference::sample(s, row, &mut r1);
                let scores = singles[(si + draw as usize) % singles.len()];
                let mut r2 = Rng::new(seed);
                let got = s.sample_scores(row, &mut r2, scores);
                let ctx = format!("{name}, {s:?}, {scores:?}, seed {seed}: want {want:?}, got {got:?}");
                assert_eq!(got.token, want.token, "token: {ctx}");
                assert_eq!(r1.next_u64(), r2.next_u64(), "random numbers consumed: {ctx}");
                assert!(!scores.confidence || same(got.confidence, want.confidence), "confidence: {ctx}");
                assert!(!scores.margin || same(got.margin, want.margin), "margin: {ctx}");
                assert!(!scores.entropy || same(got.entropy, want.entropy), "entropy: {ctx}");
                for (asked, v) in [(scores.confidence, got.confidence), (scores.margin, got.margin), (scores.entropy, got.entropy)] {
                    assert!(asked || v.is_nan(), "a score not asked for is NaN: {ctx}");
                }
                // The default computes every score.
                if scores == Scores::ALL {
                    let mut r3 = Rng::new(seed);
                    let all = s.sample(row, &mut r3);
                    assert!(all.token == want.token && same(all.entropy, want.entropy), "{ctx}");
                }
                sampled_tokens.insert((name.clone(), want.token));
                checked += 1;
            }
        }
    }
    // The rows are varied enough to draw many different tokens.
    assert!(checked > 20_000 && sampled_tokens.len() > 1000, "{checked} checks, {} distinct (row, token)", sampled_tokens.len());
}

#[test]
fn rows_the_fast_path_cannot_take_go_to_the_reference() {
    // Non-finite logits: the same answer as the reference, whatever it is, and no panic.
    // An infinite temperature over logits whose difference overflows: (x − max)/∞ is NaN.
    for row in [vec![0.0f32, f32::NAN, 1.0], vec![f32::INFINITY, 0.0, 1.0], vec![f32::NEG_INFINITY, 0.5, 0.25], vec![f32::NAN; 3], vec![3e38, -3e38]] {
        let inf = |top_k, gumbel| TokenSampler { temp: f32::INFINITY, top_k, top_p: 1.0, gumbel };
        for s in [TokenSampler { temp: 0.0, top_k: 0, top_p: 1.0, gumbel: false }, TokenSampler { temp: 0.7, top_k: 0, top_p: 0.9, gumbel: false }, inf(0, false), inf(0, true), inf(1, false)] {
            let (mut a, mut b) = (Rng::new(5), Rng::new(5));
            let want = reference::sample(&s, &row, &mut a);
            let got = s.sample(&row, &mut b);
            assert_eq!(got.token, want.token, "{row:?} {s:?}");
            assert!(same(got.confidence, want.confidence) && same(got.entropy, want.entropy), "{row:?} {s:?}: {got:?} vs {want:?}");
        }
    }
}

#[test]
fn expf_is_zero_below_the_cut_the_sampler_assumes() {
    // The sampler skips exp(y) for y < -104 as exactly 0: check every f32 from -104 down to -112
    // and a sweep below, with the platform's expf.
    let mut x = -104.0f32;
    assert_eq!(x.exp(), 0.0);
    while x > -112.0 {
        assert_eq!(x.exp(), 0.0, "{x}");
        x = f32::from_bits(x.to_bits() + 1);
    }
    for k in 0..10_000 {
        let x = -112.0 - k as f32 * 0.37;
        assert_eq!(x.exp(), 0.0, "{x}");
    }
    assert_eq!(f32::NEG_INFINITY.exp(), 0.0);
    // And just above the cut it is not always 0 (the cut is not needlessly low).
    assert!((-103.9f32).exp() > 0.0);
}
