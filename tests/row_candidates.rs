//! Device-side candidates for sampled steps: the backend reduces each logits row to its
//! statistics at the sampling temperature and its k largest logits ([`RowCandidates`]), the
//! host draws from those where the draw is certain and reads the row back where it is not.
//!
//! Checked here: the reduction holds exactly the k largest logits and the right statistics on
//! ggml's CPU backend and through wgpu (lavapipe in CI), for full, stored, reused and batched
//! passes; the kept logits read back equal the logits; draws from candidates equal the host
//! sampler's on the full row (statistically: the softmax denominators differ in rounding) and
//! are refused where the candidates cannot decide; whole sampled generations agree with the
//! reduction on and off while bringing back a fraction of the bytes.

mod common;

use std::path::{Path, PathBuf};

use common::{convert_to, root};
use dlm::generate::{generate, generate_batch, Cache, Flow, GenParams, SeqPass};
use dlm::model::Pass;
use dlm::sample::{Confidence, Rng, RowCandidates, RowStats, Scores, Threshold, TokenSampler};
use dlm::{Backend, Gguf, LoadOptions, Model, Tokenizer};
use dlm_convert::OutType;

fn load(path: &Path, backend: Backend) -> Model {
    Model::load(path, &LoadOptions { threads: 2, backend, ..Default::default() }).unwrap()
}

fn trained(dir: &Path, kind: OutType) -> PathBuf {
    let out = dir.join(format!("tiny-{}.gguf", kind.name()));
    convert_to(&root().join("models/diffullama-tiny"), kind, false, &out);
    out
}

/// The candidates of `row` at inverse temperature `inv_t`, computed here in f64: the
/// statistics of the scaled row and the `k` largest logits (lowest ids first among equals).
fn host_candidates(row: &[f32], inv_t: f32, k: usize) -> RowCandidates {
    host_candidates_ties(row, inv_t, k, false)
}

/// [`host_candidates`], with equal logits at the boundary taken highest id first when
/// `high_ids` (a backend may return any of them).
fn host_candidates_ties(row: &[f32], inv_t: f32, k: usize, high_ids: bool) -> RowCandidates {
    // (x − max)·inv in f64: the device subtracts the maximum before scaling, as the host does.
    let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let first = row.iter().position(|&v| v == mx).unwrap();
    let y: Vec<f64> = row.iter().map(|&x| (x as f64 - mx as f64) * inv_t as f64).collect();
    let z: f64 = y.iter().map(|&v| v.exp()).sum();
    let s: f64 = y.iter().map(|&v| v.exp() * v).sum();
    let below: Vec<f64> = y.iter().cloned().filter(|&v| v < 0.0).collect();
    let second = if y.len() - below.len() > 1 { 0.0 } else { below.iter().cloned().fold(-1e30, f64::max) };
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(if high_ids { b.cmp(&a) } else { a.cmp(&b) }));
    order.truncate(k.min(row.len()));
    RowCandidates {
        stats: RowStats { token: first as u32, z: z as f32, s: s as f32, second: second as f32 },
        ids: order.iter().map(|&i| i as u32).collect(),
        logits: order.iter().map(|&i| row[i]).collect(),
    }
}

/// A backend's candidates against the logits of the same rows: exactly the k largest values
/// (each at its id, the ids distinct), and statistics within rounding of the f64 ones.
fn check_candidates(logits: &[f32], got: &[RowCandidates], inv_t: &[f32], k: usize, n_vocab: usize, what: &str) {
    assert_eq!(logits.len(), got.len() * n_vocab, "{what}");
    assert_eq!(inv_t.len(), got.len(), "{what}");
    for (i, ((row, c), &t)) in logits.chunks(n_vocab).zip(got).zip(inv_t).enumerate() {
        let want = host_candidates(row, t, k);
        let ctx = format!("{what}, row {i} (1/t {t})");
        assert_eq!(c.ids.len(), k.min(n_vocab), "{ctx}");
        let mut ids = c.ids.clone();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), c.ids.len(), "distinct ids: {ctx}");
        for (&id, &v) in c.ids.iter().zip(&c.logits) {
            assert_eq!(row[id as usize].to_bits(), v.to_bits(), "the value at id {id}: {ctx}");
        }
        let mut vals = c.logits.clone();
        vals.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(vals, want.logits, "the {k} largest: {ctx}");
        assert_eq!(c.stats.token, want.stats.token, "{ctx}");
        let close = |a: f32, b: f32, rel: f32, abs: f32| (a - b).abs() <= rel * b.abs() + abs;
        assert!(close(c.stats.z, want.stats.z, 1e-5, 1e-6), "z {} vs {}: {ctx}", c.stats.z, want.stats.z);
        assert!(close(c.stats.s, want.stats.s, 1e-4, 1e-5), "s {} vs {}: {ctx}", c.stats.s, want.stats.s);
        assert!(close(c.stats.second, want.stats.second, 1e-5, 1e-5), "second {} vs {}: {ctx}", c.stats.second, want.stats.second);
    }
}

/// Every kind of pass reduced to candidates, against the logits of the same pass, and the kept
/// logits read back, on `backend`.
fn passes_match(gguf: &Path, backend: Backend, what: &str) {
    let tok = Tokenizer::from_gguf(&Gguf::open(gguf).unwrap()).unwrap();
    let mut m = load(gguf, backend);
    let v = m.params().n_vocab;
    let cases = common::masked_canvases(&tok, 53, 4);
    for (n, (canvas, rows)) in cases.iter().enumerate() {
        let k = [1, 5, 64, v + 100][n % 4];
        let inv_t = [1.0 / 0.7, 1.0, 20.0, 0.5][n % 4];
        let t = vec![inv_t; rows.len()];
        let reuse = Pass::Reuse { cache: 1, start: rows[0], end: canvas.len() };
        for pass in [Pass::Full, Pass::Store { cache: 1 }, reuse] {
            let logits = m.forward_rows(canvas, pass, Some(rows)).unwrap();
            let c = m.forward_seqs_candidates(&[SeqPass { tokens: canvas, pass, rows: Some(rows) }], &[inv_t], k).unwrap();
            check_candidates(&logits, &c, &t, k, v, &format!("{what} {pass:?} k {k}"));
            // The logits stay readable until the next pass, in any order.
            let pick: Vec<usize> = (0..rows.len()).rev().step_by(2).collect();
            let back = m.read_kept_rows(&pick).unwrap();
            for (r, got) in pick.iter().zip(back.chunks(v)) {
                assert!(logits[r * v..(r + 1) * v].iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits()), "{what} {pass:?}: kept row {r}");
            }
            assert!(m.read_kept_rows(&[rows.len() + 64]).is_err(), "a row past the kept ones is refused");
        }
        // Another pass ran since, or the cache its graph read was freed: nothing to read.
        m.forward_rows(canvas, Pass::Full, Some(rows)).unwrap();
        assert!(m.read_kept_rows(&[0]).is_err(), "{what}: rows read after another pass");
        m.forward_seqs_candidates(&[SeqPass { tokens: canvas, pass: Pass::Store { cache: 2 }, rows: Some(rows) }], &[1.0], 8).unwrap();
        assert!(m.read_kept_rows(&[rows.len() - 1]).is_ok());
        assert!(m.read_kept_rows(&[rows.len()]).is_err(), "{what}: a padding row");
        m.free_cache(2);
        assert!(m.read_kept_rows(&[0]).is_err(), "{what}: rows read after their graph was freed");
    }
    // A batch, each sequence at its own temperature.
    let items: Vec<SeqPass<'_>> = cases.iter().map(|(c, r)| SeqPass { tokens: c, pass: Pass::Full, rows: Some(r) }).collect();
    let temps = [1.0 / 0.3, 1.0 / 0.9, 20.0, 2.0];
    let logits = m.forward_seqs(&items).unwrap();
    let c = m.forward_seqs_candidates(&items, &temps, 16).unwrap();
    let per_row: Vec<f32> = cases.iter().zip(temps).flat_map(|((_, r), t)| std::iter::repeat_n(t, r.len())).collect();
    check_candidates(&logits, &c, &per_row, 16, v, &format!("{what} batch"));
    let all: Vec<usize> = (0..per_row.len()).collect();
    assert_eq!(m.read_kept_rows(&all).unwrap(), logits, "{what} batch: every kept row");
    // Bad temperatures are refused before any pass.
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(m.forward_seqs_candidates(&items[..1], &[bad], 8).is_err(), "1/t = {bad}");
    }
}

#[test]
fn candidates_hold_the_largest_logits_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    for kind in [OutType::F16, OutType::Q4_0] {
        passes_match(&trained(tmp.path(), kind), Backend::Cpu, &format!("cpu {}", kind.name()));
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn candidates_hold_the_largest_logits_on_wgpu() {
    if !common::have_adapter() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    passes_match(&trained(tmp.path(), OutType::F16), Backend::Wgpu, "wgpu f16");
}

/// Candidates from a random f32 model whose LM head repeats every fourth id's row at the next
/// three ids, so every logit value occurs four times and most k end inside a run of equal ones.
fn ties_at_every_boundary(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    common::checkpoint(&hf, &[]);
    let base = common::convert(&hf, OutType::F32);
    let v = load(&base, Backend::Cpu).params().n_vocab;
    let dups: Vec<(usize, usize)> = (0..v).step_by(4).flat_map(|j| (1..4).map(move |d| (j, j + d))).filter(|&(_, t)| t < v).collect();
    let tied = tmp.path().join("tied.gguf");
    common::with_tied_rows(&base, &dups, &tied);
    let mut m = load(&tied, backend);
    let canvas: Vec<u32> = (0..40u32).map(|i| if i >= 20 { dlm::keys::DIFFULLAMA_MASK_ID } else { 1 + i * 37 }).collect();
    let rows: Vec<usize> = (19..39).collect();
    let logits = m.forward_rows(&canvas, Pass::Full, Some(&rows)).unwrap();
    let mut inside = 0;
    for k in [1, 2, 3, 5, 17, 100, 255, 256, 257, 300] {
        let c = m.forward_seqs_candidates(&[SeqPass { tokens: &canvas, pass: Pass::Full, rows: Some(&rows) }], &[1.0], k).unwrap();
        check_candidates(&logits, &c, &vec![1.0; rows.len()], k, v, &format!("{backend:?} tied k {k}"));
        // The k-th largest equals the next one: the select had to choose among equal keys.
        for row in logits.chunks(v) {
            let mut sorted = row.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            inside += usize::from(sorted[k - 1] == sorted[k]);
        }
    }
    assert!(inside >= 7 * rows.len(), "{inside} (row, k) pairs end inside a run of equal logits");
}

#[test]
fn candidates_choose_among_ties_on_the_cpu() {
    ties_at_every_boundary(Backend::Cpu);
}

#[cfg(feature = "wgpu")]
#[test]
fn candidates_choose_among_ties_on_wgpu() {
    if !common::have_adapter() {
        return;
    }
    ties_at_every_boundary(Backend::Wgpu);
}

/// The probability of `token`, the top-1 − top-2 margin and the entropy of softmax(row / temp),
/// in f64.
fn exact_scores(row: &[f32], temp: f32, token: usize) -> (f64, f64, f64) {
    let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let y: Vec<f64> = row.iter().map(|&x| ((x - mx) / temp) as f64).collect();
    let z: f64 = y.iter().map(|v| v.exp()).sum();
    let mut sorted = y.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let entropy = z.ln() - y.iter().map(|v| v.exp() * v).sum::<f64>() / z;
    (y[token].exp() / z, (sorted[0].exp() - sorted[1].exp()) / z, entropy)
}

/// The draw of the host sampler's algorithm (sorted by probability then id, top-k, top-p, one
/// uniform walked through the kept ids) with every probability `exp((x − max)/t) / z` for the
/// given denominator: the draw that candidates with that `z` stand for.
fn exact_draw(row: &[f32], s: &TokenSampler, z: f32, rng: &mut Rng) -> u32 {
    let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let p: Vec<f32> = row.iter().map(|&x| ((x - mx) / s.temp).exp() / z).collect();
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    if s.top_k > 0 {
        order.truncate(s.top_k);
    }
    if s.top_p < 1.0 {
        let mut mass = 0.0f32;
        if let Some(cut) = order.iter().position(|&i| {
            mass += p[i];
            mass >= s.top_p
        }) {
            order.truncate(cut + 1);
        }
    }
    let total: f64 = order.iter().map(|&i| p[i] as f64).sum();
    let mut u = rng.uniform() * total;
    for &i in &order {
        u -= p[i] as f64;
        if u < 0.0 {
            return i as u32;
        }
    }
    *order.last().unwrap() as u32
}

/// Samplers of every kind the candidates serve.
fn samplers() -> Vec<TokenSampler> {
    let t = |temp, top_k, top_p| TokenSampler { temp, top_k, top_p, gumbel: false };
    vec![t(0.7, 0, 0.9), t(0.2, 0, 0.95), t(1.0, 0, 1.0), t(0.9, 20, 1.0), t(1.5, 100, 0.5), t(3.0, 0, 0.99), t(0.5, 3, 1.0)]
}

/// Draws from candidates against the host sampler on the full row, on the trained model's rows
/// and on flattened ones (where few draws can be decided from few candidates): a certified draw
/// is the host's token in all but a rounding's worth of cases, its confidence within the host
/// sum's error, and the refusals happen where they must.
#[test]
fn draws_from_candidates_equal_the_host_sampler() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = trained(tmp.path(), OutType::Q8_0);
    let tok = Tokenizer::from_gguf(&Gguf::open(&gguf).unwrap()).unwrap();
    let mut m = load(&gguf, Backend::Cpu);
    let v = m.params().n_vocab;
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for (canvas, r) in common::masked_canvases(&tok, 53, 6) {
        let logits = m.forward_rows(&canvas, Pass::Full, Some(&r)).unwrap();
        for row in logits.chunks(v) {
            rows.push(row.to_vec());
            // The same row flattened: its nucleus spans thousands of ids.
            rows.push(row.iter().map(|x| x * 0.05).collect());
            // And coarsely rounded: runs of equal logits, so that the k returned can end inside
            // a run (the backend may return any of its ids).
            rows.push(row.iter().map(|x| (x * 0.5).round()).collect());
        }
    }
    let (mut certified, mut same, mut refused, mut natural, mut same_as_host) = (0usize, 0usize, 0usize, 0usize, 0usize);
    for s in samplers() {
        for k in [4, 64, 101, v] {
            for (i, row) in rows.iter().enumerate() {
                let c = host_candidates_ties(row, 1.0 / s.temp, k, i % 2 == 1);
                for seed in 0..4u64 {
                    let rng = || Rng::new(seed * 7919 + i as u64);
                    let host = s.sample_scores(row, &mut rng(), Scores::ALL);
                    let exact = exact_draw(row, &s, c.stats.z, &mut rng());
                    match s.sample_candidates(&c, v, &mut rng(), Scores::ALL) {
                        Some(got) => {
                            certified += 1;
                            same += usize::from(got.token == exact);
                            // The host sampler's own f32 sum in id order drops up to ~1e-3 of the
                            // mass at high temperatures, which moves its top-p cut: compared on
                            // the model's and the rounded rows below temperature 2 (the
                            // flattened rows are the model's at 20 times the temperature).
                            let fair = i % 3 != 1 && s.temp < 2.0;
                            natural += usize::from(fair);
                            same_as_host += usize::from(fair && got.token == host.token);
                            // Scores against f64 (the host sampler's own f32 sums in id order
                            // drop up to ~1e-3 of the denominator at high temperatures).
                            let (conf, margin, entropy) = exact_scores(row, s.temp, got.token as usize);
                            let close = |a: f32, b: f64, rel: f64| (a as f64 - b).abs() <= rel * b.abs() + 1e-6;
                            let ctx = format!("{s:?} k {k} row {i}: {got:?} vs f64 {conf} {margin} {entropy}");
                            assert!(close(got.confidence, conf, 1e-5) && close(got.margin, margin, 1e-5) && close(got.entropy, entropy, 1e-4), "{ctx}");
                        }
                        None => {
                            assert!(k < v, "every id came back, yet refused: {s:?} row {i}");
                            refused += 1;
                            // The model's own rows are confident: below temperature 2 their draws
                            // are decided from 64 candidates (the flattened and rounded ones may
                            // need the row).
                            assert!(k < 64 || i % 3 != 0 || s.top_k > k || s.temp >= 2.0, "refused with {k} candidates: {s:?} row {i}");
                        }
                    }
                }
            }
        }
    }
    eprintln!("{certified} certified draws ({same} the exact draw's token; on the model's and the rounded rows below temperature 2, {same_as_host} of {natural} the host sampler's), {refused} refused");
    assert!(same as f64 >= 0.9995 * certified as f64, "{same} of {certified} certified draws took the exact draw's token");
    assert!(same_as_host as f64 >= 0.999 * natural as f64, "{same_as_host} of {natural} certified draws on the model's and the rounded rows took the host sampler's token");
    assert!(refused > 0 && certified > refused, "{certified} certified, {refused} refused");
}

/// Twelve tokens in one block, 12 steps, seed 5, with `sampler`: what the generation tests run.
fn twelve_tokens(m: &Model, tok: &Tokenizer, sampler: TokenSampler) -> GenParams {
    let d = m.diffusion();
    GenParams {
        n_gen: 12,
        steps: 12,
        block_length: None,
        sampler,
        seed: 5,
        mask_id: d.mask_id,
        shift_logits: d.shift_logits,
        eos: tok.eos,
        cache: Cache::None,
        full_lm_head: false,
        cfg_scale: 0.0,
        prune: Default::default(),
    }
}

/// Whole sampled generations with the reduction forced on agree with it off (statistically: a
/// draw within rounding of a boundary can go the other way), one at a time and in a batch, with
/// a fraction of the bytes read back.
#[test]
fn sampled_generations_agree_with_the_reduction_on_and_off() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = trained(tmp.path(), OutType::Q8_0);
    let tok = Tokenizer::from_gguf(&Gguf::open(&gguf).unwrap()).unwrap();
    let mut m = load(&gguf, Backend::Cpu);
    let base = twelve_tokens(&m, &tok, samplers()[0]);
    let prompts = ["add 17 38:", "reverse 4821:", "copy 90713:", "add 5 991:"];
    let (mut compared, mut agree) = (0, 0);
    for sampler in samplers() {
        let (mut bytes_on, mut bytes_off) = (0, 0);
        for p in [GenParams { sampler, ..base.clone() }, GenParams { sampler, block_length: Some(4), cache: Cache::Dual, ..base.clone() }] {
            for prompt in prompts {
                let ids = tok.prompt_ids(prompt).unwrap();
                let mut run = |on: bool| {
                    m.set_device_candidates(Some(on));
                    let before = m.bytes_read_back();
                    let g = generate(&mut m, &ids, &[], &p, &mut Confidence, |_| Flow::Continue).unwrap();
                    (g, m.bytes_read_back() - before)
                };
                let ((off, b_off), (on, b_on)) = (run(false), run(true));
                bytes_on += b_on;
                bytes_off += b_off;
                agree += usize::from(on.tokens == off.tokens);
                compared += 1;
            }
        }
        eprintln!("{sampler:?}: {bytes_on} bytes read back with the reduction, {bytes_off} without");
        // At most the logits and the candidates (a kept row read back replaces its logits; at
        // temperature 3 with top-p 0.99 every row is read back); below temperature 2, 1/20.
        assert!(bytes_on as f64 <= bytes_off as f64 * 1.01, "{sampler:?}: {bytes_on} bytes with the reduction, {bytes_off} without");
        if sampler.temp < 2.0 {
            assert!(bytes_on * 20 < bytes_off, "{sampler:?}: {bytes_on} bytes with the reduction, {bytes_off} without");
        }
    }
    // Temperatures whose inverse is not a finite f32 take the logits path; a tiny one that has
    // one, the candidates.
    for temp in [1e-45f32, 1e-39, 1e-30] {
        let p = GenParams { sampler: TokenSampler { temp, ..samplers()[0] }, ..base.clone() };
        assert_eq!(p.sampler.draws_from_candidates(), temp == 1e-30);
        let ids = tok.prompt_ids(prompts[0]).unwrap();
        let mut run = |on: bool| {
            m.set_device_candidates(Some(on));
            generate(&mut m, &ids, &[], &p, &mut Confidence, |_| Flow::Continue).unwrap().tokens
        };
        assert_eq!(run(true), run(false), "temperature {temp}");
    }
    eprintln!("{agree} of {compared} generations agree");
    assert!(agree * 10 >= compared * 9, "{agree} of {compared} generations agree");
    // A batch of sampled sequences at two temperatures, with the threshold rule.
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.prompt_ids(p).unwrap()).collect();
    let refs: Vec<(&[u32], &[u32])> = ids.iter().map(|x| (x.as_slice(), &[][..])).collect();
    let p = GenParams { sampler: samplers()[1], ..base.clone() };
    let mut run = |on: bool| {
        m.set_device_candidates(Some(on));
        generate_batch(&mut m, &refs, &p, &|| Box::new(Threshold(0.9)), |_| Flow::Continue).unwrap()
    };
    let (off, on) = (run(false), run(true));
    let same = off.iter().zip(&on).filter(|(a, b)| a.tokens == b.tokens).count();
    assert!(same + 1 >= prompts.len(), "{same} of {} batched generations agree", prompts.len());
}

#[cfg(any(feature = "cuda", feature = "metal", feature = "vulkan"))]
#[test]
fn candidates_hold_the_largest_logits_on_a_ggml_gpu() {
    let Some(backend) = common::ggml_gpu() else { return };
    let tmp = tempfile::tempdir().unwrap();
    passes_match(&trained(tmp.path(), OutType::F16), backend, &format!("{backend:?} f16"));
    // Sampled generations on the GPU, where the reduction is on by default, against the CPU's.
    let gguf = trained(tmp.path(), OutType::Q8_0);
    let tok = Tokenizer::from_gguf(&Gguf::open(&gguf).unwrap()).unwrap();
    let (mut gpu, mut cpu) = (load(&gguf, backend), load(&gguf, Backend::Cpu));
    assert!(gpu.device_candidates());
    let p = twelve_tokens(&cpu, &tok, samplers()[1]);
    let mut agree = 0;
    let prompts = ["add 17 38:", "reverse 4821:", "copy 90713:", "add 5 991:"];
    for prompt in prompts {
        let ids = tok.prompt_ids(prompt).unwrap();
        let a = generate(&mut gpu, &ids, &[], &p, &mut Confidence, |_| Flow::Continue).unwrap();
        let b = generate(&mut cpu, &ids, &[], &p, &mut Confidence, |_| Flow::Continue).unwrap();
        agree += usize::from(a.tokens == b.tokens);
    }
    assert!(agree + 1 >= prompts.len(), "{agree} of {} sampled generations agree with the CPU's", prompts.len());
}
