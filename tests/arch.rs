//! The diffusion architectures beside DiffuLLaMA: LLaDA (`llada`), Dream (`dream`) and DiffuGPT
//! (`gpt2`), in files written by PyPI `gguf` as llama.cpp's converter lays them out
//! (tests/pygguf_arch.py). Each is checked against two independent references:
//! - llama.cpp's own `llada`, `dream` and `gpt2` graphs (through the `llama-cpp-sys-2` build we
//!   link, attention made bidirectional): bit for bit under the same arithmetic (GPT-2: within
//!   5e-5, see below), within the per-type bounds with both sides' defaults;
//! - the numpy forward pass with Hugging Face semantics (tests/ref_forward.py: Qwen2's biases
//!   and rotate-half RoPE on unpermuted rows for Dream; GPT-2's learned positions, LayerNorm,
//!   fused Q/K/V and tanh GELU): f32 within 1e-4 relative (GPT-2 with ggml's f16 GELU table,
//!   which llama.cpp computes too; the exact GELU is reported beside it).
//! Plus the diffusion facts each family resolves, and bad files refused in one line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{argmax, python, read_npy};
use dlm::backend::ggml::{LlamaCpp, LlamaCppOptions};
use dlm::model::diffusion::Source;
use dlm::{LoadOptions, Model};

const N_VOCAB: usize = 32000;

fn gguf(dir: &Path, arch: &str, kind: &str, extra: &[&str]) -> PathBuf {
    python(&["tests/fetch_data.py"]);
    let out = dir.join(format!("{arch}-{kind}{}.gguf", extra.join("").replace(['-', '.'], "")));
    let mut args = vec!["tests/pygguf_arch.py", arch, out.to_str().unwrap(), "--type", kind];
    args.extend_from_slice(extra);
    python(&args);
    out
}

fn tokens() -> Vec<u32> {
    (0..37u32).map(|i| if i == 0 { 1 } else if i % 4 == 0 { 31999 } else { (i * 7919) % 32000 }).collect()
}

/// (max |a-b| / max |b|, rows with the same argmax).
fn compare(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
    let same = (0..a.len() / N_VOCAB).filter(|&i| argmax(&a[i * N_VOCAB..][..N_VOCAB]) == argmax(&b[i * N_VOCAB..][..N_VOCAB])).count();
    (err, same)
}

#[test]
fn llada_dream_and_gpt2_match_llama_cpp() {
    let tmp = tempfile::tempdir().unwrap();
    let toks = tokens();
    for arch in ["llada", "dream", "gpt2"] {
        for (kind, bound) in [("f32", 2e-3), ("q8_0", 3e-2), ("q4_0", 3e-2)] {
            let path = gguf(tmp.path(), arch, kind, &[]);
            for (exact, repack) in [(true, false), (true, true), (false, true)] {
                let mut ours = Model::load(&path, &LoadOptions { threads: 2, repack, flash_attn: !exact, ..Default::default() }).unwrap();
                assert_eq!(ours.params().arch, arch);
                assert!(!ours.params().causal, "{arch} is bidirectional");
                let a = ours.forward(&toks).unwrap();
                let o = if exact { LlamaCppOptions::same_arithmetic(2, 64, repack) } else { LlamaCppOptions::new(2, 64) };
                let mut peer = LlamaCpp::load(&path, &o).unwrap();
                let b = peer.forward(&toks).unwrap();
                let (err, same) = compare(&a, &b);
                println!("{arch} {kind} exact={exact} repack={repack}: max relative difference {err:.2e}, top-1 {same}/{}", toks.len());
                // llama.cpp runs `gpt2` (not a diffusion architecture there) through its key/value
                // cache, whose length is padded to a multiple of 32 (64 here, for 37 tokens): the
                // masked padding changes how its f32 attention sums, ~3e-5 (quantized weights
                // round the activations first, which hides it). At a length with no padding the
                // f32 graphs are bit for bit, checked below. With repacking, llama.cpp repacks
                // its copy of the tied head while ours multiplies by the embedding in the file's
                // layout (it is also a row lookup): ~1e-7.
                let bound = match (exact, arch, kind) {
                    (false, ..) => bound,
                    (true, "gpt2", "f32") => 5e-5,
                    (true, "gpt2", _) if repack => 1e-6,
                    _ => 0.0,
                };
                if exact && arch == "gpt2" {
                    let toks64: Vec<u32> = (0..64u32).map(|i| if i == 0 { 1 } else { (i * 7919) % 32000 }).collect();
                    let a = ours.forward(&toks64).unwrap();
                    let b = peer.forward(&toks64).unwrap();
                    let (err64, _) = compare(&a, &b);
                    println!("{arch} {kind} repack={repack}, 64 tokens (no cache padding): {err64:.2e}");
                    assert!(err64 <= if repack { 1e-6 } else { 0.0 }, "{arch} {kind} repack={repack} at 64 tokens: {err64:.3e}");
                }
                assert!(err <= bound, "{arch} {kind} exact={exact} repack={repack}: {err:.3e} vs llama.cpp");
                assert!(same * 10 >= toks.len() * 9, "{arch} {kind}: top-1 agrees on {same}/{}", toks.len());
            }
        }
    }
}

#[test]
fn llada_dream_and_gpt2_match_the_numpy_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let toks = tokens();
    let list = toks.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",");
    for arch in ["llada", "dream", "gpt2"] {
        let path = gguf(tmp.path(), arch, "f32", &[]);
        let npy = tmp.path().join(format!("{arch}.npy"));
        let mut args = vec!["tests/ref_forward.py", "--gguf", path.to_str().unwrap(), "--tokens", &list, "--out", npy.to_str().unwrap()];
        if arch == "gpt2" {
            // The exact GELU first, for the report: ggml's f16 table is what both runtimes compute.
            python(&args);
            let (_, exact) = read_npy(&npy);
            let mut m = Model::load(&path, &LoadOptions { threads: 2, ..Default::default() }).unwrap();
            let (err, _) = compare(&m.forward(&toks).unwrap(), &exact);
            println!("gpt2 f32 vs numpy with the exact tanh GELU: {err:.2e}");
            assert!(err <= 1e-3, "{err:.3e}");
            args.push("--ggml-gelu");
        }
        python(&args);
        let (shape, want) = read_npy(&npy);
        assert_eq!(shape, [toks.len(), N_VOCAB]);
        let mut m = Model::load(&path, &LoadOptions { threads: 2, ..Default::default() }).unwrap();
        let got = m.forward(&toks).unwrap();
        let (err, same) = compare(&got, &want);
        println!("{arch} f32 vs numpy: max relative difference {err:.2e}, top-1 {same}/{}", toks.len());
        assert!(err <= 1e-4, "{arch}: {err:.3e} from the numpy reference");
        assert_eq!(same, toks.len());
    }
}

#[test]
fn families_resolve_their_diffusion_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    // With the keys llama.cpp's converters write: the file decides.
    for (arch, shift) in [("llada", false), ("dream", true), ("gpt2", true)] {
        let m = Model::load(gguf(tmp.path(), arch, "q8_0", &[]), &LoadOptions::default()).unwrap();
        let d = m.diffusion();
        assert_eq!((d.mask_id, d.shift_logits, d.causal), (31999, shift, false), "{arch}");
        assert_eq!(d.sources[..2], [Source::File, Source::File]);
        assert_eq!(d.sources[2], Source::Family, "no attention.causal key: the family's");
        assert_eq!(d.assumed(), ["bidirectional attention"]);
    }
    // Without them, LLaDA's and Dream's own mask ids do not fit this 32000-token vocabulary: one
    // clear error naming the key, not a mask outside the embedding.
    for (arch, family, id) in [("llada", "LLaDA", 126336), ("dream", "Dream", 151666)] {
        let path = gguf(tmp.path(), arch, "q8_0", &["--no-diffusion-keys"]);
        let err = Model::load(&path, &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains(&format!("mask id {id}")) && err.contains("tokenizer.ggml.mask_token_id") && err.contains(family), "{err}");
        // An override makes the file runnable, with the family's shift.
        let over = dlm::model::DiffusionOverrides { mask_id: Some(5), ..Default::default() };
        let m = Model::load(&path, &LoadOptions { diffusion: over, ..Default::default() }).unwrap();
        assert_eq!(m.diffusion().shift_logits, arch == "dream");
        assert_eq!(m.diffusion().sources[..2], [Source::Override, Source::Family]);
    }
}

fn dlm_run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dlm-run")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn dlm_run_takes_each_familys_defaults_and_refuses_broken_files() {
    let tmp = tempfile::tempdir().unwrap();
    let llada = gguf(tmp.path(), "llada", "q8_0", &[]);
    let g = llada.to_str().unwrap();
    let (code, out, err) = dlm_run(&["-m", g, "--info", "-n", "40"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("family LLaDA"), "{out}");
    assert!(out.contains("--steps 40 --unmask confidence --block-length 32") && out.contains("--temp 0 --top-p 1"), "{out}");
    assert!(out.contains("logits shifted: false (file)"), "{out}");
    // A generation with the defaults: greedy, so two seeds give the same text.
    let run = |seed: &str| dlm_run(&["-m", g, "-p", "Hello", "-n", "12", "--backend", "cpu", "--no-display-prompt", "-s", seed, "-v"]);
    let (c1, t1, e1) = run("1");
    let (c2, t2, _) = run("2");
    assert!(c1 == 0 && c2 == 0, "{e1}");
    assert_eq!(t1, t2, "LLaDA's default is greedy with a deterministic order");
    assert!(e1.contains("--steps 12 --unmask confidence") && e1.contains("logits shifted false"), "{e1}");
    // Flags still win over the family.
    let (_, out, _) = dlm_run(&["-m", g, "--info", "--steps", "7", "--unmask", "margin", "--temp", "0.5"]);
    assert!(out.contains("--steps 7 --unmask margin") && out.contains("--temp 0.5"), "{out}");

    // llama-diffusion-cli's flag names, where the meaning matches.
    let (code, out, err) = dlm_run(&["-m", g, "--info", "--diffusion-steps", "9", "--diffusion-algorithm", "3", "--diffusion-block-length", "8"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("--steps 9 --unmask random --block-length 8"), "{out}");
    // Dream's timestep schedule replaces LLaDA's default blocks; with explicit blocks, or out of
    // (0, 1), or with a rule that does not rank positions, it is refused.
    let (code, _, err) = dlm_run(&["-m", g, "-p", "Hello", "-n", "12", "--diffusion-eps", "0.001", "--steps", "6", "--backend", "cpu", "-s", "1", "-v"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("--block-length off") && err.contains("--unmask confidence"), "{err}");
    // Dream's algorithm temperature rides on the timestep schedule, and changes which positions
    // go first (the same seed and a different order give a different canvas).
    let eps = ["-m", g, "-p", "Hello", "-n", "12", "--diffusion-eps", "0.001", "--steps", "6", "--backend", "cpu", "-s", "1", "--temp", "0"];
    let (code, plain, err) = dlm_run(&eps);
    assert_eq!(code, 0, "{err}");
    let (code, hot, err) = dlm_run(&[&eps[..], &["--diffusion-alg-temp", "5", "-v"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("--diffusion-eps 0.001 --diffusion-alg-temp 5"), "{err}");
    assert_ne!(plain, hot, "a hot alg_temp draws other positions first");
    // LLaDA's Gumbel-max sampling turns the family's truncation off and says so.
    let (code, _, err) = dlm_run(&[&eps[..2], &["-p", "Hello", "-n", "6", "--temp", "0.7", "--diffusion-add-gumbel-noise", "-v", "-s", "2"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("--temp 0.7 --diffusion-add-gumbel-noise --top-p 1 --top-k 0"), "{err}");
    // Classifier-free guidance under llama-diffusion-cli's name too.
    let (code, _, err) = dlm_run(&[&eps[..2], &["-p", "Hello", "-n", "6", "--diffusion-cfg-scale", "1.5", "-v", "-s", "2"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("--cfg-scale 1.5"), "{err}");
    for bad in [
        &["--diffusion-alg-temp", "0.5"][..],
        &["--diffusion-add-gumbel-noise", "--top-p", "0.9"],
        &["--cfg-scale", "1", "--cache", "prefix"],
        &["--cfg-scale", "-1"],
        &["--cfg-scale", "1e9"],
        &["--diffusion-eps", "0.001", "--diffusion-alg-temp", "-1"],
        &["--diffusion-algorithm", "5"][..],
        &["--diffusion-algorithm", "1", "--unmask", "margin"],
        &["--diffusion-eps", "0.001", "--block-length", "4"],
        &["--diffusion-eps", "1.5"],
        &["--diffusion-eps", "0.001", "--unmask", "threshold"],
    ] {
        let (code, _, err) = dlm_run(&[&["-m", g, "--info"][..], bad].concat());
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
    let (code, text, err) = dlm_run(&["-m", g, "-p", "Hello", "-n", "9", "--diffusion-algorithm", "3", "--no-display-prompt", "--backend", "cpu", "-s", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("tokens in"), "{text} {err}");

    let dream = gguf(tmp.path(), "dream", "q8_0", &[]);
    let (_, out, _) = dlm_run(&["-m", dream.to_str().unwrap(), "--info", "-n", "20"]);
    assert!(out.contains("family Dream") && out.contains("--steps 20 --unmask entropy --block-length off") && out.contains("--temp 0.2 --top-p 0.95"), "{out}");

    // Broken files: one line naming the tensor or key, exit 2.
    for (arch, extra, want) in [
        ("dream", vec!["--drop", "blk.1.attn_k.weight"], "blk.1.attn_k.weight"),
        ("llada", vec!["--drop", "output_norm.weight"], "output_norm.weight"),
        ("llada", vec!["--no-diffusion-keys"], "tokenizer.ggml.mask_token_id"),
        ("gpt2", vec!["--drop", "blk.0.attn_qkv.bias"], "blk.0.attn_qkv.bias"),
        ("gpt2", vec!["--drop", "position_embd.weight"], "position_embd.weight"),
    ] {
        let bad = gguf(tmp.path(), arch, "q8_0", &extra);
        let (code, _, err) = dlm_run(&["-m", bad.to_str().unwrap(), "-p", "x", "-n", "4"]);
        assert_eq!(code, 2, "{arch} {extra:?}: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].contains(want), "{arch} {extra:?}: {err}");
    }
}

#[test]
fn diffugpt_defaults_and_its_position_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let path = gguf(tmp.path(), "gpt2", "q8_0", &["--no-diffusion-keys"]);
    // DiffuGPT-S's mask id 10541 fits this vocabulary: the family's facts apply as they are.
    let mut m = Model::load(&path, &LoadOptions::default()).unwrap();
    let d = m.diffusion();
    assert_eq!((d.family.name, d.mask_id, d.shift_logits, d.causal), ("DiffuGPT", 10541, true, false));
    assert!(m.params().tied_output);
    // Learned positions end at the context length (256 here): one more is an error, not a read
    // past the position table.
    assert!(m.forward(&vec![5; 256]).is_ok());
    let err = m.forward(&vec![5; 257]).unwrap_err().to_string();
    assert!(err.contains("257 tokens") && err.contains("256 positions"), "{err}");
    let g = path.to_str().unwrap();
    let (code, out, err) = dlm_run(&["-m", g, "--info", "-n", "16"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("family DiffuGPT") && out.contains("--steps 64 --unmask origin") && out.contains("--temp 0.95"), "{out}");
    let (code, _, err) = dlm_run(&["-m", g, "-p", "x", "-n", "300"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.lines().filter(|l| l.starts_with("error")).count() == 1 && err.contains("exceeds"), "{err}");
}

#[test]
fn wgpu_runs_every_architecture_as_the_cpu_does() {
    if !common::have_adapter() {
        return;
    }
    // Our WGSL kernels (NEOX RoPE, biases, LayerNorm, GELU with ggml's f16 rounding, the fused
    // Q/K/V slices) against ggml's CPU graph on the same f32 files.
    let tmp = tempfile::tempdir().unwrap();
    let toks = tokens();
    for arch in ["llada", "dream", "gpt2"] {
        let path = gguf(tmp.path(), arch, "f32", &[]);
        let cpu = Model::load(&path, &LoadOptions { threads: 2, ..Default::default() }).unwrap().forward(&toks).unwrap();
        let mut gpu = Model::load(&path, &LoadOptions { backend: dlm::Backend::Wgpu, ..Default::default() }).unwrap();
        let (err, same) = compare(&gpu.forward(&toks).unwrap(), &cpu);
        println!("{arch} f32 wgpu vs ggml CPU: {err:.2e}, top-1 {same}/{}", toks.len());
        assert!(err <= 1e-3, "{arch}: {err:.3e}");
        assert_eq!(same, toks.len(), "{arch}");
    }
}
