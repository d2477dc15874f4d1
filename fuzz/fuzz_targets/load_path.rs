//! Any byte string through the whole load path short of computing: GGUF reader → architecture →
//! hyper-parameters → every tensor's presence and shape → tokenizer. It must return Ok or Err,
//! never panic; what passes must be consistent enough that building a graph from it cannot
//! reach a ggml assert.
#![no_main]

use dlm::gguf::Gguf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_bytes("fuzz.gguf", data.to_vec()) else { return };
    let tok = dlm::Tokenizer::from_gguf(&g);
    let Ok(c) = dlm::model::check(&g, &Default::default()) else { return };
    let p = &c.params;
    // What the graph builder relies on without checking again.
    assert!(p.n_layer > 0 && p.n_vocab > 0 && p.n_ff > 0 && p.n_ctx_train > 0);
    assert!(p.n_head > 0 && p.n_embd % p.n_head == 0 && p.n_head_kv > 0 && p.n_head % p.n_head_kv == 0);
    assert!(p.arch == "gpt2" || (p.rope_dims > 0 && p.rope_dims <= p.head_dim() && p.rope_dims % 2 == 0));
    assert!((p.arch == "gpt2" || (p.rope_theta.is_finite() && p.rope_theta > 0.0)) && p.norm_eps.is_finite() && p.norm_eps > 0.0);
    for name in &c.unused {
        assert!(g.tensor(name).is_some());
    }
    if let Ok(t) = tok {
        // Every id the runtime takes from the tokenizer indexes the vocabulary it reports.
        for id in [t.bos, t.eos].into_iter().flatten() {
            assert!((id as usize) < t.vocab_size(), "special id {id} outside {}", t.vocab_size());
        }
    }
});
