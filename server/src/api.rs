//! Request bodies read field by field: a wrong type or an out-of-range value is a 400 naming
//! the field (OpenAI's error object: `{"error": {"message", "type", "param", "code"}}`);
//! unknown fields are ignored.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

pub type Obj = Map<String, Value>;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code: None, retry_after: None }
    }

    /// A 400 about one field.
    pub fn field(param: &str, message: impl Into<String>) -> ApiError {
        ApiError { param: Some(param.to_owned()), ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        let note = crate::routes::Note(self.message.chars().take(200).collect());
        let mut r = (self.status, axum::Json(body)).into_response();
        r.extensions_mut().insert(note);
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// The body as a JSON object.
pub fn object(body: &[u8]) -> Result<Obj, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad("the request body is empty: expected a JSON object"));
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::bad(format!("the request body is not UTF-8 (invalid byte at offset {})", e.valid_up_to())));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(other) => Err(ApiError::bad(format!("the request body must be a JSON object, got {}", kind(&other)))),
        Err(e) => Err(ApiError::bad(format!("the request body is not valid JSON: {e}"))),
    }
}

/// The JSON type of a value, as messages name it.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether the field is given (and not null).
pub fn has(o: &Obj, f: &str) -> bool {
    present(o, f).is_some()
}

/// `logprobs` asking for something (OpenAI's completions take a number, chat a boolean).
pub fn wants_logprobs(o: &Obj) -> bool {
    match present(o, "logprobs") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_u64() != Some(0),
        Some(_) => true,
    }
}

/// Fields of OpenAI's and llama.cpp's APIs that ask for something dlm does not do. Ignoring
/// them would answer a different question than the one asked, so a request that asks (a
/// non-empty list or map, a non-zero penalty, a format other than text) gets a 400 naming the
/// field; a value that asks for nothing (`0`, `{}`, `[]`, `{"type": "text"}`, `"none"`, the
/// neutral `repeat_penalty: 1`) passes, as clients send those by default.
pub fn refuse_unsupported(o: &Obj) -> Result<(), ApiError> {
    const NOT: &[(&str, &str)] = &[
        ("response_format", "JSON- or schema-constrained output is not implemented; ask for the format in the prompt"),
        ("tools", "tool calling is not implemented"),
        ("functions", "function calling is not implemented"),
        ("tool_choice", "tool calling is not implemented"),
        ("function_call", "function calling is not implemented"),
        ("logit_bias", "logit biases are not implemented"),
        ("presence_penalty", "repetition penalties are not implemented (a diffusion model commits tokens out of order)"),
        ("frequency_penalty", "repetition penalties are not implemented (a diffusion model commits tokens out of order)"),
        ("repeat_penalty", "repetition penalties are not implemented (a diffusion model commits tokens out of order)"),
        ("best_of", "best_of is not implemented; use n and pick"),
        ("top_logprobs", "log-probabilities are not available from a diffusion model's parallel decoding"),
        ("n_probs", "token probabilities are not returned"),
        ("grammar", "grammar-constrained output is not implemented"),
        ("json_schema", "schema-constrained output is not implemented"),
        ("min_p", "min-p sampling is not implemented (temperature, top_k and top_p are)"),
        ("typical_p", "typical sampling is not implemented (temperature, top_k and top_p are)"),
        ("mirostat", "mirostat sampling is not implemented"),
        ("audio", "audio output is not available"),
        ("modalities", "only text output is available"),
        ("prediction", "predicted outputs are not implemented"),
    ];
    for &(f, why) in NOT {
        let Some(v) = present(o, f) else { continue };
        let neutral = match (f, v) {
            (_, Value::Bool(false)) => true,
            (_, Value::Array(a)) if f != "modalities" => a.is_empty(),
            ("modalities", Value::Array(a)) => a.iter().all(|m| m == "text"),
            (_, Value::Object(m)) if f == "response_format" => m.get("type").and_then(Value::as_str) == Some("text"),
            (_, Value::Object(m)) => m.is_empty(),
            ("repeat_penalty" | "typical_p", Value::Number(n)) => n.as_f64() == Some(1.0),
            ("best_of", Value::Number(n)) => n.as_f64() == Some(1.0),
            (_, Value::Number(n)) => n.as_f64() == Some(0.0),
            ("tool_choice" | "function_call", Value::String(s)) => {
                let asks_tools = |f: &str| present(o, f).is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()));
                s == "none" || (s == "auto" && !asks_tools("tools") && !asks_tools("functions"))
            }
            ("response_format", Value::String(s)) => s == "text",
            (_, Value::String(s)) => s.is_empty(),
            _ => false,
        };
        if !neutral {
            return Err(ApiError::field(f, format!("`{f}`: {why}")).code("unsupported_parameter"));
        }
    }
    Ok(())
}

/// A path or name from a request as a message shows it: escaped, at most 100 characters.
pub fn shown(s: &str) -> String {
    let e: String = s.escape_debug().collect();
    match e.char_indices().nth(100) {
        None => e,
        Some((cut, _)) => format!("{}…", &e[..cut]),
    }
}

/// A present, non-null field.
fn present<'a>(o: &'a Obj, f: &str) -> Option<&'a Value> {
    o.get(f).filter(|v| !v.is_null())
}

pub fn string<'a>(o: &'a Obj, f: &str) -> Result<Option<&'a str>, ApiError> {
    match present(o, f) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(ApiError::field(f, format!("`{f}` must be a string, got {}", kind(v)))),
    }
}

pub fn boolean(o: &Obj, f: &str) -> Result<Option<bool>, ApiError> {
    match present(o, f) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::field(f, format!("`{f}` must be true or false, got {}", kind(v)))),
    }
}

/// An integer in `min..=max`.
pub fn integer(o: &Obj, f: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
    let Some(v) = present(o, f) else { return Ok(None) };
    let n = match v {
        Value::Number(n) => n,
        _ => return Err(ApiError::field(f, format!("`{f}` must be an integer, got {}", kind(v)))),
    };
    // 8.0 is 8 (JSON does not tell integers apart); 8.5 is not an integer.
    let x = n.as_u64().or_else(|| n.as_f64().filter(|x| x.fract() == 0.0 && *x >= 0.0 && *x < 1.8e19).map(|x| x as u64));
    match x {
        Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
        _ if n.as_f64().is_some_and(|x| x.fract() != 0.0) => Err(ApiError::field(f, format!("`{f}` must be an integer, got {n}"))),
        _ => Err(ApiError::field(f, format!("`{f}` must be in {min}..={max}, got {n}"))),
    }
}

/// A finite number in `[min, max]` (with `open_min`: above `min`).
pub fn number(o: &Obj, f: &str, min: f64, max: f64, open_min: bool) -> Result<Option<f32>, ApiError> {
    let Some(v) = present(o, f) else { return Ok(None) };
    let given = v.as_f64().ok_or_else(|| ApiError::field(f, format!("`{f}` must be a number, got {}", kind(v))))?;
    // Checked as used: 1e-300 is 0 in f32.
    let x = given as f32 as f64;
    let low_ok = if open_min { x > min } else { x >= min };
    if !(low_ok && x <= max) {
        let lo = if open_min { "(" } else { "[" };
        return Err(ApiError::field(f, format!("`{f}` must be in {lo}{min}, {max}] (as a 32-bit float), got {given}")));
    }
    Ok(Some(x as f32))
}

/// One of `names` (a value of a command-line enum).
pub fn choice<T: clap::ValueEnum>(o: &Obj, f: &str) -> Result<Option<T>, ApiError> {
    let Some(s) = string(o, f)? else { return Ok(None) };
    T::from_str(s, true).map(Some).map_err(|_| {
        let names: Vec<String> = T::value_variants().iter().filter_map(|v| v.to_possible_value()).map(|p| p.get_name().to_owned()).collect();
        ApiError::field(f, format!("`{f}` must be one of {}, got {s:?}", names.join(", ")))
    })
}

/// The most stop strings a request may give, and their longest length in bytes.
const MAX_STOPS: usize = 16;
const MAX_STOP_BYTES: usize = 1024;

/// `stop`: a string or an array of strings.
pub fn stops(o: &Obj) -> Result<Vec<String>, ApiError> {
    let list: Vec<String> = match present(o, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_str().map(str::to_owned).ok_or_else(|| ApiError::field("stop", format!("`stop[{i}]` must be a string, got {}", kind(v)))))
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(ApiError::field("stop", format!("`stop` must be a string or an array of strings, got {}", kind(v)))),
    };
    if list.len() > MAX_STOPS {
        return Err(ApiError::field("stop", format!("at most {MAX_STOPS} stop strings, got {}", list.len())));
    }
    if let Some(s) = list.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::field("stop", format!("a stop string may have at most {MAX_STOP_BYTES} bytes, got {}", s.len())));
    }
    Ok(list)
}

/// A prompt as given: text, or token ids.
#[derive(Clone, Debug)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// The most prompts one request may give.
pub const MAX_PROMPTS: usize = 64;

/// `prompt`: a string, an array of strings, an array of token ids, or an array of those.
pub fn prompts(o: &Obj, n_vocab: usize) -> Result<Vec<Prompt>, ApiError> {
    let ids = |a: &[Value], at: &str| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .enumerate()
            .map(|(i, v)| match v.as_u64() {
                Some(t) if (t as usize) < n_vocab => Ok(t as u32),
                _ => Err(ApiError::field("prompt", format!("`{at}[{i}]` must be a token id below {n_vocab}, got {v}"))),
            })
            .collect()
    };
    let list = match present(o, "prompt") {
        None => vec![Prompt::Text(String::new())],
        Some(Value::String(s)) => vec![Prompt::Text(s.clone())],
        Some(Value::Array(a)) if a.is_empty() => return Err(ApiError::field("prompt", "`prompt` is an empty array")),
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => vec![Prompt::Tokens(ids(a, "prompt")?)],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(Prompt::Text(s.clone())),
                Value::Array(t) if !t.is_empty() => Ok(Prompt::Tokens(ids(t, &format!("prompt[{i}]"))?)),
                _ => Err(ApiError::field("prompt", format!("`prompt[{i}]` must be a string or a non-empty array of token ids, got {}", kind(v)))),
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(ApiError::field("prompt", format!("`prompt` must be a string or an array, got {}", kind(v)))),
    };
    if list.len() > MAX_PROMPTS {
        return Err(ApiError::field("prompt", format!("at most {MAX_PROMPTS} prompts per request, got {}", list.len())));
    }
    Ok(list)
}

/// `messages`: role and content of each, content as text (a string, or an array of text parts).
pub fn messages(o: &Obj) -> Result<Value, ApiError> {
    let list = match present(o, "messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(ApiError::field("messages", "`messages` is empty")),
        None => return Err(ApiError::field("messages", "`messages` is required")),
        Some(v) => return Err(ApiError::field("messages", format!("`messages` must be an array, got {}", kind(v)))),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(m) = m else { return Err(ApiError::field("messages", format!("`{at}` must be an object, got {}", kind(m)))) };
        let role = match m.get("role") {
            Some(Value::String(r)) if !r.is_empty() => r.clone(),
            Some(v) => return Err(ApiError::field("messages", format!("`{at}.role` must be a non-empty string, got {}", kind(v)))),
            None => return Err(ApiError::field("messages", format!("`{at}.role` is required"))),
        };
        let content = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (k, p) in parts.iter().enumerate() {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        _ => return Err(ApiError::field("messages", format!("`{at}.content[{k}]` must be a text part {{\"type\": \"text\", \"text\": ...}}: this model reads text only"))),
                    }
                }
                text
            }
            Some(v) => return Err(ApiError::field("messages", format!("`{at}.content` must be a string or an array of text parts, got {}", kind(v)))),
        };
        out.push(json!({"role": role, "content": content}));
    }
    Ok(Value::Array(out))
}
