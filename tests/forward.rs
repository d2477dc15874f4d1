//! The forward pass against the numpy reference (tests/ref_forward.py, Hugging Face semantics on
//! the unpermuted source weights), on small random DiffuLLaMA checkpoints converted to each type.
//! Prints, per type, the max relative error and the top-1 agreement the bounds below come from.

mod common;

use std::path::Path;

use common::{argmax, checkpoint, convert, python, read_npy};
use dlm::{LoadOptions, Model};
use dlm_convert::OutType;

/// Reference logits from the source weights, or from `gguf`'s dequantized weights.
fn reference(hf: &Path, tokens: &[u32], causal: bool, gguf: Option<&Path>) -> Vec<f32> {
    let out = hf.with_file_name(format!("ref-{causal}-{}.npy", gguf.map_or("src".into(), |g| g.file_name().unwrap().to_string_lossy())));
    let toks = tokens.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",");
    let mut args = vec!["tests/ref_forward.py", hf.to_str().unwrap(), "--tokens", &toks, "--out", out.to_str().unwrap()];
    if causal {
        args.push("--causal");
    }
    if let Some(g) = gguf {
        args.extend(["--gguf", g.to_str().unwrap()]);
    }
    python(&args);
    let (shape, data) = read_npy(&out);
    assert_eq!(shape, vec![tokens.len(), 32000]);
    data
}

/// (max |a-b| / max |b|, fraction of rows with the same argmax); prints the RMS relative error too.
fn compare(got: &[f32], want: &[f32], n_vocab: usize) -> (f32, f32) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let sq = |it: &mut dyn Iterator<Item = f32>| it.map(|x| x as f64 * x as f64).sum::<f64>();
    let rms = (sq(&mut got.iter().zip(want).map(|(a, b)| a - b)) / sq(&mut want.iter().copied())).sqrt();
    print!("rms relative error {rms:.2e}; ");
    let rows = want.len() / n_vocab;
    let same = (0..rows).filter(|&i| argmax(&got[i * n_vocab..][..n_vocab]) == argmax(&want[i * n_vocab..][..n_vocab])).count();
    (err / scale, same as f32 / rows as f32)
}

/// BOS + "Today is a wonderful day," + 12 masks (DiffuLLaMA's canvas).
fn canvas(gguf: &Path) -> Vec<u32> {
    let g = dlm::Gguf::open(gguf).unwrap();
    let mut t = dlm::Tokenizer::from_gguf(&g).unwrap().encode("Today is a wonderful day,").unwrap();
    t.extend([dlm::keys::DIFFULLAMA_MASK_ID; 12]);
    t
}

#[test]
fn bidirectional_logits_match_numpy_reference_per_type() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    checkpoint(&hf, &["--dtype", "bf16", "--shards", "2"]);
    // Per type: (max relative error, min top-1) against the source weights, which includes the
    // loss of quantizing a random model (near-uniform logits, so top-1 flips easily), and the
    // max relative error against the file's own dequantized weights, which leaves only our
    // arithmetic (ggml rounds activations to f16 / q8 inside quantized matmuls).
    let bounds = [
        (OutType::F32, 1e-4, 1.0, 1e-4),
        (OutType::F16, 2e-3, 0.9, 2e-3),
        (OutType::Q8_0, 0.05, 0.75, 0.03),
        (OutType::Q4_0, 0.45, 0.4, 0.03),
    ];
    let mut want = None;
    for (kind, max_err, min_top1, max_err_deq) in bounds {
        let gguf = convert(&hf, kind);
        let tokens = canvas(&gguf);
        let want = want.get_or_insert_with(|| reference(&hf, &tokens, false, None));
        let mut m = Model::load(&gguf, &LoadOptions { threads: 2, ..Default::default() }).unwrap();
        assert!(!m.params().causal, "the converter marks DiffuLLaMA bidirectional");
        let got = m.forward(&tokens).unwrap();
        let (err, top1) = compare(&got, want, 32000);
        println!("{:>5} vs source weights: max relative error {err:.2e}, top-1 agreement {:.0}%", kind.name(), top1 * 100.0);
        let (err_deq, top1_deq) = compare(&got, &reference(&hf, &tokens, false, Some(&gguf)), 32000);
        println!("{:>5} vs its dequantized weights: max relative error {err_deq:.2e}, top-1 agreement {:.0}%", kind.name(), top1_deq * 100.0);
        assert!(err <= max_err, "{}: relative error {err:.2e} > {max_err:.0e}", kind.name());
        assert!(top1 >= min_top1, "{}: top-1 agreement {top1}", kind.name());
        assert!(err_deq <= max_err_deq, "{}: relative error vs dequantized {err_deq:.2e} > {max_err_deq:.0e}", kind.name());
        // The graph is cached per length: a second call with other tokens must not reuse stale inputs.
        let mut other = tokens.clone();
        other[1] = 100;
        let got2 = m.forward(&other).unwrap();
        assert!(got2.iter().zip(&got).any(|(a, b)| a != b));
        assert_eq!(m.forward(&tokens).unwrap(), got, "deterministic across calls");
    }
}

#[test]
fn grouped_kv_tied_embeddings_and_causal_switch_match_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("gqa");
    checkpoint(&hf, &["--dtype", "f32", "--shards", "1", "--kv-heads", "2", "--tie", "--heads", "8", "--hidden", "256"]);
    let gguf = convert(&hf, OutType::F32);
    let tokens = canvas(&gguf);
    for causal in [false, true] {
        let want = reference(&hf, &tokens, causal, None);
        let mut m = Model::load(&gguf, &LoadOptions { threads: 2, diffusion: dlm::model::DiffusionOverrides { causal: Some(causal), ..Default::default() }, ..Default::default() }).unwrap();
        assert!(m.params().tied_output && m.params().n_head_kv == 2);
        let (err, top1) = compare(&m.forward(&tokens).unwrap(), &want, 32000);
        println!("gqa causal={causal}: max relative error {err:.2e}, top-1 {:.0}%", top1 * 100.0);
        assert!(err <= 1e-4 && top1 == 1.0, "causal={causal}: {err:.2e}, {top1}");
    }
    // From 64 query rows on, ggml runs its tiled flash-attention kernel (bidirectional default);
    // 150 is not a multiple of the 64-row tile. Both attention paths must match the reference.
    let long: Vec<u32> = (0..150u32).map(|i| if i == 0 { 1 } else if i % 3 == 0 { 811 } else { (i * 7919) % 32000 }).collect();
    let want = reference(&hf, &long, false, None);
    for flash_attn in [true, false] {
        let mut m = Model::load(&gguf, &LoadOptions { threads: 2, flash_attn, ..Default::default() }).unwrap();
        let (err, top1) = compare(&m.forward(&long).unwrap(), &want, 32000);
        println!("150 tokens, flash_attn={flash_attn}: max relative error {err:.2e}, top-1 {:.0}%", top1 * 100.0);
        assert!(err <= 1e-4 && top1 == 1.0, "flash_attn={flash_attn}: {err:.2e}, {top1}");
    }
}

#[test]
fn bad_tokens_and_files_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    checkpoint(&hf, &["--shards", "1", "--layers", "1"]);
    let gguf = convert(&hf, OutType::Q8_0);
    let mut m = Model::load(&gguf, &LoadOptions::default()).unwrap();
    assert!(m.forward(&[]).is_err());
    let e = m.forward(&[1, 32000]).unwrap_err().to_string();
    assert!(e.contains("32000") && e.contains("vocabulary"), "{e}");
    let e = Model::load(tmp.path().join("nope.gguf"), &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("nope.gguf"), "{e}");
    std::fs::write(tmp.path().join("bad.gguf"), b"not a gguf at all").unwrap();
    let e = Model::load(tmp.path().join("bad.gguf"), &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("bad magic"), "{e}");
}
