//! GGUF metadata keys and constants dlm reads and writes (llama.cpp's names where they exist).

pub const ARCHITECTURE: &str = "general.architecture";
pub const NAME: &str = "general.name";
pub const FILE_TYPE: &str = "general.file_type";
pub const QUANTIZATION_VERSION: &str = "general.quantization_version";
pub const ALIGNMENT: &str = "general.alignment";

pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
pub const TOKENS: &str = "tokenizer.ggml.tokens";
pub const SCORES: &str = "tokenizer.ggml.scores";
pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
pub const MERGES: &str = "tokenizer.ggml.merges";
pub const PRE: &str = "tokenizer.ggml.pre";
pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
pub const UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
pub const PAD_ID: &str = "tokenizer.ggml.padding_token_id";
pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
pub const MASK_ID: &str = "tokenizer.ggml.mask_token_id";
pub const HF_JSON: &str = "tokenizer.huggingface.json";
pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

pub const SHIFT_LOGITS: &str = "diffusion.shift_logits";

/// DiffuLLaMA's mask token ("ти", id 811 in the LLaMA-2 vocabulary; the training code's default).
pub const DIFFULLAMA_MASK_ID: u32 = 811;

/// `llama.*` keys, formatted with the architecture name.
pub fn arch(arch: &str, key: &str) -> String {
    format!("{arch}.{key}")
}

/// `tokenizer.ggml.token_type` values.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// `general.file_type` (llama.cpp's `llama_ftype`).
pub mod file_type {
    pub const ALL_F32: u32 = 0;
    pub const MOSTLY_F16: u32 = 1;
    pub const MOSTLY_Q4_0: u32 = 2;
    pub const MOSTLY_Q4_1: u32 = 3;
    pub const MOSTLY_Q8_0: u32 = 7;
    pub const MOSTLY_Q5_0: u32 = 8;
    pub const MOSTLY_Q5_1: u32 = 9;
    pub const MOSTLY_Q2_K: u32 = 10;
    pub const MOSTLY_Q3_K_S: u32 = 11;
    pub const MOSTLY_Q3_K_M: u32 = 12;
    pub const MOSTLY_Q3_K_L: u32 = 13;
    pub const MOSTLY_Q4_K_S: u32 = 14;
    pub const MOSTLY_Q4_K_M: u32 = 15;
    pub const MOSTLY_Q5_K_S: u32 = 16;
    pub const MOSTLY_Q5_K_M: u32 = 17;
    pub const MOSTLY_Q6_K: u32 = 18;
    pub const MOSTLY_IQ4_NL: u32 = 25;
    pub const MOSTLY_IQ4_XS: u32 = 30;
    pub const MOSTLY_BF16: u32 = 32;
}
