//! dlm-convert on the other families' Hugging Face checkpoints: LLaDA (`LLaDAModelLM`, OLMo-style
//! names), Dream (`DreamModel`, Qwen2 with Q/K/V biases) and DiffuGPT (`GPT2LMHeadModel`, Conv1D
//! weights), each small, random and in its real layout with GPT-2's real tokenizer
//! (tests/make_checkpoint.py --arch). Checked three independent ways: PyPI `gguf` against the
//! source (tests/check_gguf_arch.py: metadata, tokenizer arrays, every tensor after the family's
//! transform), the numpy forward pass run on the Hugging Face checkpoint itself
//! (tests/ref_forward.py), and GPT-2's published token ids. The quantized files load and agree
//! with the source's top-1 predictions.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dlm::{LoadOptions, Model, Tokenizer};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn python(args: &[&str]) -> String {
    let out = Command::new("python3").args(args).current_dir(root()).output().expect("python3 runs");
    assert!(out.status.success(), "{args:?}:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn checkpoint(dir: &Path, arch: &str, extra: &[&str]) {
    python(&["tests/fetch_data.py"]);
    let mut args = vec!["tests/make_checkpoint.py", dir.to_str().unwrap(), "--arch", arch];
    args.extend_from_slice(extra);
    python(&args);
}

fn convert(input: &Path, output: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlm-convert")).arg(input).arg("-o").arg(output).arg("--quiet").args(extra).output().unwrap()
}

fn converted(hf: &Path, kind: &str) -> (PathBuf, String) {
    let out = hf.with_file_name(format!("{}-{kind}.gguf", hf.file_name().unwrap().to_string_lossy()));
    let o = convert(hf, &out, &["--type", kind]);
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "dlm-convert {kind}: {log}");
    (out, log)
}

fn read_npy(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    assert!(std::str::from_utf8(&b[10..10 + hlen]).unwrap().contains("'descr': '<f4'"));
    b[10 + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn argmax(r: &[f32]) -> usize {
    r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

#[test]
fn llada_dream_and_diffugpt_checkpoints_convert_check_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    for (arch, family, mask) in [("llada", "LLaDA", 50257), ("dream", "Dream", 50257), ("gpt2", "DiffuGPT", 10541)] {
        let hf = tmp.path().join(arch);
        checkpoint(&hf, arch, &["--dtype", "bf16", "--shards", "2", "--kv-heads", "2"]);
        for kind in ["f32", "q8_0", "q4_k_m"] {
            let (out, log) = converted(&hf, kind);
            assert!(log.contains(&format!("{family} ({arch})")) && log.contains(&format!("mask id {mask}")), "{log}");
            println!("{}", python(&["tests/check_gguf_arch.py", hf.to_str().unwrap(), out.to_str().unwrap(), kind]).trim());
        }

        // The f32 file's logits against the numpy forward pass on the Hugging Face weights.
        let (f32_file, _) = converted(&hf, "f32");
        let n_vocab = if arch == "gpt2" { 50257 } else { 50304 };
        let toks: Vec<u32> = (0..29u32).map(|i| if i % 5 == 4 { mask } else { (i * 7919 + 11) % 50257 }).collect();
        let list = toks.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",");
        let npy = tmp.path().join(format!("{arch}.npy"));
        let mut args = vec!["tests/ref_forward.py", hf.to_str().unwrap(), "--tokens", &list, "--out", npy.to_str().unwrap()];
        if arch == "gpt2" {
            args.push("--ggml-gelu"); // ggml's f16 GELU table, which dlm computes (tests/arch.rs)
        }
        python(&args);
        let want = read_npy(&npy);
        let mut m = Model::load(&f32_file, &LoadOptions { threads: 2, ..Default::default() }).unwrap();
        assert_eq!((m.params().arch.as_str(), m.params().causal, m.params().n_vocab), (arch, false, n_vocab));
        let got = m.forward(&toks).unwrap();
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = got.iter().zip(&want).fold(0f32, |a, (x, y)| a.max((x - y).abs())) / scale;
        let same = (0..toks.len()).filter(|&i| argmax(&got[i * n_vocab..][..n_vocab]) == argmax(&want[i * n_vocab..][..n_vocab])).count();
        println!("{arch}: converted f32 vs numpy on the HF checkpoint: {err:.2e}, top-1 {same}/{}", toks.len());
        assert!(err <= 1e-4, "{arch}: {err:.3e}");
        assert_eq!(same, toks.len());

        // The quantized files load, and q8_0 predicts as the source does.
        for kind in ["q8_0", "q4_k_m"] {
            let q = hf.with_file_name(format!("{arch}-{kind}.gguf"));
            let mut m = Model::load(&q, &LoadOptions { threads: 2, ..Default::default() }).unwrap();
            let got = m.forward(&toks).unwrap();
            assert!(got.iter().all(|x| x.is_finite()));
            let same = (0..toks.len()).filter(|&i| argmax(&got[i * n_vocab..][..n_vocab]) == argmax(&want[i * n_vocab..][..n_vocab])).count();
            println!("{arch} {kind}: top-1 {same}/{} with the source", toks.len());
            // Random weights amplify 4-bit rounding (a 15/29 agreement is typical); q8_0 must hold.
            if kind == "q8_0" {
                assert!(same * 10 >= toks.len() * 8, "{arch} {kind}: top-1 {same}/{}", toks.len());
            }
        }
    }
}

#[test]
fn gpt2_tokenizer_files_and_prefixes_give_gpt2s_own_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("json");
    let b = tmp.path().join("files");
    checkpoint(&a, "gpt2", &["--dtype", "f16", "--shards", "1", "--layers", "1"]);
    checkpoint(&b, "gpt2", &["--dtype", "f16", "--shards", "1", "--layers", "1", "--vocab-files", "--no-prefix"]);
    assert!(!b.join("tokenizer.json").exists() && b.join("merges.txt").exists());
    let (ga, _) = converted(&a, "q8_0");
    let (gb, _) = converted(&b, "q8_0");
    python(&["tests/check_gguf_arch.py", b.to_str().unwrap(), gb.to_str().unwrap(), "q8_0"]);
    let text = "Hello world! It's 2024:\n\tdiffusion   models<|endoftext|>";
    let mut seen = Vec::new();
    for g in [&ga, &gb] {
        let gguf = dlm::Gguf::open(g).unwrap();
        // The embedded tokenizer.json and the llama.cpp arrays (tokens, merges, `pre = gpt-2`).
        for tok in [Tokenizer::from_gguf_json(&gguf).unwrap(), Tokenizer::from_gguf_arrays(&gguf).unwrap()] {
            assert!(!tok.add_bos, "GPT-2 adds no BOS");
            // GPT-2's published ids: "Hello world" is [15496, 995].
            assert_eq!(tok.encode("Hello world").unwrap(), [15496, 995]);
            let ids = tok.encode(text).unwrap();
            // Decoding drops special tokens, as dlm-run prints text.
            assert_eq!(tok.decode(&ids).unwrap(), text.trim_end_matches("<|endoftext|>"));
            seen.push(ids);
        }
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    // A byte-level file that does not say whether to add BOS (llama.cpp's converter may leave
    // the key out) adds none, as llama.cpp does; a SentencePiece one does.
    let g = dlm::Gguf::open(&ga).unwrap();
    let bare = tmp.path().join("bare.gguf");
    let mut w = dlm::GgufWriter::new();
    for (k, v) in g.metadata() {
        if k != dlm::keys::ADD_BOS && k != dlm::keys::HF_JSON {
            w.set(k, v.clone()).unwrap();
        }
    }
    w.create(&bare).unwrap().finish().unwrap();
    let tok = Tokenizer::from_gguf(&dlm::Gguf::open(&bare).unwrap()).unwrap();
    assert!(!tok.add_bos && tok.encode("Hello world").unwrap() == [15496, 995]);
    assert_eq!(*seen[0].last().unwrap(), 50256, "<|endoftext|> is one special token");
}

#[test]
fn broken_family_checkpoints_fail_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let edit = |path: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(path, v.to_string()).unwrap();
    };
    let cases: Vec<(&str, &[&str], Box<dyn Fn(&Path)>, &[&str])> = vec![
        ("dream without a K bias", &["--drop", "model.layers.1.self_attn.k_proj.bias"], Box::new(|_: &Path| {}), &["model.layers.1.self_attn.k_proj.bias", "missing"]),
        ("llada with biases", &[], Box::new(move |d: &Path| edit(&d.join("config.json"), &|v| v["include_bias"] = true.into())), &["include_bias", "not supported"]),
        ("gpt2 with ReLU", &[], Box::new(move |d: &Path| edit(&d.join("config.json"), &|v| v["activation_function"] = "relu".into())), &["activation_function", "relu", "gelu_new"]),
        ("gpt2 FFN disagrees", &[], Box::new(move |d: &Path| edit(&d.join("config.json"), &|v| v["n_inner"] = 512.into())), &["h.0.mlp.c_fc.weight", "[256, 1024]", "[256, 512]"]),
        ("dream vocabulary below its tokenizer", &[], Box::new(move |d: &Path| edit(&d.join("config.json"), &|v| v["vocab_size"] = 50000.into())), &["tokenizer.json", "not below 50000 (config.json vocab_size)"]),
        ("unknown family", &[], Box::new(move |d: &Path| edit(&d.join("config.json"), &|v| { v["architectures"] = serde_json::json!(["MambaForCausalLM"]); v["model_type"] = "mamba".into(); })), &["architectures", "MambaForCausalLM", "LLaDAModelLM", "GPT2LMHeadModel"]),
        ("mask id outside", &[], Box::new(move |d: &Path| edit(&d.join("config.json"), &|v| v["mask_token_id"] = 60000.into())), &["mask id 60000", "config.json mask_token_id", "outside"]),
        ("a vocabulary padded by billions", &[], Box::new(move |d: &Path| edit(&d.join("config.json"), &|v| v["vocab_size"] = 4_000_000_000u64.into())), &["vocab_size", "4000000000", "at most 65536 padding rows"]),
        ("a token id far beyond the vocabulary", &["--vocab-files"], Box::new(move |d: &Path| edit(&d.join("vocab.json"), &|v| v["ZZZ"] = 16_777_215.into())), &["vocab.json", "16777215", "not below 50257"]),
        ("a merge of unknown tokens", &["--vocab-files"], Box::new(|d: &Path| {
            let p = d.join("merges.txt");
            let text = std::fs::read_to_string(&p).unwrap() + "QQQQ RRRR\n";
            std::fs::write(p, text).unwrap();
        }), &["merges.txt", "line 50002", "QQQQ", "vocab.json does not have"]),
        ("LLaDA's own key in the message", &[], Box::new(move |d: &Path| edit(&d.join("config.json"), &|v| v["n_heads"] = 3.into())), &["`n_heads`", "does not divide"]),
        ("an epsilon that is zero in f32", &[], Box::new(move |d: &Path| edit(&d.join("config.json"), &|v| v["rms_norm_eps"] = 1e-300.into())), &["rms_norm_eps", "nonzero in f32"]),
    ];
    for (i, (what, flags, breaks, expect)) in cases.iter().enumerate() {
        let arch = ["dream", "llada", "gpt2", "gpt2", "dream", "llada", "llada", "dream", "gpt2", "gpt2", "llada", "dream"][i];
        let hf = tmp.path().join(format!("case{i}"));
        let mut extra = vec!["--dtype", "f16", "--shards", "1", "--layers", "2"];
        extra.extend_from_slice(flags);
        checkpoint(&hf, arch, &extra);
        breaks(&hf);
        let out = tmp.path().join(format!("case{i}.gguf"));
        let o = convert(&hf, &out, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
        for e in expect.iter() {
            assert!(err.contains(e), "{what}: `{e}` not in: {err}");
        }
        assert!(!out.exists(), "{what}: no output is written");
    }
}
