//! Which ggml type each tensor gets, following llama.cpp's quantizer so files compare fairly.

use clap::ValueEnum;
use dlm::keys::file_type;
use dlm::GgmlType;

/// `--type`: the overall target of a conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[allow(non_camel_case_types)]
pub enum OutType {
    /// 32-bit floats, lossless
    F32,
    /// 16-bit floats (norms stay f32)
    F16,
    /// bfloat16 (norms stay f32)
    Bf16,
    /// 8.5 bits per weight, near-lossless
    #[value(name = "q8_0")]
    Q8_0,
    /// 4.5 bits per weight; output.weight in Q6_K
    #[value(name = "q4_0")]
    Q4_0,
    /// llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for output and for some attn_v/ffn_down layers
    #[value(name = "q4_k_m")]
    Q4_K_M,
    /// 6.6 bits per weight K-quant
    #[value(name = "q6_k")]
    Q6_K,
}

impl OutType {
    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            OutType::F32 => file_type::ALL_F32,
            OutType::F16 => file_type::MOSTLY_F16,
            OutType::Bf16 => file_type::MOSTLY_BF16,
            OutType::Q8_0 => file_type::MOSTLY_Q8_0,
            OutType::Q4_0 => file_type::MOSTLY_Q4_0,
            OutType::Q4_K_M => file_type::MOSTLY_Q4_K_M,
            OutType::Q6_K => file_type::MOSTLY_Q6_K,
        }
    }

    pub fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third between.
pub fn use_more_bits(layer: u64, n_layer: u64) -> bool {
    let (i, n) = (layer as i64, n_layer as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The type llama.cpp's quantizer would choose for tensor `name` (`layer` for `blk.N.*`);
/// `tied`: the file has no `output.weight`, so the embedding is also the LM head and gets the
/// head's type. Learned position tables stay f32, as both llama.cpp's converter and quantizer
/// keep them.
pub fn choose(out: OutType, name: &str, layer: Option<u64>, n_layer: u64, n_dims: usize, tied: bool) -> GgmlType {
    if n_dims < 2 || name == "position_embd.weight" {
        return GgmlType::F32;
    }
    let is_output = name == "output.weight" || (tied && name == "token_embd.weight");
    match out {
        OutType::F32 => GgmlType::F32,
        OutType::F16 => GgmlType::F16,
        OutType::Bf16 => GgmlType::BF16,
        OutType::Q8_0 => GgmlType::Q8_0,
        OutType::Q6_K => GgmlType::Q6_K,
        OutType::Q4_0 if is_output => GgmlType::Q6_K,
        OutType::Q4_0 => GgmlType::Q4_0,
        OutType::Q4_K_M if is_output => GgmlType::Q6_K,
        // A fused Q/K/V (GPT-2's attn_qkv) gets Q5_K, as llama.cpp's quantizer gives it.
        OutType::Q4_K_M if name.ends_with("attn_qkv.weight") => GgmlType::Q5_K,
        OutType::Q4_K_M => {
            let more = (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight"))
                && layer.is_some_and(|i| use_more_bits(i, n_layer));
            if more {
                GgmlType::Q6_K
            } else {
                GgmlType::Q4_K
            }
        }
    }
}

/// A type whose block size divides `row_len`, starting from `want` (llama.cpp's fallbacks:
/// K-quants to the 32-block type of similar size, then f16 when even 32 does not divide).
pub fn fit(want: GgmlType, row_len: u64) -> GgmlType {
    let mut t = want;
    while row_len % t.block_size() != 0 {
        t = match t {
            GgmlType::Q4_K => GgmlType::Q5_0,
            GgmlType::Q5_K => GgmlType::Q5_1,
            GgmlType::Q6_K => GgmlType::Q8_0,
            _ => GgmlType::F16,
        };
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_layer_mix_matches_llama_cpp_rule() {
        // 32 layers: i < 4, i >= 28, or (i - 4) % 3 == 2 -> layers 0-3, 6, 9, ..., 27, 28-31.
        let more: Vec<u64> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(more, vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
        assert_eq!(choose(OutType::Q4_K_M, "blk.6.ffn_down.weight", Some(6), 32, 2, false), GgmlType::Q6_K);
        assert_eq!(choose(OutType::Q4_K_M, "blk.7.ffn_down.weight", Some(7), 32, 2, false), GgmlType::Q4_K);
        assert_eq!(choose(OutType::Q4_K_M, "blk.6.attn_q.weight", Some(6), 32, 2, false), GgmlType::Q4_K);
        assert_eq!(choose(OutType::Q4_0, "output.weight", None, 32, 2, false), GgmlType::Q6_K);
        assert_eq!(choose(OutType::Q4_0, "blk.0.attn_norm.weight", Some(0), 32, 1, false), GgmlType::F32);
        // A tied embedding is the head too; untied it is an ordinary matrix.
        assert_eq!(choose(OutType::Q4_0, "token_embd.weight", None, 32, 2, true), GgmlType::Q6_K);
        assert_eq!(choose(OutType::Q4_0, "token_embd.weight", None, 32, 2, false), GgmlType::Q4_0);
        assert_eq!(choose(OutType::Q4_0, "position_embd.weight", None, 32, 2, true), GgmlType::F32);
        assert_eq!(choose(OutType::Q4_K_M, "blk.3.attn_qkv.weight", Some(3), 24, 2, true), GgmlType::Q5_K);
    }

    #[test]
    fn fallbacks() {
        assert_eq!(fit(GgmlType::Q4_K, 640), GgmlType::Q5_0);
        assert_eq!(fit(GgmlType::Q6_K, 640), GgmlType::Q8_0);
        assert_eq!(fit(GgmlType::Q5_K, 640), GgmlType::Q5_1);
        assert_eq!(fit(GgmlType::Q4_0, 100), GgmlType::F16);
        assert_eq!(fit(GgmlType::Q4_K, 4096), GgmlType::Q4_K);
    }
}
