//! Shared by the benchmarks: the random 7B-shaped and 1B-shaped checkpoints (generated once into
//! `target/bench-data/`), their GGUF conversions, timing, and argument filters.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use dlm_convert::{Options, OutType, Plan};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A random DiffuLLaMA checkpoint `target/bench-data/NAME` made by tests/make_checkpoint.py.
pub fn checkpoint(name: &str, flags: &[&str]) -> PathBuf {
    let root = root();
    let dir = root.join("target/bench-data").join(name);
    if !dir.join("config.json").exists() {
        let run = |args: &[&str]| {
            let ok = Command::new("python3").args(args).current_dir(&root).status().map(|s| s.success()).unwrap_or(false);
            assert!(ok, "python3 {args:?} failed (run `bash scripts/setup.sh` first)");
        };
        run(&["tests/fetch_data.py"]);
        let mut args = vec!["tests/make_checkpoint.py", dir.to_str().unwrap()];
        args.extend_from_slice(flags);
        run(&args);
    }
    dir
}

/// 7B-shaped layers: hidden 4096, 32 heads, FFN 11008, vocabulary 32000, two layers.
pub fn llama7b_2l() -> PathBuf {
    checkpoint("diffullama-7b-shape-2l", &["--layers", "2", "--hidden", "4096", "--heads", "32", "--ffn", "11008", "--shards", "2"])
}

/// `hf` converted to `kind` beside it (cached; rebuilt when the checkpoint is newer).
pub fn gguf(hf: &Path, kind: OutType) -> PathBuf {
    let out = hf.with_file_name(format!("{}-{}.gguf", hf.file_name().unwrap().to_string_lossy(), kind.name()));
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if stamp(&out).is_none() || stamp(&out) < stamp(&hf.join("config.json")) {
        let opts = Options { out_type: kind, mask_id: None, name: None, causal: false };
        Plan::new(hf, &opts).unwrap().write(&out, |_, _| {}).unwrap();
    }
    out
}

/// Whether a case named `name` runs: every non-flag argument of `cargo bench -- ARGS` is a
/// substring filter, as with the default harness.
pub fn selected(name: &str) -> bool {
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

/// The trained tiny DiffuLLaMA (`models/diffullama-tiny`) as Q4_0 (cached in target/bench-data).
pub fn tiny_q4() -> PathBuf {
    let out = root().join("target/bench-data/diffullama-tiny-q4_0.gguf");
    if !out.exists() {
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let opts = Options { out_type: OutType::Q4_0, mask_id: None, name: None, causal: false };
        Plan::new(&root().join("models/diffullama-tiny"), &opts).unwrap().write(&out, |_, _| {}).unwrap();
    }
    out
}

/// Seconds one call of `f` takes.
pub fn time<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t0 = Instant::now();
    let out = f();
    (t0.elapsed().as_secs_f64(), out)
}

/// Runs `ours` and `peer` alternately (so drift in the machine's speed hits both), one warm-up
/// each then `reps` timed runs; returns their median seconds. Both must return the same number
/// of logits.
pub fn alternate(reps: usize, mut ours: impl FnMut() -> Vec<f32>, mut peer: impl FnMut() -> Vec<f32>) -> (f64, f64) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for rep in 0..=reps {
        let (ta, la) = time(&mut ours);
        let (tb, lb) = time(&mut peer);
        assert_eq!(la.len(), lb.len());
        if rep > 0 {
            a.push(ta);
            b.push(tb);
        }
    }
    (median(a), median(b))
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// "DiffuLLaMA-1B shape": 22 layers, hidden 2048, 16 heads, FFN 5632, vocabulary 32000, with
/// the LM head scaled (std 0.5) so that per-position top probabilities spread over ~0.4–1.0
/// (5th–95th percentile on the first step: 0.43–0.98, a fifth of them ≥ 0.9) and
/// confidence-based rules have something to act on.
pub fn diffullama_1b_sharp() -> PathBuf {
    checkpoint(
        "diffullama-1b-shape-lm-head-0.5",
        &["--layers", "22", "--hidden", "2048", "--heads", "16", "--ffn", "5632", "--shards", "2", "--lm-head-std", "0.5"],
    )
}

/// DiffuLLaMA generation settings for the benchmarks: one block, no cache, restricted LM head,
/// no EOS (every run fills all `n_gen` positions); callers change what their case varies.
pub fn diffullama_params(n_gen: usize, steps: usize, sampler: dlm::sample::TokenSampler, seed: u64) -> dlm::generate::GenParams {
    dlm::generate::GenParams {
        n_gen,
        steps,
        block_length: None,
        sampler,
        seed,
        mask_id: dlm::keys::DIFFULLAMA_MASK_ID,
        shift_logits: true,
        eos: None,
        cache: Default::default(),
        full_lm_head: false,
        cfg_scale: 0.0,
        prune: Default::default(),
    }
}
