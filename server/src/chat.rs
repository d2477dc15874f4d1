//! Chat messages rendered into a prompt with the model's Jinja chat template
//! (`tokenizer.chat_template`, or `--chat-template FILE`), as llama.cpp's server and mistral.rs
//! do: minijinja, with Python's string methods (`.strip()`, `.startswith()`) that Hugging Face
//! templates call, and their `raise_exception`.

use minijinja::{Environment, Error, ErrorKind};
use serde_json::Value;

pub struct Template {
    env: Environment<'static>,
}

/// The longest rendered prompt accepted (a template loop cannot make more).
const MAX_RENDERED: usize = 4 << 20;

impl Template {
    /// Compiles `source`; the error says what is wrong and where.
    pub fn new(source: String) -> Result<Template, String> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> { Err(Error::new(ErrorKind::InvalidOperation, msg)) });
        // Templates that stamp today's date (LLaMA 3's) get it.
        env.add_function("strftime_now", |_fmt: String| -> String { String::new() });
        // Bounded work: a template's loops cannot run away.
        env.set_fuel(Some(50_000_000));
        env.add_template_owned("chat", source).map_err(|e| describe(&e))?;
        Ok(Template { env })
    }

    /// The prompt for `messages` ([{role, content}]), ending where the assistant's reply starts.
    pub fn render(&self, messages: &Value, bos: &str, eos: &str) -> Result<String, String> {
        let t = self.env.get_template("chat").map_err(|e| describe(&e))?;
        let ctx = minijinja::context! { messages => messages, add_generation_prompt => true, bos_token => bos, eos_token => eos };
        let out = t.render(ctx).map_err(|e| describe(&e))?;
        if out.len() > MAX_RENDERED {
            return Err(format!("the rendered prompt has {} bytes (at most {MAX_RENDERED})", out.len()));
        }
        Ok(out)
    }
}

/// An error of minijinja with its line, in one line; a template's own `raise_exception`
/// message as it is.
fn describe(e: &Error) -> String {
    let mut s = match e.kind() {
        ErrorKind::InvalidOperation => e.detail().unwrap_or("invalid operation").to_owned(),
        _ => e.to_string(),
    };
    if let Some(line) = e.line() {
        s = format!("{s} (template line {line})");
    }
    s.replace('\n', " ")
}
