//! The tokenizer of a checkpoint, turned into what GGUF stores: llama.cpp's token arrays
//! (`tokenizer.ggml.tokens/scores/token_type`) plus the Hugging Face JSON itself.
//!
//! Two kinds of vocabulary:
//! - SentencePiece-style BPE (LLaMA, DiffuLLaMA): `tokenizer.ggml.model = "llama"` with scores.
//!   Sources: `tokenizer.json` (BPE with byte fallback, as LLaMA's fast tokenizer) and/or
//!   SentencePiece's `tokenizer.model`.
//! - Byte-level BPE (GPT-2, Qwen2, LLaDA): `tokenizer.ggml.model = "gpt2"` with the merges and
//!   llama.cpp's name for the pre-tokenizer. Sources: `tokenizer.json`, or GPT-2's older
//!   `vocab.json` + `merges.txt` (from which a `tokenizer.json` is built to embed).
//!
//! For SentencePiece vocabularies: With `tokenizer.model` the scores are SentencePiece's own;
//! from `tokenizer.json` alone they are derived from the merge ranks (a piece first produced by
//! merge *r* scores −r), which makes SentencePiece's "merge the highest-scoring pair" rule pick
//! the same merges as the BPE model.

use std::collections::HashMap;
use std::path::Path;

use dlm::keys::token_type;
use serde_json::Value as Json;

use crate::{ConvertError, Result};

/// Everything tokenizer-related that goes into the GGUF.
#[derive(Clone, Debug)]
pub struct Vocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// The mask token named by `tokenizer_config.json`, if any.
    pub mask_from_config: Option<u32>,
    /// The Jinja chat template (`chat_template.jinja`, else `tokenizer_config.json`'s
    /// `chat_template`), written as `tokenizer.chat_template` as llama.cpp's converter does.
    pub chat_template: Option<String>,
    /// What the converter should say about the tokenizer files without refusing them.
    pub warnings: Vec<String>,
    /// The Hugging Face tokenizer JSON to embed (the checkpoint's, or rebuilt from tokenizer.model).
    pub hf_json: String,
    pub kind: VocabKind,
}

/// How text becomes tokens, as GGUF records it.
#[derive(Clone, Debug, PartialEq)]
pub enum VocabKind {
    /// SentencePiece-style BPE with byte fallback (`tokenizer.ggml.model = "llama"`, scores).
    SentencePiece,
    /// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): merges by rank, and llama.cpp's name
    /// of the pre-tokenizer when it is one llama.cpp knows.
    ByteLevel { merges: Vec<String>, pre: Option<&'static str> },
}

impl Vocab {
    /// Token arrays with defaults for everything `tokenizer_config.json` may later set.
    fn from_arrays(tokens: Vec<String>, scores: Vec<f32>, types: Vec<i32>, unk: Option<u32>) -> Vocab {
        Vocab {
            tokens,
            scores,
            types,
            bos: None,
            eos: None,
            unk,
            pad: None,
            add_bos: true,
            add_eos: false,
            mask_from_config: None,
            chat_template: None,
            warnings: Vec::new(),
            hf_json: String::new(),
            kind: VocabKind::SentencePiece,
        }
    }

    /// Pads the token list to `n` with llama.cpp's `[PAD{i}]` placeholders (type UNUSED): a
    /// model's embedding is often wider than its tokenizer (Qwen2, LLaDA).
    pub fn pad_to(&mut self, n: usize) {
        for i in self.tokens.len()..n {
            self.tokens.push(format!("[PAD{i}]"));
            self.types.push(token_type::UNUSED);
            if !self.scores.is_empty() {
                self.scores.push(0.0);
            }
        }
    }

    pub fn id_of(&self, token: &str) -> Option<u32> {
        self.tokens.iter().position(|t| t == token).map(|i| i as u32)
    }

    /// The checkpoint's tokenizer; `max_tokens` (config.json's `vocab_size`) bounds byte-level
    /// token ids, whose gaps become placeholders.
    pub fn load(dir: &Path, max_tokens: u64) -> Result<Vocab> {
        let limit = max_tokens.min(MAX_TOKENS as u64) as u32;
        let json_path = dir.join("tokenizer.json");
        let model_path = dir.join("tokenizer.model");
        let (mut v, json_text) = match (json_path.exists(), model_path.exists()) {
            (true, has_model) => {
                let text = crate::read_text(&json_path)?;
                let mut v = from_hf_json(&json_path, &text, limit)?;
                if has_model {
                    // SentencePiece's own scores are the ground truth for llama.cpp's tokenizer.
                    let sp = from_sentencepiece(&model_path)?;
                    if sp.tokens == v.tokens {
                        v.scores = sp.scores;
                    }
                }
                (v, text)
            }
            (false, true) => {
                let v = from_sentencepiece(&model_path)?;
                let json = dlm::tokenizer::spm_tokenizer_json(&v.tokens, &v.scores, &v.types, v.unk)
                    .map_err(|e| ConvertError::input(&model_path, e.to_string()))?;
                (v, json)
            }
            (false, false) if dir.join("vocab.json").exists() && dir.join("merges.txt").exists() => from_vocab_and_merges(dir, limit)?,
            (false, false) => {
                return Err(ConvertError::input(dir, "no tokenizer found: expected tokenizer.json, tokenizer.model, or vocab.json with merges.txt".into()))
            }
        };
        v.hf_json = json_text;
        // Check the JSON really loads in the runtime's tokenizer library (naming the files it
        // came from: tokenizer.json, or what was built from the others).
        let source = if json_path.exists() {
            json_path.clone()
        } else if model_path.exists() {
            model_path.clone()
        } else {
            dir.join("vocab.json")
        };
        dlm::tokenizer::parse_hf_json(&v.hf_json).map_err(|e| ConvertError::input(&source, format!("the tokenizers library cannot load it: {e}")))?;
        apply_tokenizer_config(dir, &mut v)?;
        v.chat_template = chat_template(dir, &mut v.warnings)?;
        Ok(v)
    }
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// The longest chat template taken (the largest published ones are about 20 KB).
const MAX_CHAT_TEMPLATE: usize = 1 << 20;

/// The checkpoint's chat template: `chat_template.jinja` (newer transformers), else
/// `tokenizer_config.json`'s `chat_template`, a string or a list of `{name, template}` of which
/// the one named `default` is taken (llama.cpp's converter writes the others under their names;
/// dlm-server renders only one).
fn chat_template(dir: &Path, warnings: &mut Vec<String>) -> Result<Option<String>> {
    let file = dir.join("chat_template.jinja");
    let (path, text) = if file.exists() {
        (file.clone(), crate::read_text(&file)?)
    } else {
        let (path, cfg) = tokenizer_config(dir)?;
        let text = match &cfg["chat_template"] {
            Json::Null => return Ok(None),
            Json::String(t) => t.clone(),
            Json::Array(named) => {
                let default = named.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str());
                match default {
                    Some(t) => t.to_owned(),
                    None => {
                        warnings.push(format!("{}: chat_template is a list without a template named \"default\"; no chat template is written", path.display()));
                        return Ok(None);
                    }
                }
            }
            other => {
                warnings.push(format!("{}: chat_template is {}, not a string or a list of {{name, template}}; no chat template is written", path.display(), json_kind(other)));
                return Ok(None);
            }
        };
        (path, text)
    };
    if text.len() > MAX_CHAT_TEMPLATE {
        return Err(ConvertError::input(&path, format!("the chat template is {} bytes; at most {MAX_CHAT_TEMPLATE} are taken", text.len())));
    }
    Ok(Some(text))
}

fn byte_token(t: &str) -> bool {
    t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && u8::from_str_radix(&t[3..5], 16).is_ok()
}

fn from_hf_json(path: &Path, text: &str, limit: u32) -> Result<Vocab> {
    let j: Json = serde_json::from_str(text).map_err(|e| ConvertError::input(path, format!("not valid JSON: {e}")))?;
    let model = &j["model"];
    match model["type"].as_str() {
        Some("BPE") => {}
        None => return Err(ConvertError::field(path, "model.type", "missing; expected \"BPE\"".into())),
        Some(ty) => return Err(ConvertError::field(path, "model.type", format!("`{ty}` is not supported; expected \"BPE\" (SentencePiece-style with byte fallback, or byte-level)"))),
    }
    if model["byte_fallback"].as_bool() != Some(true) && has_byte_level(&j) {
        return from_byte_level_json(path, &j, limit);
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| ConvertError::field(path, "model.vocab", "expected an object of token -> id".into()))?;
    let mut by_id: HashMap<u32, String> = HashMap::with_capacity(vocab.len());
    let mut special: HashMap<u32, bool> = HashMap::new();
    let id_of = |v: &Json, field: &str| -> Result<u32> {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| ConvertError::field(path, field, format!("token id {v} is not a u32")))
    };
    for (tok, id) in vocab {
        by_id.insert(id_of(id, "model.vocab")?, tok.clone());
    }
    for added in j["added_tokens"].as_array().into_iter().flatten() {
        let id = id_of(&added["id"], "added_tokens")?;
        let content = added["content"].as_str().unwrap_or_default().to_owned();
        if let Some(prev) = by_id.insert(id, content.clone()) {
            if prev != content {
                return Err(ConvertError::field(path, "added_tokens", format!("id {id} is both {prev:?} and {content:?}")));
            }
        }
        special.insert(id, added["special"].as_bool().unwrap_or(false));
    }
    let n = by_id.len() as u32;
    let tokens: Vec<String> = (0..n)
        .map(|i| by_id.remove(&i).ok_or_else(|| ConvertError::field(path, "model.vocab", format!("ids are not dense: id {i} is missing"))))
        .collect::<Result<_>>()?;
    let ids: HashMap<&str, u32> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i as u32)).collect();

    // Merge ranks -> scores.
    let merges = model["merges"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut first_rank: Vec<Option<usize>> = vec![None; tokens.len()];
    for (rank, m) in merges.iter().enumerate() {
        let (l, r) = match m {
            Json::String(s) => s.split_once(' ').unwrap_or((s, "")),
            Json::Array(a) if a.len() == 2 => (a[0].as_str().unwrap_or(""), a[1].as_str().unwrap_or("")),
            _ => return Err(ConvertError::field(path, "model.merges", format!("merge {rank} is neither \"a b\" nor [a, b]"))),
        };
        if let Some(&id) = ids.get(format!("{l}{r}").as_str()) {
            first_rank[id as usize].get_or_insert(rank);
        }
    }
    let unk_token = model["unk_token"].as_str();
    let unk = unk_token.and_then(|u| ids.get(u).copied());
    let nm = merges.len() as f32;
    let mut scores = Vec::with_capacity(tokens.len());
    let mut types = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let i32_ = i as u32;
        let ty = if Some(i32_) == unk {
            token_type::UNKNOWN
        } else if let Some(&sp) = special.get(&i32_) {
            if sp { token_type::CONTROL } else { token_type::USER_DEFINED }
        } else if byte_token(t) {
            token_type::BYTE
        } else {
            token_type::NORMAL
        };
        types.push(ty);
        scores.push(match (ty, first_rank[i]) {
            (token_type::NORMAL, Some(r)) => -(r as f32),
            (token_type::NORMAL, None) => -(nm + i as f32),
            _ => 0.0,
        });
    }
    Ok(Vocab::from_arrays(tokens, scores, types, unk))
}

/// Whether a `tokenizer.json` maps bytes to printable characters (GPT-2's `ByteLevel`), in its
/// pre-tokenizer or decoder.
fn has_byte_level(j: &Json) -> bool {
    fn any(v: &Json) -> bool {
        v["type"] == "ByteLevel" || ["pretokenizers", "decoders"].iter().any(|k| v[k].as_array().is_some_and(|a| a.iter().any(any)))
    }
    any(&j["pre_tokenizer"]) || any(&j["decoder"])
}

/// Token id of a `model.vocab` or `added_tokens` entry, below `limit` (config.json's
/// `vocab_size`, at most [`MAX_TOKENS`]).
fn token_id(path: &Path, v: &Json, field: &str, limit: u32) -> Result<u32> {
    v.as_u64()
        .and_then(|x| u32::try_from(x).ok())
        .filter(|&x| x < limit)
        .ok_or_else(|| ConvertError::field(path, field, format!("token id {v} is not below {limit} (config.json vocab_size)")))
}

/// No tokenizer has more tokens than this (the largest real ones have about 262,000); an id
/// beyond it is a broken file, not a vocabulary to pad with placeholders.
const MAX_TOKENS: u32 = 1 << 21;

/// Byte-level BPE tokens, types and merges from `tokenizer.json`. Ids need not be dense: gaps
/// become `[PAD{i}]` placeholders, as llama.cpp's converter writes them.
fn from_byte_level_json(path: &Path, j: &Json, limit: u32) -> Result<Vocab> {
    let model = &j["model"];
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| ConvertError::field(path, "model.vocab", "expected an object of token -> id".into()))?;
    let mut by_id: HashMap<u32, (String, i32)> = HashMap::with_capacity(vocab.len());
    for (tok, id) in vocab {
        if let Some((prev, _)) = by_id.insert(token_id(path, id, "model.vocab", limit)?, (tok.clone(), token_type::NORMAL)) {
            return Err(ConvertError::field(path, "model.vocab", format!("id {id} is both {prev:?} and {tok:?}")));
        }
    }
    for added in j["added_tokens"].as_array().into_iter().flatten() {
        let id = token_id(path, &added["id"], "added_tokens", limit)?;
        let content = added["content"].as_str().unwrap_or_default().to_owned();
        let ty = if added["special"].as_bool().unwrap_or(false) { token_type::CONTROL } else { token_type::USER_DEFINED };
        if let Some((prev, _)) = by_id.get(&id) {
            if *prev != content {
                return Err(ConvertError::field(path, "added_tokens", format!("id {id} is both {prev:?} and {content:?}")));
            }
        }
        by_id.insert(id, (content, ty));
    }
    let n = by_id.keys().max().map_or(0, |&m| m + 1);
    let (mut tokens, mut types) = (Vec::with_capacity(n as usize), Vec::with_capacity(n as usize));
    for i in 0..n {
        let (t, ty) = by_id.remove(&i).unwrap_or_else(|| (format!("[PAD{i}]"), token_type::UNUSED));
        tokens.push(t);
        types.push(ty);
    }
    let merges = model["merges"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(rank, m)| match m {
            Json::String(s) if s.split(' ').count() == 2 => Ok(s.clone()),
            Json::Array(a) if a.len() == 2 && a.iter().all(|x| x.as_str().is_some_and(|s| !s.contains(' '))) => {
                Ok(format!("{} {}", a[0].as_str().unwrap_or(""), a[1].as_str().unwrap_or("")))
            }
            _ => Err(ConvertError::field(path, "model.merges", format!("merge {rank} is neither \"a b\" nor [a, b]"))),
        })
        .collect::<Result<Vec<_>>>()?;
    let pre = dlm::tokenizer::byte_level_pre_name(&j["pre_tokenizer"]);
    let mut v = Vocab::from_arrays(tokens, Vec::new(), types, None);
    v.add_bos = false;
    v.kind = VocabKind::ByteLevel { merges, pre };
    Ok(v)
}

/// GPT-2's older tokenizer files: `vocab.json` (token → id) and `merges.txt` (one merge per line
/// after a `#version` header). Returns the vocabulary and the `tokenizer.json` built from them.
fn from_vocab_and_merges(dir: &Path, limit: u32) -> Result<(Vocab, String)> {
    let vocab_path = dir.join("vocab.json");
    let text = crate::read_text(&vocab_path)?;
    let vocab: Json = serde_json::from_str(&text).map_err(|e| ConvertError::input(&vocab_path, format!("not valid JSON: {e}")))?;
    let Some(map) = vocab.as_object() else {
        return Err(ConvertError::input(&vocab_path, "expected a JSON object of token -> id".into()));
    };
    let merges_path = dir.join("merges.txt");
    let merges_text = crate::read_text(&merges_path)?;
    let mut merges = Vec::new();
    for (i, line) in merges_text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.is_empty() {
            continue;
        }
        let bad = |what: &str| ConvertError::input(&merges_path, format!("line {}: {line:?} {what}", i + 1));
        let (l, r) = match line.split_once(' ') {
            Some((l, r)) if !l.is_empty() && !r.is_empty() && !r.contains(' ') => (l, r),
            _ => return Err(bad("is not \"left right\"")),
        };
        // The tokenizers library needs both halves and their merge in the vocabulary.
        if let Some(t) = [l, r, &format!("{l}{r}")].into_iter().find(|t| !map.contains_key(*t)) {
            return Err(bad(&format!("merges `{t}`, which vocab.json does not have")));
        }
        merges.push(format!("{l} {r}"));
    }
    let pre = dlm::tokenizer::byte_level_pre_tokenizer("gpt-2").expect("GPT-2's pre-tokenizer is known");
    let j = serde_json::json!({"model": {"vocab": vocab, "merges": merges}, "pre_tokenizer": pre});
    let mut v = from_byte_level_json(&vocab_path, &j, limit)?;
    // GPT-2's `<|endoftext|>` sits in vocab.json itself; tokenizer_config.json names it.
    let (cfg_path, cfg) = tokenizer_config(dir)?;
    if cfg["add_prefix_space"].as_bool() == Some(true) {
        return Err(ConvertError::field(&cfg_path, "add_prefix_space", "true is not supported (GPT-2 and DiffuGPT tokenize without a prefix space); expected false".into()));
    }
    let specials = special_contents(&cfg);
    for (t, ty) in v.tokens.iter().zip(v.types.iter_mut()) {
        if specials.iter().any(|s| s == t) {
            *ty = token_type::CONTROL;
        }
    }
    let pairs = merges.iter().filter_map(|m| m.split_once(' ')).map(|(l, r)| (l.to_owned(), r.to_owned())).collect();
    let json = dlm::tokenizer::byte_level_tokenizer_json(&v.tokens, pairs, &v.types, j["pre_tokenizer"].clone()).to_string();
    Ok((v, json))
}

/// `tokenizer_config.json` (`Json::Null` when the checkpoint has none) and its path.
fn tokenizer_config(dir: &Path) -> Result<(std::path::PathBuf, Json)> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok((path, Json::Null));
    }
    let cfg = serde_json::from_str(&crate::read_text(&path)?).map_err(|e| ConvertError::input(&path, format!("not valid JSON: {e}")))?;
    Ok((path, cfg))
}

/// A special token as `tokenizer_config.json` writes it: a string or an AddedToken object
/// `{"content": ...}`.
fn special_content(v: &Json) -> Option<&str> {
    match v {
        Json::String(s) => Some(s.as_str()),
        Json::Object(o) => Some(o.get("content").and_then(Json::as_str).unwrap_or("")),
        _ => None,
    }
}

/// The fields of `tokenizer_config.json` that name special tokens.
const SPECIAL_FIELDS: [&str; 5] = ["bos_token", "eos_token", "unk_token", "pad_token", "mask_token"];

/// The contents of the special tokens `tokenizer_config.json` names (its `*_token` fields and
/// `added_tokens_decoder` entries marked special).
fn special_contents(cfg: &Json) -> Vec<String> {
    let named = SPECIAL_FIELDS.iter().filter_map(|f| special_content(&cfg[*f]));
    let decoder = cfg["added_tokens_decoder"].as_object().into_iter().flatten().filter(|(_, t)| t["special"].as_bool() == Some(true));
    named.chain(decoder.filter_map(|(_, t)| t["content"].as_str())).map(str::to_owned).collect()
}

/// Reads SentencePiece's `ModelProto`: field 1 `repeated SentencePiece { piece = 1; score = 2;
/// type = 3 }`, field 2 `TrainerSpec { model_type = 3 }`, field 3 `NormalizerSpec { name = 1;
/// add_dummy_prefix = 3; remove_extra_whitespaces = 4 }`. Only LLaMA-style models are accepted
/// (BPE, identity normalization, whitespace kept), since that is what the runtime rebuilds.
fn from_sentencepiece(path: &Path) -> Result<Vocab> {
    let bytes = crate::read_file(path)?;
    let bad = |what: &str| ConvertError::input(path, format!("not a SentencePiece model: {what}"));
    let (mut tokens, mut scores, mut types) = (Vec::new(), Vec::new(), Vec::new());
    // proto2 defaults: UNIGRAM, "nmt_nfkc"-style normalization unless named, both flags true.
    let (mut model_type, mut norm_name, mut remove_ws) = (1u64, String::new(), true);
    let mut r = Proto { buf: &bytes, pos: 0 };
    while let Some((field, wire)) = r.key().map_err(|_| bad("truncated field key"))? {
        match (field, wire) {
            (1, 2) => {
                let msg = r.bytes().map_err(|_| bad("truncated piece"))?;
                let mut p = Proto { buf: msg, pos: 0 };
                let (mut piece, mut score, mut ty) = (String::new(), 0f32, 1i32);
                while let Some((f, w)) = p.key().map_err(|_| bad("truncated piece field"))? {
                    match (f, w) {
                        (1, 2) => piece = String::from_utf8(p.bytes().map_err(|_| bad("piece"))?.to_vec()).map_err(|_| bad("piece is not UTF-8"))?,
                        (2, 5) => score = f32::from_le_bytes(p.fixed::<4>().map_err(|_| bad("score"))?),
                        (3, 0) => ty = p.varint().map_err(|_| bad("type"))? as i32,
                        _ => p.skip(w).map_err(|_| bad("piece field"))?,
                    }
                }
                tokens.push(piece);
                scores.push(score);
                types.push(ty);
            }
            (2, 2) => {
                let mut p = Proto { buf: r.bytes().map_err(|_| bad("trainer_spec"))?, pos: 0 };
                while let Some((f, w)) = p.key().map_err(|_| bad("trainer_spec field"))? {
                    match (f, w) {
                        (3, 0) => model_type = p.varint().map_err(|_| bad("model_type"))?,
                        _ => p.skip(w).map_err(|_| bad("trainer_spec field"))?,
                    }
                }
            }
            (3, 2) => {
                let mut p = Proto { buf: r.bytes().map_err(|_| bad("normalizer_spec"))?, pos: 0 };
                while let Some((f, w)) = p.key().map_err(|_| bad("normalizer_spec field"))? {
                    match (f, w) {
                        (1, 2) => norm_name = String::from_utf8_lossy(p.bytes().map_err(|_| bad("name"))?).into_owned(),
                        (4, 0) => remove_ws = p.varint().map_err(|_| bad("remove_extra_whitespaces"))? != 0,
                        _ => p.skip(w).map_err(|_| bad("normalizer_spec field"))?,
                    }
                }
            }
            _ => r.skip(wire).map_err(|_| bad("field"))?,
        }
    }
    if tokens.is_empty() {
        return Err(bad("no pieces"));
    }
    let unsupported = |field: &str, what: String| ConvertError::field(path, field, format!("{what}; only LLaMA-style SentencePiece models are supported (or provide tokenizer.json)"));
    if model_type != 2 {
        return Err(unsupported("trainer_spec.model_type", format!("model type {model_type} is not BPE (2)")));
    }
    if norm_name != "identity" {
        return Err(unsupported("normalizer_spec.name", format!("normalization {norm_name:?} is not \"identity\"")));
    }
    if remove_ws {
        return Err(unsupported("normalizer_spec.remove_extra_whitespaces", "is true".into()));
    }
    let unk = types.iter().position(|&t| t == token_type::UNKNOWN).map(|i| i as u32);
    Ok(Vocab::from_arrays(tokens, scores, types, unk))
}

struct Proto<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Proto<'a> {
    fn varint(&mut self) -> std::result::Result<u64, ()> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or(())?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(())
    }
    fn key(&mut self) -> std::result::Result<Option<(u64, u8)>, ()> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let k = self.varint()?;
        Ok(Some((k >> 3, (k & 7) as u8)))
    }
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], ()> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or(())?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn bytes(&mut self) -> std::result::Result<&'a [u8], ()> {
        let n = usize::try_from(self.varint()?).map_err(|_| ())?;
        self.take(n)
    }
    fn fixed<const N: usize>(&mut self) -> std::result::Result<[u8; N], ()> {
        self.take(N)?.try_into().map_err(|_| ())
    }
    fn skip(&mut self, wire: u8) -> std::result::Result<(), ()> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.bytes().map(drop),
            5 => self.take(4).map(drop),
            _ => Err(()),
        }
    }
}

/// `tokenizer_config.json`: special tokens, BOS/EOS switches and an optional mask token.
fn apply_tokenizer_config(dir: &Path, v: &mut Vocab) -> Result<()> {
    let (path, cfg) = tokenizer_config(dir)?;
    let token_id = |field: &str| -> Result<Option<u32>> {
        let Some(content) = special_content(&cfg[field]) else { return Ok(None) };
        v.id_of(content)
            .map(Some)
            .ok_or_else(|| ConvertError::field(&path, field, format!("token {content:?} is not in the vocabulary")))
    };
    let (bos, eos, unk) = (token_id("bos_token")?, token_id("eos_token")?, token_id("unk_token")?);
    let (pad, mask) = (token_id("pad_token")?, token_id("mask_token")?);
    v.bos = bos.or_else(|| v.id_of("<s>"));
    v.eos = eos.or_else(|| v.id_of("</s>"));
    v.unk = unk.or(v.unk);
    v.pad = pad;
    v.mask_from_config = mask;
    v.add_bos = cfg["add_bos_token"].as_bool().unwrap_or(v.add_bos);
    v.add_eos = cfg["add_eos_token"].as_bool().unwrap_or(false);
    Ok(())
}
