//! dlm-convert end to end: small random checkpoints in the real HF layout (tests/make_checkpoint.py)
//! converted to every type, checked by PyPI `gguf` (tests/check_gguf.py) and by our own reader and
//! tokenizer; bad inputs give a clear error and leave no output behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use dlm::gguf::Gguf;
use dlm::tokenizer::TokenizerSource;
use dlm::Tokenizer;
use dlm_convert::OutType;
use clap::ValueEnum as _;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn python(args: &[&str]) -> Output {
    Command::new("python3").args(args).current_dir(root()).output().expect("python3 runs")
}

fn ensure_data() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = python(&["tests/fetch_data.py"]);
        assert!(out.status.success(), "fetch_data.py: {}", String::from_utf8_lossy(&out.stderr));
    });
}

fn make_checkpoint(dir: &Path, extra: &[&str]) {
    ensure_data();
    let mut args = vec!["tests/make_checkpoint.py", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = python(&args);
    assert!(out.status.success(), "make_checkpoint.py: {}", String::from_utf8_lossy(&out.stderr));
}

fn convert(input: &Path, output: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlm-convert"))
        .arg(input)
        .arg("-o")
        .arg(output)
        .arg("--quiet")
        .args(extra)
        .output()
        .unwrap()
}

fn assert_ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "dlm-convert failed: {err}");
    err
}

fn pycheck(hf: &Path, gguf: &Path, kind: &str, extra: &[&str]) {
    let mut args = vec!["tests/check_gguf.py", hf.to_str().unwrap(), gguf.to_str().unwrap(), kind];
    args.extend_from_slice(extra);
    let out = python(&args);
    assert!(
        out.status.success(),
        "check_gguf.py {kind}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
}

const PROMPTS: &[&str] = &["Today is a wonderful day,", " grabbed\n\ttabs 🦙Ꙋ", "ти"];

#[test]
fn every_type_matches_the_source_by_pypi_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    make_checkpoint(&hf, &["--dtype", "bf16", "--shards", "2"]);
    let reference = Tokenizer::from_hf(tokenizers::Tokenizer::from_file(hf.join("tokenizer.json")).unwrap(), Some(1), Some(2), true);
    for kind in ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q6_k"] {
        let out = tmp.path().join(format!("m-{kind}.gguf"));
        let log = assert_ok(&convert(&hf, &out, &["--type", kind]));
        assert!(log.contains("21 tensors") && log.contains("bits/weight"), "summary missing: {log}");
        pycheck(&hf, &out, kind, &[]);

        // Our own reader and both tokenizer paths on the written file.
        let g = Gguf::open(&out).unwrap();
        assert_eq!(g.tensors().len(), 21);
        assert_eq!(g.get_u32(dlm::keys::MASK_ID).unwrap(), 811);
        assert!(g.get_bool(dlm::keys::SHIFT_LOGITS).unwrap());
        let embedded = Tokenizer::from_gguf(&g).unwrap();
        let rebuilt = Tokenizer::from_gguf_arrays(&g).unwrap();
        assert_eq!((embedded.source, rebuilt.source), (TokenizerSource::EmbeddedJson, TokenizerSource::SpmArrays));
        for p in PROMPTS {
            let want = reference.encode(p).unwrap();
            assert_eq!(embedded.encode(p).unwrap(), want, "{kind}: embedded, {p:?}");
            assert_eq!(rebuilt.encode(p).unwrap(), want, "{kind}: rebuilt from arrays, {p:?}");
        }
    }
}

#[test]
fn ragged_rows_fall_back_and_tied_gqa_f16_sources_convert() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    // FFN 640 is not a multiple of 256: ffn_down rows cannot be K-quants.
    make_checkpoint(&hf, &["--ffn", "640", "--dtype", "f16", "--shards", "1", "--tie", "--kv-heads", "2"]);
    let out = tmp.path().join("m.gguf");
    let log = assert_ok(&convert(&hf, &out, &["--type", "q4_k_m", "--mask-id", "5"]));
    assert!(log.contains("note: blk.0.ffn_down.weight") && log.contains("using q8_0"), "fallback not reported: {log}");
    assert!(log.contains("note: blk.1.ffn_down.weight") && log.contains("using q5_0"), "fallback not reported: {log}");
    pycheck(&hf, &out, "q4_k_m", &["--mask-id", "5"]);
    let g = Gguf::open(&out).unwrap();
    assert!(g.tensor("output.weight").is_none(), "tied embeddings write no output.weight");
    assert_eq!(g.get_u32("llama.attention.head_count_kv").unwrap(), 2);
}

#[test]
fn f32_source_with_mask_token_in_tokenizer_config() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    make_checkpoint(&hf, &["--dtype", "f32", "--shards", "3", "--layers", "3"]);
    let cfg_path = hf.join("tokenizer_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["mask_token"] = serde_json::json!({"content": "<unk>", "special": true});
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = tmp.path().join("m.gguf");
    let log = assert_ok(&convert(&hf, &out, &["--type", "f32"]));
    assert!(log.contains("mask id 0 (tokenizer_config.json mask_token)"), "{log}");
    pycheck(&hf, &out, "f32", &["--mask-id", "0"]);
}

/// Relative RMS difference of two tensors after ggml's dequantization.
fn rel_diff(a: &Gguf, b: &Gguf, name: &str) -> f64 {
    let values = |g: &Gguf| {
        let t = g.tensor(name).unwrap();
        let mut v = vec![0f32; t.n_elements() as usize];
        dlm::backend::ggml::dequantize(t.ggml_type, g.tensor_data(t), &mut v).unwrap();
        v
    };
    let (x, y) = (values(a), values(b));
    let num: f64 = x.iter().zip(&y).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
    let den: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn gguf_input_is_requantized_keeping_every_key() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    // FFN 640: ffn_down rows fall back from K-quants in the re-quantization too.
    make_checkpoint(&hf, &["--dtype", "bf16", "--shards", "1", "--ffn", "640"]);
    let f32_file = tmp.path().join("m-f32.gguf");
    assert_ok(&convert(&hf, &f32_file, &["--type", "f32"]));
    let f32_arg = ["--same-metadata", f32_file.to_str().unwrap()];

    // From f32 the quantizer sees exactly the values a conversion from the bf16 checkpoint
    // gives it: the file must be the direct conversion's, byte for byte.
    for kind in ["f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q6_k"] {
        let direct = tmp.path().join(format!("d-{kind}.gguf"));
        let requant = tmp.path().join(format!("r-{kind}.gguf"));
        assert_ok(&convert(&hf, &direct, &["--type", kind]));
        let log = assert_ok(&convert(&f32_file, &requant, &["--type", kind]));
        assert!(log.contains("re-quantizing") && log.contains("21 tensors: 21 f32"), "{kind}: {log}");
        assert!(log.contains("5 copied unchanged"), "{kind}: the 1-D norms stay f32: {log}");
        if kind.starts_with("q4_k") || kind == "q6_k" {
            assert!(log.contains("note: blk.0.ffn_down.weight: row length 640"), "{kind}: fallback not reported: {log}");
        }
        pycheck(&hf, &requant, kind, &f32_arg);
        assert!(std::fs::read(&direct).unwrap() == std::fs::read(&requant).unwrap(), "{kind}: differs from the direct conversion");
    }

    // f16 → q8_0 goes through ggml's f16 dequantizer: checked against the checkpoint.
    let from_f16 = tmp.path().join("f16-q8_0.gguf");
    assert_ok(&convert(&tmp.path().join("d-f16.gguf"), &from_f16, &["--type", "q8_0"]));
    pycheck(&hf, &from_f16, "q8_0", &[]);

    // The same type again: every tensor copied, the file unchanged.
    let q4 = tmp.path().join("d-q4_0.gguf");
    let same = tmp.path().join("same.gguf");
    let log = assert_ok(&convert(&q4, &same, &["--type", "q4_0"]));
    assert!(log.contains("21 copied unchanged"), "{log}");
    assert!(std::fs::read(&q4).unwrap() == std::fs::read(&same).unwrap(), "q4_0 → q4_0 changed the file");

    // Quantized → other quantized needs --allow-requantize, as in llama-quantize.
    let q8 = tmp.path().join("q4-q8.gguf");
    let out = convert(&q4, &q8, &["--type", "q8_0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is already q4_0") && err.contains("--allow-requantize"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!q8.exists(), "nothing written on refusal");
    assert_ok(&convert(&q4, &q8, &["--type", "q8_0", "--allow-requantize"]));
    let (a, b) = (Gguf::open(&q4).unwrap(), Gguf::open(&q8).unwrap());
    for t in a.tensors() {
        let want = if t.shape.len() == 1 { dlm::GgmlType::F32 } else { dlm::GgmlType::Q8_0 };
        assert_eq!(b.tensor(&t.name).unwrap().ggml_type, want, "{}", t.name);
        let d = rel_diff(&a, &b, &t.name);
        if want == dlm::GgmlType::Q8_0 {
            // Q8_0 of Q4_0's values: within Q8_0's error of them, and not a copy.
            assert!(d > 0.0 && d < 0.007, "{}: {d:.2e}", t.name);
        }
    }

    // Overrides change only their keys.
    let renamed = tmp.path().join("renamed.gguf");
    assert_ok(&convert(&f32_file, &renamed, &["--type", "f32", "--mask-id", "5", "--name", "tiny", "--causal"]));
    let (a, b) = (Gguf::open(&f32_file).unwrap(), Gguf::open(&renamed).unwrap());
    assert_eq!(b.get_u32(dlm::keys::MASK_ID).unwrap(), 5);
    assert_eq!(b.get_str(dlm::keys::NAME).unwrap(), "tiny");
    assert!(b.get_bool("llama.attention.causal").unwrap());
    let changed = [dlm::keys::MASK_ID, dlm::keys::NAME, "llama.attention.causal"];
    for (k, v) in a.metadata() {
        if !changed.contains(&k.as_str()) {
            assert_eq!(b.get(k), Some(v), "{k}");
        }
    }
    assert_eq!(a.metadata().len(), b.metadata().len());

    // The input itself as output, and a file that is not a model.
    let out = convert(&f32_file, &f32_file, &["--type", "q4_0"]);
    assert_eq!(out.status.code(), Some(2));
    let bad = tmp.path().join("bad.gguf");
    let mut bytes = std::fs::read(&q4).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&bad, &bytes).unwrap();
    let out = convert(&bad, &tmp.path().join("x.gguf"), &["--type", "q8_0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.gguf") && err.lines().count() == 1, "{err}");
    assert!(!tmp.path().join("x.gguf").exists());
}

#[test]
fn test_scripts_run_outside_the_checkout_with_a_data_dir() {
    // The two scripts alone in a folder of their own, run from elsewhere, with an empty data
    // folder: the checkpoint script fetches the tokenizer there and writes nothing beside itself.
    let tmp = tempfile::tempdir().unwrap();
    let scripts = tmp.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    for s in ["make_checkpoint.py", "fetch_data.py"] {
        std::fs::copy(root().join("tests").join(s), scripts.join(s)).unwrap();
    }
    let (data, hf) = (tmp.path().join("data"), tmp.path().join("hf"));
    let out = Command::new("python3")
        .arg(scripts.join("make_checkpoint.py"))
        .arg(&hf)
        .arg("--data")
        .arg(&data)
        .current_dir(tmp.path())
        .env_remove("DLM_DATA")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(data.join("llama-tokenizer/tokenizer.json").exists());
    assert!(!scripts.join("data").exists(), "wrote beside the scripts");
    let gguf = tmp.path().join("m.gguf");
    assert_ok(&convert(&hf, &gguf, &["--type", "q8_0"]));
    pycheck(&hf, &gguf, "q8_0", &[]);
}

/// A broken checkpoint: what to break, and words the error must contain.
struct Case {
    what: &'static str,
    breaks: fn(&Path),
    expect: &'static [&'static str],
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

fn write_safetensors(path: &Path, name: &str, dtype: &str, shape: &[u64], bytes: &[u8]) {
    let header = serde_json::json!({ name: {"dtype": dtype, "shape": shape, "data_offsets": [0, bytes.len()]} }).to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(bytes);
    std::fs::write(path, out).unwrap();
}

const CASES: &[Case] = &[
    Case { what: "no config", breaks: |d| std::fs::remove_file(d.join("config.json")).unwrap(), expect: &["config.json", "No such file"] },
    Case { what: "config not JSON", breaks: |d| std::fs::write(d.join("config.json"), "{oops").unwrap(), expect: &["config.json", "not valid JSON"] },
    Case {
        what: "unsupported architecture",
        breaks: |d| edit_json(&d.join("config.json"), |v| {
            v["architectures"] = serde_json::json!(["MambaForCausalLM"]);
            v["model_type"] = serde_json::json!("mamba");
        }),
        expect: &["architectures", "MambaForCausalLM", "expected one of LlamaForCausalLM"],
    },
    Case {
        what: "llama weights labelled gpt2",
        breaks: |d| edit_json(&d.join("config.json"), |v| {
            v["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
            v["model_type"] = serde_json::json!("gpt2");
        }),
        expect: &["transformer.h.0.ln_1.weight", "missing"],
    },
    Case {
        what: "heads do not divide",
        breaks: |d| edit_json(&d.join("config.json"), |v| v["num_attention_heads"] = serde_json::json!(3)),
        expect: &["num_attention_heads", "does not divide"],
    },
    Case {
        what: "shape disagrees with config",
        breaks: |d| edit_json(&d.join("config.json"), |v| v["intermediate_size"] = serde_json::json!(512)),
        expect: &["model.layers.0.mlp.gate_proj.weight", "shape [768, 256]", "[512, 256]"],
    },
    Case {
        what: "missing tensor",
        breaks: |d| edit_json(&d.join("config.json"), |v| v["num_hidden_layers"] = serde_json::json!(3)),
        expect: &["model.layers.2.input_layernorm.weight", "missing"],
    },
    Case {
        what: "extra layer",
        breaks: |d| edit_json(&d.join("config.json"), |v| v["num_hidden_layers"] = serde_json::json!(1)),
        expect: &["unexpected tensor `model.layers.1."],
    },
    Case {
        what: "tokenizer and vocab disagree",
        breaks: |d| edit_json(&d.join("config.json"), |v| v["vocab_size"] = serde_json::json!(32001)),
        expect: &["vocab_size", "32001", "tokenizer has 32000"],
    },
    Case {
        what: "no tokenizer",
        breaks: |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap(),
        expect: &["no tokenizer found", "tokenizer.json, tokenizer.model, or vocab.json with merges.txt"],
    },
    Case {
        what: "unsupported dtype",
        breaks: |d| write_safetensors(&d.join("model.safetensors"), "model.norm.weight", "I64", &[2], &[0u8; 16]),
        expect: &["model.safetensors", "model.norm.weight", "I64", "expected BF16, F16 or F32"],
    },
    Case {
        what: "corrupt safetensors",
        breaks: |d| std::fs::write(d.join("model.safetensors"), b"\x10\0\0\0\0\0\0\0{not json}").unwrap(),
        expect: &["model.safetensors", "not a valid safetensors file"],
    },
    Case {
        what: "mask id out of range",
        breaks: |d| edit_json(&d.join("tokenizer_config.json"), |v| v["mask_token"] = serde_json::json!("<nope>")),
        expect: &["tokenizer_config.json", "mask_token", "<nope>"],
    },
    Case {
        what: "rope_theta 0",
        breaks: |d| edit_json(&d.join("config.json"), |v| v["rope_theta"] = serde_json::json!(0.0)),
        expect: &["config.json", "rope_theta", "RoPE frequency base"],
    },
    Case {
        what: "rope_theta beyond f32",
        breaks: |d| edit_json(&d.join("config.json"), |v| v["rope_theta"] = serde_json::json!(1e300)),
        expect: &["config.json", "rope_theta"],
    },
    Case {
        what: "negative rms_norm_eps",
        breaks: |d| edit_json(&d.join("config.json"), |v| v["rms_norm_eps"] = serde_json::json!(-1e-5)),
        expect: &["config.json", "rms_norm_eps", "epsilon"],
    },
    Case {
        what: "rope scaling",
        breaks: |d| edit_json(&d.join("config.json"), |v| v["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0})),
        expect: &["rope_scaling", "not supported"],
    },
];

#[test]
fn bad_inputs_fail_clearly_and_leave_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    make_checkpoint(&pristine, &["--dtype", "bf16", "--shards", "1"]);
    for case in CASES {
        let hf = tmp.path().join("broken");
        let _ = std::fs::remove_dir_all(&hf);
        std::fs::create_dir(&hf).unwrap();
        for e in std::fs::read_dir(&pristine).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), hf.join(e.file_name())).unwrap();
        }
        (case.breaks)(&hf);
        let outdir = tmp.path().join("out");
        let _ = std::fs::remove_dir_all(&outdir);
        std::fs::create_dir(&outdir).unwrap();
        let out = convert(&hf, &outdir.join("m.gguf"), &["--type", "q4_0"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: exit code, stderr: {err}", case.what);
        assert!(err.starts_with("error: "), "{}: {err}", case.what);
        assert!(!err.contains("panicked"), "{}: {err}", case.what);
        for needle in case.expect {
            assert!(err.contains(needle), "{}: `{needle}` not in: {err}", case.what);
        }
        let left: Vec<PathBuf> = std::fs::read_dir(&outdir).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "{}: left {left:?}", case.what);
    }
    // An output folder that does not exist: named in the error.
    let out = convert(&pristine, &tmp.path().join("no/such/dir/m.gguf"), &["--type", "q8_0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no/such/dir"), "{err}");
}

fn spm_cases(path: &Path) -> Vec<(String, Vec<u32>)> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| (c["text"].as_str().unwrap().to_owned(), c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()))
        .collect()
}

#[test]
fn sentencepiece_model_without_tokenizer_json_matches_sentencepiece() {
    ensure_data();
    let tmp = tempfile::tempdir().unwrap();
    let spm = tmp.path().join("spm");
    let out = python(&["tests/make_spm.py", spm.to_str().unwrap()]);
    assert!(out.status.success(), "make_spm.py: {}", String::from_utf8_lossy(&out.stderr));
    let hf = tmp.path().join("hf");
    make_checkpoint(&hf, &["--spm", spm.join("tokenizer.model").to_str().unwrap(), "--shards", "1"]);
    assert!(!hf.join("tokenizer.json").exists());
    let gguf = tmp.path().join("m.gguf");
    // 811 is outside a 600-token vocabulary: the default must be refused, an explicit id accepted.
    let err = String::from_utf8_lossy(&convert(&hf, &gguf, &["--type", "q8_0"]).stderr).into_owned();
    assert!(err.contains("mask id 811") && err.contains("600-token"), "{err}");
    assert_ok(&convert(&hf, &gguf, &["--type", "q8_0", "--mask-id", "3"]));
    let g = Gguf::open(&gguf).unwrap();
    let embedded = Tokenizer::from_gguf(&g).unwrap();
    let rebuilt = Tokenizer::from_gguf_arrays(&g).unwrap();
    let cases = spm_cases(&spm.join("spm_cases.json"));
    assert!(cases.len() >= 15);
    for (text, want) in &cases {
        assert_eq!(&embedded.encode(text).unwrap(), want, "embedded JSON: {text:?}");
        assert_eq!(&rebuilt.encode(text).unwrap(), want, "arrays: {text:?}");
    }
    // Scores are SentencePiece's own, not derived.
    let scores = g.get_array(dlm::keys::SCORES, dlm::gguf::ValueType::F32).unwrap();
    assert!(scores.iter().any(|s| s.as_f64().unwrap() != 0.0));

    // A unigram model would tokenize differently: refused with the field named.
    let uni = tmp.path().join("uni");
    assert!(python(&["tests/make_spm.py", uni.to_str().unwrap(), "unigram"]).status.success());
    std::fs::copy(uni.join("tokenizer.model"), hf.join("tokenizer.model")).unwrap();
    let out = convert(&hf, &tmp.path().join("u.gguf"), &["--type", "q8_0", "--mask-id", "3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("trainer_spec.model_type") && err.contains("not BPE"), "{err}");
}

/// llama-quantize's habits: `IN OUT TYPE` as positional arguments and upper-case type names
/// give the same file as `-o OUT --type type`; giving both forms, or no output, is one error.
#[test]
fn llama_quantize_argument_order_and_upper_case_types() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    make_checkpoint(&hf, &["--shards", "1"]);
    let f32_file = tmp.path().join("m-f32.gguf");
    assert_ok(&convert(&hf, &f32_file, &["--type", "f32"]));
    let bin = env!("CARGO_BIN_EXE_dlm-convert");
    for (ty, upper) in [("q5_k_m", "Q5_K_M"), ("q3_k_s", "Q3_K_S"), ("iq4_nl", "IQ4_NL")] {
        let (a, b) = (tmp.path().join(format!("a-{ty}.gguf")), tmp.path().join(format!("b-{ty}.gguf")));
        assert_ok(&convert(&f32_file, &a, &["--type", ty]));
        assert_ok(&Command::new(bin).arg(&f32_file).arg(&b).arg(upper).arg("--quiet").output().unwrap());
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "{ty}: the positional form wrote another file");
        assert_eq!(Gguf::open(&b).unwrap().get_u32(dlm::keys::FILE_TYPE).unwrap(), OutType::from_str(ty, true).unwrap().file_type());
    }
    let one_line = |out: Output, text: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.starts_with("error: ") && err.contains(text), "{err}");
    };
    let out = tmp.path().join("x.gguf");
    one_line(Command::new(bin).arg(&f32_file).output().unwrap(), "the output is required");
    one_line(Command::new(bin).arg(&f32_file).arg(&out).arg("q4_0").args(["--type", "q8_0"]).output().unwrap(), "the type is given twice");
    one_line(Command::new(bin).arg(&f32_file).arg(&out).arg("-o").arg(&out).output().unwrap(), "the output is given twice");
    // `IN TYPE`: llama-quantize's name beside the input; `IN -o OUT TYPE` takes the type.
    assert_ok(&Command::new(bin).arg(&f32_file).arg("Q5_K_M").arg("--quiet").output().unwrap());
    let named = tmp.path().join("ggml-model-q5_k_m.gguf");
    assert!(std::fs::read(&named).unwrap() == std::fs::read(tmp.path().join("a-q5_k_m.gguf")).unwrap());
    let c = tmp.path().join("c.gguf");
    assert_ok(&Command::new(bin).arg(&f32_file).arg("-o").arg(&c).arg("iq4_nl").arg("--quiet").output().unwrap());
    assert!(std::fs::read(&c).unwrap() == std::fs::read(tmp.path().join("a-iq4_nl.gguf")).unwrap());
    one_line(Command::new(bin).arg(&f32_file).arg(&out).arg("q9_9").output().unwrap(), "`q9_9` is not a weight type");
    assert!(!out.exists());
}
