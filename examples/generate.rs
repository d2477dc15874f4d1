//! The library's front door in a few lines: load a GGUF model, generate from a prompt while
//! watching the canvas denoise, print the text.
//!
//!     cargo run --release --example generate -- model.gguf "Today is a wonderful day,"

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), prompt) = (args.next(), args.next().unwrap_or_default()) else {
        return Err("usage: generate MODEL.gguf [PROMPT]".into());
    };
    let mut session = dlm::Session::load(&path)?;
    let settings = dlm::Settings { n: 32, ..Default::default() };
    let out = session.generate_with(&prompt, &settings, |frame| {
        eprintln!("step {:>3}: {}", frame.step, frame.text);
        dlm::generate::Flow::Continue
    })?;
    println!("{prompt}{}", out.text);
    Ok(())
}
