//! Our forward pass against llama.cpp's own (`llama_decode`, non-causal, through the same
//! `llama-cpp-sys-2` build) on the same GGUF files: an independent implementation of the graph
//! (its own RoPE, attention, KV cache and scheduler) over the same kernels. Also checks that the
//! peer the benchmarks measure against computes what we compute.

mod common;

use common::{argmax, checkpoint, convert};
use dlm::backend::ggml::{LlamaCpp, LlamaCppOptions};
use dlm::model::DiffusionOverrides;
use dlm::{LoadOptions, Model};
use dlm_convert::OutType;

#[test]
fn logits_match_llama_cpp_on_the_same_file() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    checkpoint(&hf, &["--kv-heads", "2"]);
    // Bound per type against llama.cpp with its defaults: it keeps K/V in an f16 cache, uses
    // flash attention and repacks Q4_0 for its AVX2 kernels, so f32 weights already differ by the
    // f16 rounding of K/V, and quantized matmuls (which quantize their activations) amplify that.
    // With those three turned off (`exact`), llama.cpp must compute what we compute.
    for (kind, bound) in [(OutType::F32, 2e-3), (OutType::F16, 2e-3), (OutType::Q8_0, 3e-2), (OutType::Q4_0, 3e-2)] {
        let gguf = convert(&hf, kind);
        let tokens: Vec<u32> = (0..40u32).map(|i| if i == 0 { 1 } else if i % 3 == 0 { 811 } else { (i * 7919) % 32000 }).collect();
        // (exact, repack): the same arithmetic (our flash attention off, llama.cpp's too, its
        // cache f32) with and without repacked weights on both sides, then both defaults.
        for (exact, repack) in [(true, false), (true, true), (false, true)] {
            let mut ours = Model::load(&gguf, &LoadOptions { repack, flash_attn: !exact, ..Default::default() }).unwrap();
            assert!(!ours.params().causal, "a converted DiffuLLaMA is bidirectional");
            #[cfg(target_arch = "x86_64")]
            if kind == OutType::Q4_0 && std::is_x86_feature_detected!("avx2") {
                // Two layers × seven matrices have interleaved AVX2 kernels; the Q6_K output does not.
                assert_eq!(ours.repacked_tensors(), if repack { 14 } else { 0 });
            }
            let a = ours.forward(&tokens).unwrap();
            let o = if exact { LlamaCppOptions::same_arithmetic(2, 64, repack) } else { LlamaCppOptions::new(2, 64) };
            let mut peer = LlamaCpp::load(&gguf, &o).unwrap();
            assert_eq!(peer.n_vocab(), ours.params().n_vocab);
            let b = peer.forward(&tokens).unwrap();
            let (err, same) = compare(&a, &b);
            println!("{} exact={exact} repack={repack}: max relative difference {err:.2e}, top-1 {same}/{}", kind.name(), tokens.len());
            let bound = if exact { 0.0 } else { bound };
            assert!(err <= bound, "{} exact={exact}: {err} vs llama.cpp", kind.name());
            assert!(same * 10 >= tokens.len() * 9, "{}: top-1 agrees on {same}/{}", kind.name(), tokens.len());
            // The peer is reusable: a second, shorter call starts from an empty cache. (Its cache
            // is padded past 10 cells, masked: the soft-max sums in another order, ~1e-7.)
            let (err2, _) = compare(&ours.forward(&tokens[..10]).unwrap(), &peer.forward(&tokens[..10]).unwrap());
            assert!(err2 <= bound.max(1e-6), "{}: second call differs ({err2})", kind.name());
            // A causal graph differs on every position but the last: the comparison can tell.
            let mut causal = Model::load(&gguf, &LoadOptions { diffusion: DiffusionOverrides { causal: Some(true), ..Default::default() }, ..Default::default() }).unwrap();
            let (cerr, _) = compare(&causal.forward(&tokens).unwrap(), &b);
            assert!(cerr > 5.0 * bound.max(2e-3), "{}: causal and bidirectional logits are too close ({cerr})", kind.name());
        }
    }
}

/// (max |a-b| / max |b|, rows with the same argmax).
fn compare(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
    let same = (0..a.len() / 32000).filter(|&i| argmax(&a[i * 32000..][..32000]) == argmax(&b[i * 32000..][..32000])).count();
    (err, same)
}

#[test]
fn peer_refuses_what_llama_cpp_would_abort_on() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    checkpoint(&hf, &[]);
    let gguf = convert(&hf, OutType::Q8_0);
    let mut peer = LlamaCpp::load(&gguf, &LlamaCppOptions::new(1, 16)).unwrap();
    assert!(peer.forward(&[1; 17]).is_err(), "longer than the micro-batch");
    assert!(peer.forward(&[]).is_err());
    assert!(peer.forward(&[32000]).is_err());
    let missing = tmp.path().join("nope.gguf");
    assert!(LlamaCpp::load(&missing, &LlamaCppOptions::new(1, 16)).is_err());
}

/// Every type mix `dlm-convert --type` writes equals llama.cpp's own quantizer
/// (`llama_model_quantize`, what `llama-quantize` runs) on the same f32 file: the same type for
/// every tensor and the same bytes. 16 layers, so the per-layer rules (first/last eighth, every
/// third, the first 2 or 4 `attn_v`, the first sixteenth of `ffn_down`) all apply, and 4 query
/// heads per key/value head (`q2_k`'s and `iq4_nl`'s `attn_v` rules).
#[test]
fn every_type_mix_equals_llama_quantize() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    checkpoint(&hf, &["--shards", "1", "--layers", "16", "--heads", "4", "--kv-heads", "1"]);
    let f32_file = convert(&hf, OutType::F32);
    let kinds = [
        OutType::Q8_0, OutType::Q6_K, OutType::Q5_1, OutType::Q5_0, OutType::Q5_K_M, OutType::Q5_K_S, OutType::Q4_1, OutType::Q4_0,
        OutType::Q4_K_M, OutType::Q4_K_S, OutType::IQ4_NL, OutType::IQ4_XS, OutType::Q3_K_L, OutType::Q3_K_M, OutType::Q3_K_S, OutType::Q2_K,
    ];
    for kind in kinds {
        let ours = tmp.path().join(format!("dlm-{}.gguf", kind.name()));
        let theirs = tmp.path().join(format!("llama-{}.gguf", kind.name()));
        let opts = dlm_convert::Options { out_type: kind, mask_id: None, name: None, causal: false };
        dlm_convert::Requant::new(&f32_file, &opts, false).unwrap().write(&ours, |_, _| {}).unwrap();
        dlm::backend::ggml::llama_quantize(&f32_file, &theirs, kind.file_type(), 2).unwrap();
        let (a, b) = (dlm::Gguf::open(&ours).unwrap(), dlm::Gguf::open(&theirs).unwrap());
        assert_eq!(a.get_u32(dlm::keys::FILE_TYPE).unwrap(), b.get_u32(dlm::keys::FILE_TYPE).unwrap(), "{}", kind.name());
        assert_eq!(a.tensors().len(), b.tensors().len());
        let mut types = std::collections::BTreeMap::new();
        for t in b.tensors() {
            let mine = a.tensor(&t.name).unwrap_or_else(|| panic!("{}: {} missing", kind.name(), t.name));
            assert_eq!(mine.ggml_type, t.ggml_type, "{}: {}", kind.name(), t.name);
            assert!(a.tensor_data(mine) == b.tensor_data(t), "{}: {}: other bytes than llama.cpp's", kind.name(), t.name);
            *types.entry(t.ggml_type.name()).or_insert(0) += 1;
        }
        println!("{}: {types:?}", kind.name());
        // And the runtime runs it.
        let mut m = Model::load(&ours, &LoadOptions { threads: 2, ..Default::default() }).unwrap();
        let logits = m.forward(&[1, 20628, 338, 263]).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()), "{}", kind.name());
    }
}
