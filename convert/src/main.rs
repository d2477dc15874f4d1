//! `dlm-convert`: Hugging Face DiffuLLaMA checkpoint → GGUF.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use dlm_convert::{Options, OutType, Plan};
use indicatif::{ProgressBar, ProgressStyle};

/// Convert a Hugging Face DiffuLLaMA (LLaMA-architecture) checkpoint into a GGUF file for dlm-run.
///
/// The input folder needs config.json, tokenizer.json (or tokenizer.model), and the weights as
/// model.safetensors or shards listed in model.safetensors.index.json (bf16, f16 or f32).
/// The output follows llama.cpp's GGUF conventions, plus the diffusion keys dlm needs
/// (bidirectional attention, mask token id, shifted logits), so llama.cpp can read it too.
#[derive(Parser, Debug)]
#[command(name = "dlm-convert", version, allow_negative_numbers = true, after_help = "Example:\n  dlm-convert path/to/diffullama-hf -o diffullama-q4.gguf --type q4_0")]
struct Args {
    /// Hugging Face checkpoint folder
    input: PathBuf,
    /// Output GGUF path (written to a temporary file and renamed when complete)
    #[arg(short, long)]
    output: PathBuf,
    /// Weight type
    #[arg(long = "type", value_enum, default_value = "f16")]
    out_type: OutType,
    /// Mask token id [default: the tokenizer config's mask token, else 811, DiffuLLaMA's]
    #[arg(long)]
    mask_id: Option<u32>,
    /// Model name stored in general.name [default: from config.json or the folder name]
    #[arg(long)]
    name: Option<String>,
    /// The checkpoint is autoregressive (a LLaMA before diffusion adaptation): keep causal
    /// attention (llama.attention.causal = true); dlm-run then decodes it left to right with
    /// --block-length 1
    #[arg(long)]
    causal: bool,
    /// Threads for conversion [default: all cores]
    #[arg(short, long)]
    threads: Option<usize>,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else {
        format!("{:.1} MB", b / 1e6)
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(t) = args.threads {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let t = match t {
            0 => anyhow::bail!("-t/--threads must be at least 1"),
            t if t > cores => {
                dlm::errln!("warning: -t {t} is more than the {cores} cores of this machine; using {cores}");
                cores
            }
            t => t,
        };
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global().context("setting up threads")?;
    }
    let opts = Options { out_type: args.out_type, mask_id: args.mask_id, name: args.name, causal: args.causal };
    let plan = Plan::new(&args.input, &opts)
        .with_context(|| format!("cannot convert {}", args.input.display()))?;
    plan.check_output(&args.output)?;
    let c = &plan.config;
    dlm::errln!(
        "dlm-convert: {} layers, hidden {}, {} heads ({} kv), ffn {}, vocab {}; --type {}; mask id {} ({})",
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.intermediate_size,
        c.vocab_size,
        args.out_type.name(),
        plan.mask_id,
        plan.mask_source
    );
    for t in plan.tensors.iter().filter(|t| t.wanted.is_some()) {
        dlm::errln!(
            "note: {}: row length {} is not a multiple of {}'s block size; using {}",
            t.name,
            t.shape[0],
            t.wanted.unwrap(),
            t.ggml_type
        );
    }

    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(plan.bytes_in()) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta}) {msg}")
            .expect("valid template"),
    );
    let summary = plan
        .write(&args.output, |_, t| {
            bar.inc((t.source.end - t.source.start) as u64);
            bar.set_message(format!("{} → {}", t.name, t.ggml_type));
        })
        .with_context(|| format!("writing {}", args.output.display()))?;
    bar.finish_and_clear();

    let mut counts: Vec<(String, usize)> = Vec::new();
    for t in &plan.tensors {
        match counts.iter_mut().find(|(n, _)| *n == t.ggml_type.name()) {
            Some(c) => c.1 += 1,
            None => counts.push((t.ggml_type.name(), 1)),
        }
    }
    let mix: Vec<String> = counts.iter().map(|(n, c)| format!("{c} {n}")).collect();
    dlm::errln!(
        "wrote {}: {} tensors ({}), {:.1} M params, {} in → {} out, {:.2} bits/weight, {:.1} s ({:.0} MB/s of source)",
        args.output.display(),
        summary.tensors,
        mix.join(", "),
        summary.params as f64 / 1e6,
        human(summary.bytes_in),
        human(summary.bytes_out),
        summary.bits_per_weight(),
        summary.seconds,
        summary.bytes_in as f64 / 1e6 / summary.seconds.max(1e-9)
    );
    Ok(())
}

fn main() -> ExitCode {
    dlm::cli::install();
    dlm::cli::exit(run(Args::parse()))
}
