//! Any byte string through the GGUF reader: it must return Ok or Err, never panic, never read
//! out of bounds. Whatever parses is then used the way the runtime uses it.
#![no_main]

use dlm::gguf::Gguf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_bytes("fuzz.gguf", data.to_vec()) else { return };
    let mut sum = 0u64;
    for t in g.tensors() {
        let bytes = g.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.size);
        sum = sum.wrapping_add(bytes.iter().map(|&b| b as u64).sum::<u64>());
    }
    for (k, _) in g.metadata() {
        let _ = (g.get_u32(k), g.get_str(k), g.get_f64(k), g.get_bool(k));
    }
    // Tokenizer construction reads arbitrary metadata too.
    let _ = dlm::Tokenizer::from_gguf(&g);
    std::hint::black_box(sum);
});
