//! Device-side candidates: the backend reduces each logits row to what a greedy step needs
//! ([`RowStats`]), and the candidates made from them equal the host sampler's token and f64
//! scores on the same logits: on ggml's CPU backend, and through the wgpu backend (lavapipe in CI). Also: ties go to
//! the lowest id as on the host, and whole generations here give the same answers with the
//! reduction on as off (in general they can differ where two positions' scores are within the
//! host sampler's f32 rounding, which reorders commits: README, Backends).

mod common;

use std::path::{Path, PathBuf};

use common::{checkpoint, convert, convert_to, root};
use dlm::generate::{generate, generate_batch, Cache, Flow, GenParams};
use dlm::model::Pass;
use dlm::sample::{Candidate, Confidence, Entropy, Margin, Origin, RowStats, Threshold, TokenSampler, Unmasker};
use dlm::{Backend, Gguf, LoadOptions, Model, Tokenizer};
use dlm_convert::OutType;

fn load(path: &Path, backend: Backend) -> Model {
    Model::load(path, &LoadOptions { threads: 2, backend, ..Default::default() }).unwrap()
}

const GREEDY: TokenSampler = TokenSampler { temp: 0.0, top_k: 0, top_p: 1.0, gumbel: false };

/// Compares each row's reduced candidate with the host sampler's token and with scores
/// computed in f64 from the same logits. (Not with the host sampler's scores: it sums in f32 in
/// id order, as it always has, and at 32000 ids that drops up to ~2e-5 of the softmax
/// denominator in terms too small to register, which the reductions here do not.)
fn check_rows(logits: &[f32], stats: &[RowStats], n_vocab: usize, what: &str) {
    assert_eq!(logits.len(), stats.len() * n_vocab, "{what}");
    let mut rng = dlm::sample::Rng::new(0);
    for (i, (row, st)) in logits.chunks(n_vocab).zip(stats).enumerate() {
        let host: Candidate = GREEDY.sample(row, &mut rng);
        let got = st.candidate();
        let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let z: f64 = row.iter().map(|&x| (x as f64 - mx).exp()).sum();
        let zy: f64 = row.iter().map(|&x| (x as f64 - mx).exp() * (x as f64 - mx)).sum();
        let n_max = row.iter().filter(|&&x| x as f64 == mx).count();
        let second = if n_max > 1 { mx } else { row.iter().map(|&x| x as f64).filter(|&x| x < mx).fold(f64::NEG_INFINITY, f64::max) };
        let (confidence, margin, entropy) = (1.0 / z, (1.0 - (second - mx).exp()) / z, z.ln() - zy / z);
        let ctx = format!("{what}, row {i}: host {host:?}, reduced {got:?} ({st:?}), f64 {confidence} {margin} {entropy}");
        assert!(st.is_finite(), "{ctx}");
        assert_eq!(got.token, host.token, "{ctx}");
        let close = |a: f32, b: f64, rel: f64, abs: f64| (a as f64 - b).abs() <= rel * b.abs() + abs;
        assert!(close(got.confidence, confidence, 1e-5, 1e-7), "confidence: {ctx}");
        assert!(close(got.margin, margin, 1e-5, 1e-6), "margin: {ctx}");
        assert!(close(got.entropy, entropy, 1e-4, 1e-5), "entropy: {ctx}");
    }
}

/// Every way a pass can be reduced (full, stored, reused, batched) against the logits of the
/// same pass, on `backend`.
fn passes_match(gguf: &Path, backend: Backend, what: &str) {
    let tok = Tokenizer::from_gguf(&Gguf::open(gguf).unwrap()).unwrap();
    let mut m = load(gguf, backend);
    let v = m.params().n_vocab;
    let cases = common::masked_canvases(&tok, 97, 6);
    for (canvas, rows) in &cases {
        let logits = m.forward_rows(canvas, Pass::Full, Some(rows)).unwrap();
        check_rows(&logits, &m.forward_rows_stats(canvas, Pass::Full, rows).unwrap(), v, &format!("{what} full"));
        // A stored pass, then a reused one over the masked block (Fast-dLLM's dual cache).
        let logits = m.forward_rows(canvas, Pass::Store { cache: 1 }, Some(rows)).unwrap();
        check_rows(&logits, &m.forward_rows_stats(canvas, Pass::Store { cache: 1 }, rows).unwrap(), v, &format!("{what} store"));
        let reuse = Pass::Reuse { cache: 1, start: rows[0], end: canvas.len() };
        let logits = m.forward_rows(canvas, reuse, Some(rows)).unwrap();
        check_rows(&logits, &m.forward_rows_stats(canvas, reuse, rows).unwrap(), v, &format!("{what} reuse"));
    }
    let seqs: Vec<&[u32]> = cases.iter().map(|(c, _)| c.as_slice()).collect();
    let rows: Vec<&[usize]> = cases.iter().map(|(_, r)| r.as_slice()).collect();
    let logits = m.forward_batch(&seqs, &rows).unwrap();
    check_rows(&logits, &m.forward_batch_stats(&seqs, &rows).unwrap(), v, &format!("{what} batch"));
}

fn trained(dir: &Path, kind: OutType) -> PathBuf {
    let out = dir.join(format!("tiny-{}.gguf", kind.name()));
    convert_to(&root().join("models/diffullama-tiny"), kind, false, &out);
    out
}

#[test]
fn reduced_rows_equal_the_host_sampler_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    for kind in [OutType::F16, OutType::Q4_0] {
        passes_match(&trained(tmp.path(), kind), Backend::Cpu, &format!("cpu {}", kind.name()));
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn reduced_rows_equal_the_host_sampler_on_wgpu() {
    if !common::have_adapter() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    passes_match(&trained(tmp.path(), OutType::F16), Backend::Wgpu, "wgpu f16");
}

fn tied_rows_go_to_the_lowest_id_on(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    checkpoint(&hf, &[]);
    let base = convert(&hf, OutType::F32);
    let canvas: Vec<u32> = (0..40u32).map(|i| if i >= 20 { dlm::keys::DIFFULLAMA_MASK_ID } else { 1 + i * 37 }).collect();
    let rows: Vec<usize> = (19..39).collect();
    let mut m = load(&base, Backend::Cpu);
    let v = m.params().n_vocab;
    let logits = m.forward_rows(&canvas, Pass::Full, Some(&rows)).unwrap();
    let tops: Vec<usize> = logits.chunks(v).map(common::argmax).collect();
    let mut dups: Vec<(usize, usize)> = tops.iter().filter(|&&a| a > 1).map(|&a| (a, a / 2)).collect();
    dups.sort_unstable();
    dups.dedup();
    drop(m);
    let tied = tmp.path().join("tied.gguf");
    common::with_tied_rows(&base, &dups, &tied);
    let mut m = load(&tied, backend);
    let logits = m.forward_rows(&canvas, Pass::Full, Some(&rows)).unwrap();
    let stats = m.forward_rows_stats(&canvas, Pass::Full, &rows).unwrap();
    let mut ties = 0;
    for (row, st) in logits.chunks(v).zip(&stats) {
        let top = common::argmax(row);
        if dups.iter().any(|&(a, b)| row[a] == row[b] && (top == a || top == b)) {
            ties += 1;
            assert_eq!(st.second, 0.0, "a tied maximum has no margin");
        }
    }
    assert!(ties >= rows.len() / 2, "the construction ties the maximum in most rows: {ties}");
    check_rows(&logits, &stats, v, &format!("{backend:?} tied rows"));
}

#[test]
fn tied_rows_go_to_the_lowest_id_on_the_cpu() {
    tied_rows_go_to_the_lowest_id_on(Backend::Cpu);
}

#[cfg(feature = "wgpu")]
#[test]
fn tied_rows_go_to_the_lowest_id_on_wgpu() {
    if !common::have_adapter() {
        return;
    }
    tied_rows_go_to_the_lowest_id_on(Backend::Wgpu);
}

/// Whole generations with the reduction forced on give the answers they give without it: every
/// greedy rule, blocks with both caches, and batches (greedy, and sampled: stays on logits).
#[test]
fn generations_with_device_candidates_give_the_same_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = trained(tmp.path(), OutType::Q8_0);
    let tok = Tokenizer::from_gguf(&Gguf::open(&gguf).unwrap()).unwrap();
    let mut m = load(&gguf, Backend::Cpu);
    assert!(!m.device_candidates(), "off by default on the CPU");
    let d = m.diffusion().clone();
    let base = GenParams {
        n_gen: 12,
        steps: 12,
        block_length: None,
        sampler: GREEDY,
        seed: 5,
        mask_id: d.mask_id,
        shift_logits: d.shift_logits,
        eos: tok.eos,
        cache: Cache::None,
        full_lm_head: false,
        cfg_scale: 0.0,
        prune: Default::default(),
    };
    let prompts = ["add 17 38:", "reverse 4821:", "copy 90713:"];
    let rules: Vec<(&str, fn() -> Box<dyn Unmasker>)> = vec![
        ("confidence", || Box::new(Confidence)),
        ("entropy", || Box::new(Entropy)),
        ("margin", || Box::new(Margin)),
        ("threshold", || Box::new(Threshold(0.9))),
        ("origin", || Box::new(Origin)),
    ];
    let settings = [
        base.clone(),
        GenParams { block_length: Some(4), steps: 12, cache: Cache::Dual, ..base.clone() },
        GenParams { block_length: Some(6), steps: 6, cache: Cache::Prefix, ..base.clone() },
    ];
    let (mut compared, mut steps_differ) = (0, 0);
    for (name, rule) in &rules {
        for p in &settings {
            for prompt in prompts {
                let ids = tok.prompt_ids(prompt).unwrap();
                let mut run = |on: bool| {
                    m.set_device_candidates(Some(on));
                    generate(&mut m, &ids, &[], p, rule().as_mut(), |_| Flow::Continue).unwrap()
                };
                let (off, on) = (run(false), run(true));
                assert_eq!(on.tokens, off.tokens, "{name} {p:?} {prompt}");
                // The order of commits can differ where two positions' confidences are within
                // the host sampler's f32 rounding of each other (see `check_rows`); then a
                // position holding the end token is committed a step earlier or later.
                steps_differ += usize::from(on.steps != off.steps);
                compared += 1;
            }
        }
    }
    // A batch: greedy sequences reduced together; with one sampled, the group takes logits.
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.prompt_ids(p).unwrap()).collect();
    let refs: Vec<(&[u32], &[u32])> = ids.iter().map(|x| (x.as_slice(), &[][..])).collect();
    for sampler in [GREEDY, TokenSampler { temp: 0.7, top_p: 0.9, ..GREEDY }] {
        let p = GenParams { sampler, ..base.clone() };
        let mut run = |on: bool| {
            m.set_device_candidates(Some(on));
            generate_batch(&mut m, &refs, &p, &|| Box::new(Confidence), |_| Flow::Continue).unwrap()
        };
        let (off, on) = (run(false), run(true));
        for (a, b) in off.iter().zip(&on) {
            assert_eq!(a.tokens, b.tokens, "batch {sampler:?}");
        }
    }
    assert_eq!(compared, rules.len() * settings.len() * prompts.len());
    assert!(steps_differ * 5 <= compared, "{steps_differ} of {compared} generations took other steps");
}


#[cfg(any(feature = "cuda", feature = "metal", feature = "vulkan"))]
#[test]
fn reduced_rows_equal_the_host_sampler_on_a_ggml_gpu() {
    let Some(backend) = common::ggml_gpu() else { return };
    let tmp = tempfile::tempdir().unwrap();
    passes_match(&trained(tmp.path(), OutType::F16), backend, &format!("{backend:?} f16"));
    tied_rows_go_to_the_lowest_id_on(backend);
    // On a GPU backend the reduction is on by default.
    assert!(load(&trained(tmp.path(), OutType::Q8_0), backend).device_candidates());
}
