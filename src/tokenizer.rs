//! Text ↔ token ids, built from GGUF metadata.
//!
//! Two sources, tried in order:
//! 1. `tokenizer.huggingface.json`, the checkpoint's own `tokenizer.json` that `dlm-convert` embeds;
//! 2. the `tokenizer.ggml.tokens/scores/token_type` arrays every llama.cpp GGUF has
//!    (`tokenizer.ggml.model = "llama"`: SentencePiece BPE with byte fallback). These are rebuilt
//!    into the equivalent Hugging Face BPE: SentencePiece merges the adjacent pair whose
//!    concatenation has the highest score, so every split `(l, r)` of a vocabulary piece with
//!    both halves in the vocabulary becomes a merge ranked by that piece's score.
//!
//! 3. `tokenizer.ggml.model = "gpt2"`: byte-level BPE from `tokenizer.ggml.tokens/merges`, with the
//!    pre-tokenizer llama.cpp names in `tokenizer.ggml.pre` (SmolLM2 and GPT-2 style).
//!
//! Both give identical ids on the LLaMA tokenizer's published test cases (tests/tokenizer.rs).
//! BOS is added here, not by the JSON's post-processor, so both paths behave the same.

use std::collections::HashMap;

use serde_json::json;

use crate::error::{Error, Result};
use crate::gguf::{Gguf, ValueType};
use crate::keys::{self, token_type};

/// Where a [`Tokenizer`] was built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerSource {
    EmbeddedJson,
    SpmArrays,
    Gpt2Arrays,
}

impl std::fmt::Display for TokenizerSource {
    /// Where it came from, in the file's terms.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenizerSource::EmbeddedJson => "the embedded tokenizer.json (tokenizer.huggingface.json)",
            TokenizerSource::SpmArrays => "SentencePiece token arrays (tokenizer.ggml.*)",
            TokenizerSource::Gpt2Arrays => "byte-level BPE token arrays and merges (tokenizer.ggml.*)",
        })
    }
}

/// A ready tokenizer plus the special ids the runtime needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    pub source: TokenizerSource,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("source", &self.source)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// The fields the tokenizers library reads at the top of a `tokenizer.json`. At any other it
/// stops with what reads as a JSON syntax error (`expected , or }`): it skips the key but not
/// its value.
const HF_JSON_FIELDS: [&str; 9] = ["version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer", "model", "post_processor", "decoder"];

/// A `tokenizer.json` through the tokenizers library; when it fails on a top-level field it
/// does not know, the error names that field instead of repeating the library's message.
pub fn parse_hf_json(text: &str) -> std::result::Result<tokenizers::Tokenizer, String> {
    text.parse::<tokenizers::Tokenizer>().map_err(|e| {
        // Only the keys are kept: a huge unknown field costs a scan, not a copy.
        let keys = serde_json::from_str::<std::collections::BTreeMap<String, serde::de::IgnoredAny>>(text);
        match keys.ok().and_then(|k| k.into_keys().find(|k| !HF_JSON_FIELDS.contains(&k.as_str()))) {
            Some(field) => format!(
                "it has a top-level field `{}`, and only {} are read (remove the field)",
                crate::gguf::shown_name(&field),
                HF_JSON_FIELDS.join(", ")
            ),
            None => e.to_string(),
        }
    })
}

impl Tokenizer {
    /// From the embedded JSON when present, else from the token arrays.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        match g.get(keys::HF_JSON) {
            Some(_) => Self::from_gguf_json(g),
            None => Self::from_gguf_arrays(g),
        }
    }

    /// From `tokenizer.huggingface.json` only.
    pub fn from_gguf_json(g: &Gguf) -> Result<Tokenizer> {
        let json = g.get_str(keys::HF_JSON)?;
        let inner = parse_hf_json(json).map_err(|e| g.metadata_error(keys::HF_JSON, format!("not a valid tokenizer.json: {e}")))?;
        Self::with_specials(g, inner, TokenizerSource::EmbeddedJson)
    }

    /// From `tokenizer.ggml.*` arrays only (the path GGUFs from llama.cpp's converter take).
    pub fn from_gguf_arrays(g: &Gguf) -> Result<Tokenizer> {
        let model = g.get_str(keys::TOKENIZER_MODEL)?;
        match model {
            "llama" => {}
            "gpt2" => return Self::from_gpt2_arrays(g),
            _ => {
                return Err(g.metadata_error(
                    keys::TOKENIZER_MODEL,
                    format!("tokenizer model `{model}` is not supported yet (supported: \"llama\", \"gpt2\")"),
                ))
            }
        }
        let tokens: Vec<String> = g
            .get_array(keys::TOKENS, ValueType::String)?
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect();
        let n = tokens.len();
        let scores: Vec<f32> = match g.get(keys::SCORES) {
            None => vec![0.0; n],
            Some(_) => g.get_array(keys::SCORES, ValueType::F32)?.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
        };
        let types: Vec<i32> = match g.get(keys::TOKEN_TYPE) {
            None => vec![token_type::NORMAL; n],
            Some(_) => g.get_array(keys::TOKEN_TYPE, ValueType::I32)?.iter().map(|v| v.as_i64().unwrap_or(1) as i32).collect(),
        };
        for (key, len) in [(keys::SCORES, scores.len()), (keys::TOKEN_TYPE, types.len())] {
            if len != n {
                return Err(g.metadata_error(key, format!("{len} entries, but {} has {n}", keys::TOKENS)));
            }
        }
        let unk = match g.get(keys::UNK_ID) {
            Some(_) => Some(g.get_u32(keys::UNK_ID)?),
            None => types.iter().position(|&t| t == token_type::UNKNOWN).map(|i| i as u32),
        };
        if let Some(id) = unk.filter(|&id| id as usize >= n) {
            return Err(g.metadata_error(keys::UNK_ID, format!("id {id} is outside the {n}-token vocabulary")));
        }
        let json = spm_tokenizer_json(&tokens, &scores, &types, unk)?;
        let inner = json.parse::<tokenizers::Tokenizer>().map_err(tok_err)?;
        Self::with_specials(g, inner, TokenizerSource::SpmArrays)
    }

    /// Byte-level BPE (GPT-2 family) from tokens, merges and token types.
    fn from_gpt2_arrays(g: &Gguf) -> Result<Tokenizer> {
        let strings = |key: &str| -> Result<Vec<String>> {
            Ok(g.get_array(key, ValueType::String)?.iter().map(|v| v.as_str().unwrap_or_default().to_owned()).collect())
        };
        let tokens = strings(keys::TOKENS)?;
        let merges = strings(keys::MERGES)?
            .iter()
            .enumerate()
            .map(|(i, m)| match m.split_once(' ') {
                Some((l, r)) => Ok((l.to_owned(), r.to_owned())),
                None => Err(g.metadata_error(keys::MERGES, format!("merge {i} ({m:?}) is not \"left right\""))),
            })
            .collect::<Result<Vec<_>>>()?;
        let types: Vec<i32> = match g.get(keys::TOKEN_TYPE) {
            None => vec![token_type::NORMAL; tokens.len()],
            Some(_) => g.get_array(keys::TOKEN_TYPE, ValueType::I32)?.iter().map(|v| v.as_i64().unwrap_or(1) as i32).collect(),
        };
        let pre = g.get(keys::PRE).and_then(|v| v.as_str()).unwrap_or("default");
        let pre_tokenizer = byte_level_pre_tokenizer(pre).ok_or_else(|| {
            g.metadata_error(keys::PRE, format!("pre-tokenizer `{}` is not supported yet (supported: {})", crate::gguf::shown_name(pre), BYTE_LEVEL_PRE.join(", ")))
        })?;
        let tok = byte_level_tokenizer_json(&tokens, merges, &types, pre_tokenizer);
        let inner = tok.to_string().parse::<tokenizers::Tokenizer>().map_err(tok_err)?;
        Self::with_specials(g, inner, TokenizerSource::Gpt2Arrays)
    }

    fn with_specials(g: &Gguf, inner: tokenizers::Tokenizer, source: TokenizerSource) -> Result<Tokenizer> {
        let opt_u32 = |key: &str| -> Result<Option<u32>> { g.get(key).map(|_| g.get_u32(key)).transpose() };
        let add_bos = match g.get(keys::ADD_BOS) {
            Some(_) => g.get_bool(keys::ADD_BOS)?,
            // llama.cpp's defaults for a file that does not say: SentencePiece vocabularies add
            // BOS, byte-level BPE ones (GPT-2, Qwen2's Dream) do not.
            None => g.get(keys::TOKENIZER_MODEL).and_then(|v| v.as_str()) != Some("gpt2"),
        };
        let t = Tokenizer { inner, bos: opt_u32(keys::BOS_ID)?, eos: opt_u32(keys::EOS_ID)?, add_bos, source };
        for (key, id) in [(keys::BOS_ID, t.bos), (keys::EOS_ID, t.eos)] {
            if let Some(id) = id.filter(|&id| id as usize >= t.vocab_size()) {
                return Err(g.metadata_error(key, format!("id {id} is outside the {}-token vocabulary", t.vocab_size())));
            }
        }
        Ok(t)
    }

    /// Wraps an already-built Hugging Face tokenizer.
    pub fn from_hf(inner: tokenizers::Tokenizer, bos: Option<u32>, eos: Option<u32>, add_bos: bool) -> Tokenizer {
        Tokenizer { inner, bos, eos, add_bos, source: TokenizerSource::EmbeddedJson }
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, with BOS first when the model wants it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// A prompt's ids as the canvas starts: BOS (when the model wants it) + the prompt; an
    /// empty prompt is BOS alone (id 1 when the file names none), so the canvas has a start.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(prompt)?;
        if ids.is_empty() {
            ids.extend(self.bos.or(Some(1)));
        }
        Ok(ids)
    }

    /// A suffix's ids (the text after an infilled span): it continues the text, so no BOS.
    pub fn suffix_ids(&self, suffix: &str) -> Result<Vec<u32>> {
        if suffix.is_empty() {
            return Ok(Vec::new());
        }
        let ids = self.encode(suffix)?;
        Ok(ids.into_iter().skip(usize::from(self.add_bos && self.bos.is_some())).collect())
    }

    /// `context` and `continuation` as a scorer sees them (lm-evaluation-harness's rule): the
    /// context's trailing spaces move to the continuation, and the continuation is the tail of
    /// the whole text's tokens when the context's tokens begin them (else tokenized alone).
    pub fn split_continuation(&self, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let trimmed = context.trim_end_matches(' ');
        let continuation = format!("{}{continuation}", &context[trimmed.len()..]);
        let ctx = self.prompt_ids(trimmed)?;
        let whole = self.prompt_ids(&format!("{trimmed}{continuation}"))?;
        if whole.len() > ctx.len() && whole.starts_with(&ctx) {
            let cont = whole[ctx.len()..].to_vec();
            return Ok((ctx, cont));
        }
        Ok((ctx, self.suffix_ids(&continuation)?))
    }

    /// Text of `ids`, skipping special tokens (BOS, EOS, ...).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    /// A partly masked span as its final text will read: `Some(text)` for each run of committed
    /// tokens, `None` for each masked position. A run after a masked position is decoded after
    /// an anchor token and the anchor's text cut off, so it keeps the leading space that the
    /// whole span's decode gives it (decoding the run alone would drop it). With `continues`
    /// (the span follows text, such as a prompt, that is shown before it) the first run is
    /// decoded that way too, so prompt + runs reads as the whole canvas does; without, it is
    /// decoded as a text's start is. Like the final text, it ends at the first committed EOS.
    /// With nothing masked and not `continues` it is one run equal to [`Tokenizer::decode`] of
    /// the span up to EOS.
    pub fn decode_canvas(&self, tokens: &[u32], masked: &[bool], continues: bool) -> Result<Vec<Option<String>>> {
        let anchor = self.inner.encode("a", false).map_err(tok_err)?.get_ids().last().copied();
        let anchor_text = match anchor {
            Some(a) => Some((a, self.decode(&[a])?)),
            None => None,
        };
        let end = tokens.iter().zip(masked).position(|(&t, &m)| !m && Some(t) == self.eos).unwrap_or(tokens.len());
        let mut out = Vec::new();
        let mut i = 0;
        while i < end {
            if masked[i] {
                out.push(None);
                i += 1;
                continue;
            }
            let j = (i..end).find(|&k| masked[k]).unwrap_or(end);
            let run = &tokens[i..j];
            let text = match (&anchor_text, i > 0 || continues) {
                (Some((a, a_text)), true) => {
                    let with = self.decode(&[&[*a], run].concat())?;
                    match with.strip_prefix(a_text.as_str()) {
                        Some(rest) => rest.to_owned(),
                        None => self.decode(run)?,
                    }
                }
                _ => self.decode(run)?,
            };
            out.push(Some(text));
            i = j;
        }
        Ok(out)
    }

    /// The text of one token as stored in the vocabulary (e.g. "▁the", "<0x0A>").
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The underlying Hugging Face tokenizer.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Qwen2's split (Dream's tokenizer): GPT-2's, with case-insensitive contractions, single digits
/// and newlines kept apart.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values [`byte_level_pre_tokenizer`] knows.
pub const BYTE_LEVEL_PRE: &[&str] = &["default", "gpt-2", "gpt2", "smollm", "qwen2"];

/// The Hugging Face pre-tokenizer llama.cpp means by `tokenizer.ggml.pre = name` for a byte-level
/// BPE vocabulary, if known.
pub fn byte_level_pre_tokenizer(name: &str) -> Option<serde_json::Value> {
    let gpt2 = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    Some(match name {
        "default" | "gpt2" | "gpt-2" => gpt2,
        // llama.cpp's SMOLLM: each digit on its own, then GPT-2's regex.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, gpt2]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]}),
        _ => return None,
    })
}

/// The `tokenizer.ggml.pre` name of a `tokenizer.json` pre-tokenizer, when it splits text as one
/// llama.cpp knows does (compared by what decides the split: the regex and the byte mapping).
pub fn byte_level_pre_name(pre: &serde_json::Value) -> Option<&'static str> {
    let shape = |v: &serde_json::Value| -> serde_json::Value {
        match v["type"].as_str() {
            Some("ByteLevel") => json!(["ByteLevel", v["use_regex"].as_bool().unwrap_or(true), v["add_prefix_space"].as_bool().unwrap_or(false)]),
            Some("Split") => json!(["Split", v["pattern"], v["behavior"], v["invert"]]),
            Some("Digits") => json!(["Digits", v["individual_digits"]]),
            _ => json!(null),
        }
    };
    let flat = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        match v["type"].as_str() {
            Some("Sequence") => v["pretokenizers"].as_array().map(|a| a.iter().map(shape).collect()).unwrap_or_default(),
            _ => vec![shape(v)],
        }
    };
    let want = flat(pre);
    ["gpt-2", "smollm", "qwen2"].into_iter().find(|&name| byte_level_pre_tokenizer(name).is_some_and(|p| flat(&p) == want))
}

/// A Hugging Face `tokenizer.json` for a byte-level BPE (GPT-2 family) vocabulary: `tokens` in id
/// order, `merges` by rank, token types (CONTROL and USER_DEFINED ones become added tokens) and
/// the pre-tokenizer. The decoder maps bytes back; no post-processor (BOS is added by
/// [`Tokenizer`], not by the JSON).
pub fn byte_level_tokenizer_json(tokens: &[String], merges: Vec<(String, String)>, types: &[i32], pre_tokenizer: serde_json::Value) -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let added: Vec<_> = tokens
        .iter()
        .enumerate()
        .filter(|&(i, _)| matches!(types.get(i), Some(&token_type::CONTROL) | Some(&token_type::USER_DEFINED)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": types[i] == token_type::CONTROL})
        })
        .collect();
    let merges: Vec<serde_json::Value> = merges.into_iter().map(|(l, r)| json!([l, r])).collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    })
}

/// The Hugging Face `tokenizer.json` equivalent to a SentencePiece BPE vocabulary
/// (LLaMA's: byte fallback, "▁" for spaces, a dummy prefix), merges derived from `scores`.
pub fn spm_tokenizer_json(tokens: &[String], scores: &[f32], types: &[i32], unk: Option<u32>) -> Result<String> {
    let n = tokens.len();
    if scores.len() != n || types.len() != n {
        return Err(Error::Tokenizer(format!("{n} tokens but {} scores and {} types", scores.len(), types.len())));
    }
    let mut vocab = serde_json::Map::with_capacity(n);
    let mut ids: HashMap<&str, u32> = HashMap::with_capacity(n);
    for (i, t) in tokens.iter().enumerate() {
        if ids.insert(t, i as u32).is_some() {
            return Err(Error::Tokenizer(format!("token {t:?} appears twice (second at id {i})")));
        }
        vocab.insert(t.clone(), json!(i));
    }
    let unk_token = match unk {
        Some(id) => Some(tokens.get(id as usize).ok_or_else(|| Error::Tokenizer(format!("unknown-token id {id} out of range")))?),
        None => None,
    };

    // Every split of a mergeable piece into two pieces that exist.
    let mut merges: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if !matches!(types[i], token_type::NORMAL | token_type::USER_DEFINED) || piece.chars().nth(1).is_none() {
            continue;
        }
        for (k, _) in piece.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (ids.get(&piece[..k]), ids.get(&piece[k..])) {
                merges.push((scores[i], i as u32, l, r));
            }
        }
    }
    // Highest score first; among splits of equal score, the lower piece id, then the left part.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<_> =
        merges.iter().map(|&(_, _, l, r)| json!([tokens[l as usize], tokens[r as usize]])).collect();

    let added: Vec<_> = tokens
        .iter()
        .enumerate()
        .filter(|&(i, _)| matches!(types[i], token_type::CONTROL | token_type::UNKNOWN))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();

    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}
        ]},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk_token,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    });
    Ok(tok.to_string())
}
