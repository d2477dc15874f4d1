//! The tokenizer against the LLaMA tokenizer's published test cases, through both construction
//! paths: the Hugging Face JSON, and the rebuild from `tokenizer.ggml.*` arrays.
//!
//! Data comes from `python3 tests/fetch_data.py` (npm llama-tokenizer-js, llama.cpp's vocab GGUF).

use std::path::{Path, PathBuf};

use dlm::gguf::Gguf;
use dlm::tokenizer::TokenizerSource;
use dlm::Tokenizer;

fn data(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(rel);
    assert!(p.exists(), "{} missing: run `python3 tests/fetch_data.py` first", p.display());
    p
}

/// (text, expected ids with BOS) from llama-tokenizer-js.
fn npm_cases() -> Vec<(String, Vec<u32>)> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data("llama-tokenizer/cases.json")).unwrap()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| (c["text"].as_str().unwrap().to_owned(), c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()))
        .collect()
}

/// (text, expected ids without BOS) from llama.cpp's ggml-vocab-llama-spm.gguf.inp/.out.
fn llama_cpp_cases() -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(data("llama-spm/ggml-vocab-llama-spm.gguf.inp")).unwrap();
    let out = std::fs::read_to_string(data("llama-spm/ggml-vocab-llama-spm.gguf.out")).unwrap();
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let texts = &texts[..texts.len() - usize::from(texts.last() == Some(&""))];
    let ids: Vec<Vec<u32>> = out.lines().map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect()).collect();
    assert_eq!(texts.len(), ids.len(), "inp/out case counts differ");
    texts.iter().map(|t| t.to_string()).zip(ids).collect()
}

fn hf_tokenizer() -> Tokenizer {
    let inner = tokenizers::Tokenizer::from_file(data("llama-tokenizer/tokenizer.json")).unwrap();
    Tokenizer::from_hf(inner, Some(1), Some(2), true)
}

fn check(tok: &Tokenizer, cases: &[(String, Vec<u32>)], with_bos: bool) -> usize {
    let mut failures = Vec::new();
    for (text, want) in cases {
        let mut got = tok.encode(text).unwrap();
        if !with_bos && tok.add_bos {
            assert_eq!(got.first().copied(), tok.bos);
            got.remove(0);
        }
        if &got != want {
            failures.push(format!("{text:?}: got {got:?}, want {want:?}"));
        } else if with_bos || !text.is_empty() {
            // Decoding round-trips (the published cases are all decodable back).
            assert_eq!(&tok.decode(&got).unwrap(), text, "decode of {text:?}");
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    cases.len()
}

#[test]
fn hf_json_passes_npm_published_cases() {
    let n = check(&hf_tokenizer(), &npm_cases(), true);
    assert_eq!(n, 12);
}

#[test]
fn hf_json_passes_llama_cpp_cases() {
    assert!(check(&hf_tokenizer(), &llama_cpp_cases(), false) >= 40);
}

#[test]
fn rebuilt_from_llama_cpp_vocab_gguf_passes_both_case_sets() {
    let g = Gguf::open(data("llama-spm/ggml-vocab-llama-spm.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.source, TokenizerSource::SpmArrays, "llama.cpp's file has no embedded JSON");
    assert_eq!(tok.vocab_size(), 32000);
    check(&tok, &llama_cpp_cases(), false);
    check(&tok, &npm_cases(), true);
}

#[test]
fn both_paths_agree_on_arbitrary_text() {
    let g = Gguf::open(data("llama-spm/ggml-vocab-llama-spm.gguf")).unwrap();
    let rebuilt = Tokenizer::from_gguf_arrays(&g).unwrap();
    let hf = hf_tokenizer();
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tokenizer.rs")).unwrap();
    for line in text.lines().chain(["", " ", "  x", "ти ти", "\u{0}\u{7f}é", "<s>hi</s>"]) {
        assert_eq!(rebuilt.encode(line).unwrap(), hf.encode(line).unwrap(), "{line:?}");
    }
    assert_eq!(rebuilt.token_to_id("ти"), Some(dlm::keys::DIFFULLAMA_MASK_ID), "DiffuLLaMA's mask token");
}
