//! Which ggml type each tensor gets, following llama.cpp's quantizer so files compare fairly.

use clap::ValueEnum;
use dlm::keys::file_type;
use dlm::GgmlType;

/// `--type`: the overall target of a conversion, llama-quantize's names (upper case accepted).
/// Each mix gives the output head and some `attn_v`/`ffn_down`/`attn_output` tensors more bits
/// exactly as llama.cpp's quantizer does without an importance matrix.
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
    /// 6.6 bits per weight K-quant
    #[value(name = "q6_k")]
    Q6_K,
    /// 6 bits per weight, 32-weight blocks with a minimum
    #[value(name = "q5_1")]
    Q5_1,
    /// 5.5 bits per weight, 32-weight blocks
    #[value(name = "q5_0")]
    Q5_0,
    /// llama.cpp's Q5_K_M mix: Q5_K, Q6_K for some attn_v/ffn_down layers
    #[value(name = "q5_k_m")]
    Q5_K_M,
    /// Q5_K throughout (output Q6_K)
    #[value(name = "q5_k_s")]
    Q5_K_S,
    /// 5 bits per weight, 32-weight blocks with a minimum
    #[value(name = "q4_1")]
    Q4_1,
    /// 4.5 bits per weight; output.weight in Q6_K
    #[value(name = "q4_0")]
    Q4_0,
    /// llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for output and for some attn_v/ffn_down layers
    #[value(name = "q4_k_m")]
    Q4_K_M,
    /// Q4_K, Q5_K for the first attn_v layers and the first eighth of ffn_down
    #[value(name = "q4_k_s")]
    Q4_K_S,
    /// 4.5 bits per weight, non-linear 32-weight blocks (no importance matrix needed)
    #[value(name = "iq4_nl")]
    IQ4_NL,
    /// 4.25 bits per weight, non-linear 256-weight blocks (no importance matrix needed)
    #[value(name = "iq4_xs")]
    IQ4_XS,
    /// Q3_K, with Q5_K attn_v and ffn_down, Q4_K attn_output
    #[value(name = "q3_k_l")]
    Q3_K_L,
    /// Q3_K, with Q4_K/Q5_K for attn_v, ffn_down and attn_output
    #[value(name = "q3_k_m")]
    Q3_K_M,
    /// Q3_K throughout (output Q6_K)
    #[value(name = "q3_k_s")]
    Q3_K_S,
    /// Q2_K, with Q3_K/Q4_K attn_v and Q3_K ffn_down and attn_output: smallest, lossiest
    #[value(name = "q2_k")]
    Q2_K,
}

impl OutType {
    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        use OutType::*;
        match self {
            F32 => file_type::ALL_F32,
            F16 => file_type::MOSTLY_F16,
            Bf16 => file_type::MOSTLY_BF16,
            Q8_0 => file_type::MOSTLY_Q8_0,
            Q6_K => file_type::MOSTLY_Q6_K,
            Q5_1 => file_type::MOSTLY_Q5_1,
            Q5_0 => file_type::MOSTLY_Q5_0,
            Q5_K_M => file_type::MOSTLY_Q5_K_M,
            Q5_K_S => file_type::MOSTLY_Q5_K_S,
            Q4_1 => file_type::MOSTLY_Q4_1,
            Q4_0 => file_type::MOSTLY_Q4_0,
            Q4_K_M => file_type::MOSTLY_Q4_K_M,
            Q4_K_S => file_type::MOSTLY_Q4_K_S,
            IQ4_NL => file_type::MOSTLY_IQ4_NL,
            IQ4_XS => file_type::MOSTLY_IQ4_XS,
            Q3_K_L => file_type::MOSTLY_Q3_K_L,
            Q3_K_M => file_type::MOSTLY_Q3_K_M,
            Q3_K_S => file_type::MOSTLY_Q3_K_S,
            Q2_K => file_type::MOSTLY_Q2_K,
        }
    }

    pub fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
    }

    /// The type of an ordinary weight matrix (llama.cpp's `llama_ftype_get_default_type`).
    fn base(self) -> GgmlType {
        use OutType::*;
        match self {
            F32 => GgmlType::F32,
            F16 => GgmlType::F16,
            Bf16 => GgmlType::BF16,
            Q8_0 => GgmlType::Q8_0,
            Q6_K => GgmlType::Q6_K,
            Q5_1 => GgmlType::Q5_1,
            Q5_0 => GgmlType::Q5_0,
            Q5_K_M | Q5_K_S => GgmlType::Q5_K,
            Q4_1 => GgmlType::Q4_1,
            Q4_0 => GgmlType::Q4_0,
            Q4_K_M | Q4_K_S => GgmlType::Q4_K,
            IQ4_NL => GgmlType::IQ4_NL,
            IQ4_XS => GgmlType::IQ4_XS,
            Q3_K_L | Q3_K_M | Q3_K_S => GgmlType::Q3_K,
            Q2_K => GgmlType::Q2_K,
        }
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third between.
pub fn use_more_bits(layer: u64, n_layer: u64) -> bool {
    let (i, n) = (layer as i64, n_layer as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// Where a tensor sits in its model, for the per-tensor choices of a mix.
#[derive(Clone, Copy, Debug)]
pub struct Place {
    /// `N` of `blk.N.*`.
    pub layer: Option<u64>,
    pub n_layer: u64,
    pub n_dims: usize,
    /// The file has no `output.weight`: the embedding is also the LM head and gets its type.
    pub tied: bool,
    /// Query heads per key/value head.
    pub n_gqa: u64,
}

/// The type llama.cpp's quantizer (without an importance matrix, not a 70B or mixture of
/// experts) would choose for tensor `name`. Learned position tables stay f32, as both
/// llama.cpp's converter and quantizer keep them.
pub fn choose(out: OutType, name: &str, at: Place) -> GgmlType {
    use OutType::*;
    if at.n_dims < 2 || name == "position_embd.weight" {
        return GgmlType::F32;
    }
    let base = out.base();
    if matches!(out, F32 | F16 | Bf16) {
        return base;
    }
    let is_output = name == "output.weight" || (at.tied && name == "token_embd.weight");
    if is_output {
        return if base == GgmlType::Q8_0 { base } else { GgmlType::Q6_K };
    }
    let i = at.layer.unwrap_or(0);
    let n = at.n_layer;
    let more = use_more_bits(i, n);
    if name.ends_with("attn_v.weight") {
        return match out {
            Q2_K if at.n_gqa >= 4 => GgmlType::Q4_K,
            Q2_K => GgmlType::Q3_K,
            Q3_K_M if i < 2 => GgmlType::Q5_K,
            Q3_K_M => GgmlType::Q4_K,
            Q3_K_L => GgmlType::Q5_K,
            IQ4_NL | IQ4_XS if at.n_gqa >= 4 => GgmlType::Q5_K,
            Q4_K_M | Q5_K_M if more => GgmlType::Q6_K,
            Q4_K_S if i < 4 => GgmlType::Q5_K,
            _ => base,
        };
    }
    if name.ends_with("ffn_down.weight") {
        return match out {
            Q2_K => GgmlType::Q3_K,
            Q3_K_M if i < n / 16 => GgmlType::Q5_K,
            Q3_K_M => GgmlType::Q4_K,
            Q3_K_L => GgmlType::Q5_K,
            Q4_K_M | Q5_K_M if more => GgmlType::Q6_K,
            IQ4_NL | IQ4_XS | Q4_K_S if i < n / 8 => GgmlType::Q5_K,
            _ => base,
        };
    }
    if name.ends_with("attn_output.weight") {
        return match out {
            Q2_K => GgmlType::Q3_K,
            Q3_K_M => GgmlType::Q4_K,
            Q3_K_L => GgmlType::Q5_K,
            _ => base,
        };
    }
    // A fused Q/K/V (GPT-2's attn_qkv).
    if name.ends_with("attn_qkv.weight") {
        return match out {
            Q3_K_M | Q3_K_L => GgmlType::Q4_K,
            Q4_K_M => GgmlType::Q5_K,
            Q5_K_M => GgmlType::Q6_K,
            _ => base,
        };
    }
    base
}

/// A type whose block size divides `row_len`, starting from `want` (llama.cpp's fallbacks:
/// K-quants to the 32-block type of similar size, then f16 when even 32 does not divide).
pub fn fit(want: GgmlType, row_len: u64) -> GgmlType {
    let mut t = want;
    while row_len % t.block_size() != 0 {
        t = match t {
            GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
            GgmlType::IQ4_XS => GgmlType::IQ4_NL,
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
        let at = |layer: Option<u64>, n_layer: u64, n_dims: usize, tied: bool| Place { layer, n_layer, n_dims, tied, n_gqa: 1 };
        assert_eq!(choose(OutType::Q4_K_M, "blk.6.ffn_down.weight", at(Some(6), 32, 2, false)), GgmlType::Q6_K);
        assert_eq!(choose(OutType::Q4_K_M, "blk.7.ffn_down.weight", at(Some(7), 32, 2, false)), GgmlType::Q4_K);
        assert_eq!(choose(OutType::Q4_K_M, "blk.6.attn_q.weight", at(Some(6), 32, 2, false)), GgmlType::Q4_K);
        assert_eq!(choose(OutType::Q4_0, "output.weight", at(None, 32, 2, false)), GgmlType::Q6_K);
        assert_eq!(choose(OutType::Q4_0, "blk.0.attn_norm.weight", at(Some(0), 32, 1, false)), GgmlType::F32);
        // A tied embedding is the head too; untied it is an ordinary matrix.
        assert_eq!(choose(OutType::Q4_0, "token_embd.weight", at(None, 32, 2, true)), GgmlType::Q6_K);
        assert_eq!(choose(OutType::Q4_0, "token_embd.weight", at(None, 32, 2, false)), GgmlType::Q4_0);
        assert_eq!(choose(OutType::Q4_0, "position_embd.weight", at(None, 32, 2, true)), GgmlType::F32);
        assert_eq!(choose(OutType::Q4_K_M, "blk.3.attn_qkv.weight", at(Some(3), 24, 2, true)), GgmlType::Q5_K);
        // The other mixes (llama.cpp's llama_tensor_get_type, 32 layers).
        assert_eq!(choose(OutType::Q8_0, "output.weight", at(None, 32, 2, false)), GgmlType::Q8_0);
        assert_eq!(choose(OutType::Q2_K, "blk.5.attn_v.weight", at(Some(5), 32, 2, false)), GgmlType::Q3_K);
        assert_eq!(choose(OutType::Q2_K, "blk.5.attn_v.weight", Place { n_gqa: 4, ..at(Some(5), 32, 2, false) }), GgmlType::Q4_K);
        assert_eq!(choose(OutType::Q2_K, "blk.5.attn_output.weight", at(Some(5), 32, 2, false)), GgmlType::Q3_K);
        assert_eq!(choose(OutType::Q3_K_M, "blk.1.attn_v.weight", at(Some(1), 32, 2, false)), GgmlType::Q5_K);
        assert_eq!(choose(OutType::Q3_K_M, "blk.2.attn_v.weight", at(Some(2), 32, 2, false)), GgmlType::Q4_K);
        assert_eq!(choose(OutType::Q3_K_M, "blk.1.ffn_down.weight", at(Some(1), 32, 2, false)), GgmlType::Q5_K);
        assert_eq!(choose(OutType::Q3_K_M, "blk.2.ffn_down.weight", at(Some(2), 32, 2, false)), GgmlType::Q4_K);
        assert_eq!(choose(OutType::Q3_K_S, "blk.2.ffn_down.weight", at(Some(2), 32, 2, false)), GgmlType::Q3_K);
        assert_eq!(choose(OutType::Q3_K_L, "blk.9.attn_output.weight", at(Some(9), 32, 2, false)), GgmlType::Q5_K);
        assert_eq!(choose(OutType::Q4_K_S, "blk.3.attn_v.weight", at(Some(3), 32, 2, false)), GgmlType::Q5_K);
        assert_eq!(choose(OutType::Q4_K_S, "blk.4.attn_v.weight", at(Some(4), 32, 2, false)), GgmlType::Q4_K);
        assert_eq!(choose(OutType::Q4_K_S, "blk.4.ffn_down.weight", at(Some(4), 32, 2, false)), GgmlType::Q4_K);
        assert_eq!(choose(OutType::Q4_K_S, "blk.3.ffn_down.weight", at(Some(3), 32, 2, false)), GgmlType::Q5_K);
        assert_eq!(choose(OutType::Q5_K_M, "blk.6.attn_v.weight", at(Some(6), 32, 2, false)), GgmlType::Q6_K);
        assert_eq!(choose(OutType::Q5_K_S, "blk.6.attn_v.weight", at(Some(6), 32, 2, false)), GgmlType::Q5_K);
        assert_eq!(choose(OutType::IQ4_NL, "blk.3.ffn_down.weight", at(Some(3), 32, 2, false)), GgmlType::Q5_K);
        assert_eq!(choose(OutType::Q5_1, "blk.3.ffn_down.weight", at(Some(3), 32, 2, false)), GgmlType::Q5_1);
    }

    #[test]
    fn fallbacks() {
        assert_eq!(fit(GgmlType::Q4_K, 640), GgmlType::Q5_0);
        assert_eq!(fit(GgmlType::Q6_K, 640), GgmlType::Q8_0);
        assert_eq!(fit(GgmlType::Q5_K, 640), GgmlType::Q5_1);
        assert_eq!(fit(GgmlType::Q4_0, 100), GgmlType::F16);
        assert_eq!(fit(GgmlType::Q4_K, 4096), GgmlType::Q4_K);
        assert_eq!(fit(GgmlType::Q3_K, 640), GgmlType::Q4_0);
        assert_eq!(fit(GgmlType::IQ4_NL, 100), GgmlType::F16);
    }
}
