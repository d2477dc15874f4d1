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
        // Templates that stamp today's date (LLaMA 3's) get it (UTC).
        env.add_function("strftime_now", |fmt: String| -> String { strftime(&fmt, now()) });
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

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `secs` (Unix time, UTC) formatted by Python's `%d %m %Y %y %b %B %H %M %S %%`; other
/// directives are kept as written.
fn strftime(fmt: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    // Days to a civil date (proleptic Gregorian), after H. Hinnant's `civil_from_days`.
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('d') => out += &format!("{day:02}"),
            Some('m') => out += &format!("{month:02}"),
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year.rem_euclid(100)),
            Some('b') => out += &name[..3],
            Some('B') => out += name,
            Some('H') => out += &format!("{:02}", sod / 3600),
            Some('M') => out += &format!("{:02}", sod / 60 % 60),
            Some('S') => out += &format!("{:02}", sod % 60),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_matches_known_dates() {
        // 2024-02-29 13:05:09 UTC (a leap day) and the epoch.
        assert_eq!(strftime("%d %b %Y %H:%M:%S %%", 1_709_211_909), "29 Feb 2024 13:05:09 %");
        assert_eq!(strftime("%Y-%m-%d %B %y", 0), "1970-01-01 January 70");
        assert_eq!(strftime("%d %B %Y", 951_782_400), "29 February 2000");
        assert_eq!(strftime("%q", 0), "%q");
    }

    #[test]
    fn templates_render_and_fail_clearly() {
        let t = Template::new("{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}".into()).unwrap();
        let msgs = serde_json::json!([{"role": "user", "content": "  hi  "}]);
        assert_eq!(t.render(&msgs, "<s>", "</s>").unwrap(), "<s>[user] hi\n[assistant]");
        let t = Template::new("{{ raise_exception('no system role') }}".into()).unwrap();
        assert_eq!(t.render(&msgs, "", "").unwrap_err(), "no system role (template line 1)");
        assert!(Template::new("{% for %}".into()).err().expect("a syntax error").contains("line 1"));
        // A template that loops for ever runs out of fuel instead of hanging.
        let t = Template::new("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}".into()).unwrap();
        assert!(t.render(&msgs, "", "").is_err());
    }
}
