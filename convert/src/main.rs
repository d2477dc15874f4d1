//! `dlm-convert`: Hugging Face checkpoint (DiffuLLaMA, LLaDA, Dream, DiffuGPT) → GGUF, or GGUF →
//! GGUF re-quantization.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches, Parser};
use dlm::GgmlType;
use clap::ValueEnum as _;
use dlm_convert::{Options, OutType, Plan, Requant, Summary};
use indicatif::{ProgressBar, ProgressStyle};

/// Convert a Hugging Face diffusion-LM checkpoint into a GGUF file for dlm-run.
///
/// Reads DiffuLLaMA (LlamaForCausalLM), LLaDA (LLaDAModelLM), Dream (DreamModel) and DiffuGPT
/// (GPT2LMHeadModel) checkpoints. The input folder needs config.json, a tokenizer
/// (tokenizer.json; or tokenizer.model for LLaMA; or vocab.json with merges.txt for GPT-2), and
/// the weights as model.safetensors or shards listed in model.safetensors.index.json (bf16, f16
/// or f32). The output follows llama.cpp's GGUF conventions for each architecture, plus the
/// diffusion keys dlm needs (bidirectional attention, mask token id, logit shift), so llama.cpp
/// can read it too.
///
/// Given a GGUF model instead of a folder, it re-quantizes it (llama-quantize's job): every
/// metadata key is kept, each tensor gets the type --type gives it, and tensors already of that
/// type are copied unchanged.
#[derive(Parser, Debug)]
#[command(
    name = "dlm-convert",
    version,
    allow_negative_numbers = true,
    after_help = "Examples:\n  dlm-convert path/to/diffullama-hf -o diffullama-q4.gguf --type q4_0\n  dlm-convert path/to/LLaDA-8B-Base -o llada-q4_k_m.gguf --type q4_k_m\n  dlm-convert diffullama-f16.gguf -o diffullama-q4_k_m.gguf --type q4_k_m\n  dlm-convert diffullama-f16.gguf diffullama-q5_k_m.gguf Q5_K_M   (llama-quantize's order)"
)]
struct Args {
    /// Hugging Face checkpoint folder, or a GGUF model to re-quantize
    #[arg(required_unless_present = "completions")]
    input: Option<PathBuf>,
    /// llama-quantize's order: `IN OUT TYPE`, or `IN TYPE` (writes ggml-model-TYPE.gguf beside
    /// the input, as llama-quantize does); the same as -o OUT --type TYPE
    #[arg(value_name = "OUTPUT|TYPE")]
    second: Option<PathBuf>,
    /// The weight type, after OUTPUT (llama-quantize's order)
    #[arg(value_name = "TYPE")]
    third: Option<String>,
    /// Output GGUF path (written to a temporary file and renamed when complete)
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Weight type (llama-quantize's names, either case) [default: f16]
    #[arg(long = "type", value_enum, ignore_case = true)]
    out_type: Option<OutType>,
    /// Mask token id [default: the tokenizer config's mask token, else config.json's
    /// mask_token_id, else the family's: 811 DiffuLLaMA, 126336 LLaDA, 151666 Dream, 10541 DiffuGPT]
    #[arg(long)]
    mask_id: Option<u32>,
    /// Model name stored in general.name [default: from config.json or the folder name]
    #[arg(long)]
    name: Option<String>,
    /// The checkpoint is autoregressive (a LLaMA or GPT-2 before diffusion adaptation): keep causal
    /// attention ({arch}.attention.causal = true); dlm-run then decodes it left to right with
    /// --block-length 1
    #[arg(long)]
    causal: bool,
    /// Threads for conversion [default: all cores]
    #[arg(short, long)]
    threads: Option<usize>,
    /// Re-quantize tensors that are already quantized (GGUF input; loses more quality than
    /// converting the original weights)
    #[arg(long)]
    allow_requantize: bool,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell), then exit
    #[arg(long, value_name = "SHELL", exclusive = true)]
    completions: Option<clap_complete::Shell>,
}

impl Args {
    fn input(&self) -> &std::path::Path {
        self.input.as_deref().expect("clap requires it without --completions")
    }
    fn output(&self) -> &std::path::Path {
        self.output.as_deref().expect("resolved in main")
    }
    fn out_type(&self) -> OutType {
        self.out_type.unwrap_or(OutType::F16)
    }

    /// Folds llama-quantize's positional order into -o and --type: `IN OUT TYPE`, `IN TYPE`
    /// (the output named as llama-quantize names it, beside the input), and with -o given,
    /// `IN TYPE`. The same thing given twice, or a second argument that is neither, is an error.
    fn resolve_positional(&mut self) -> anyhow::Result<()> {
        let parse = |s: &str| OutType::from_str(s, true).map_err(|_| anyhow::anyhow!("`{s}` is not a weight type (dlm-convert --help lists them)"));
        let as_type = self.second.as_ref().and_then(|p| p.to_str()).and_then(|s| OutType::from_str(s, true).ok());
        let (out, ty) = match (self.second.take(), self.third.take()) {
            (None, _) => (None, None),
            (Some(out), Some(t)) => (Some(out), Some(parse(&t)?)),
            // `IN TYPE`: a type name where llama-quantize lets the output be left out.
            (Some(_), None) if as_type.is_some() => (None, as_type),
            (Some(out), None) => (Some(out), None),
        };
        if let Some(t) = ty {
            if self.out_type.is_some() {
                anyhow::bail!("the type is given twice: --type and a positional TYPE ({})", t.name());
            }
            self.out_type = Some(t);
        }
        match (out, &self.output) {
            (Some(_), Some(_)) => anyhow::bail!("the output is given twice: -o and a positional OUTPUT"),
            (Some(o), None) => self.output = Some(o),
            (None, Some(_)) => {}
            (None, None) if ty.is_some() => {
                let input = self.input.as_deref().expect("clap requires it without --completions");
                let dir = if input.is_dir() { input } else { input.parent().unwrap_or(std::path::Path::new(".")) };
                let o = dir.join(format!("ggml-model-{}.gguf", self.out_type().name()));
                dlm::errln!("note: writing {} (llama-quantize's name for `IN TYPE`; give -o to choose)", o.display());
                self.output = Some(o);
            }
            (None, None) => anyhow::bail!("the output is required: -o OUTPUT.gguf, or llama-quantize's order (dlm-convert IN OUT TYPE)"),
        }
        Ok(())
    }
}

/// The command, with the build's backends and the linked ggml in `--version`.
fn command() -> clap::Command {
    Args::command().long_version(dlm::cli::long_version())
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else {
        format!("{:.1} MB", b / 1e6)
    }
}

fn run(mut args: Args) -> anyhow::Result<()> {
    if let Some(shell) = args.completions {
        return dlm::cli::print_completions(command(), shell);
    }
    args.resolve_positional()?;
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
    let opts = Options { out_type: args.out_type(), mask_id: args.mask_id, name: args.name.clone(), causal: args.causal };
    if dlm_convert::requant::is_gguf(args.input()) {
        return requantize(&args, &opts);
    }
    if args.allow_requantize {
        dlm::errln!("warning: --allow-requantize does nothing when the input is a Hugging Face checkpoint");
    }
    let plan = Plan::new(args.input(), &opts)
        .with_context(|| format!("cannot convert {}", args.input().display()))?;
    plan.check_output(args.output())?;
    let c = &plan.config;
    for w in &plan.warnings {
        dlm::errln!("warning: {w}");
    }
    dlm::errln!(
        "dlm-convert: {} ({}): {} layers, hidden {}, {} heads ({} kv), ffn {}, vocab {}; --type {}; mask id {} ({})",
        c.arch.family().name,
        c.arch.gguf_name(),
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.intermediate_size,
        c.vocab_size,
        args.out_type().name(),
        plan.mask_id,
        plan.mask_source
    );
    for t in plan.tensors.iter() {
        fallback_note(&t.name, t.shape[0], t.wanted, t.ggml_type);
    }
    let bar = progress_bar(args.quiet, plan.bytes_in());
    let summary = plan
        .write(args.output(), |_, t| {
            bar.inc((t.source.end - t.source.start) as u64);
            bar.set_message(format!("{} → {}", t.name, t.ggml_type));
        })
        .with_context(|| format!("writing {}", args.output().display()))?;
    bar.finish_and_clear();
    report(&args, &summary, plan.tensors.iter().map(|t| t.ggml_type), "");
    Ok(())
}

/// GGUF → GGUF.
fn requantize(args: &Args, opts: &Options) -> anyhow::Result<()> {
    // The output first: a file that is its own output is that whatever its tensors are.
    dlm::atomic::check_output(args.output(), &[args.input().to_owned()])?;
    let rq = Requant::new(args.input(), opts, args.allow_requantize)
        .with_context(|| format!("cannot re-quantize {}", args.input().display()))?;
    rq.check_output(args.output())?;
    for w in &rq.warnings {
        dlm::errln!("warning: {w}");
    }
    let p = |t: GgmlType| rq.tensors.iter().filter(|r| r.from == t).count();
    let from: Vec<String> = GgmlType::all().filter(|&t| p(t) > 0).map(|t| format!("{} {t}", p(t))).collect();
    dlm::errln!(
        "dlm-convert: re-quantizing {} ({} tensors: {}) to --type {}; mask id {} ({})",
        args.input().display(),
        rq.tensors.len(),
        from.join(", "),
        args.out_type().name(),
        rq.mask_id,
        rq.mask_source
    );
    for t in &rq.tensors {
        fallback_note(&t.name, t.shape[0], t.wanted, t.ggml_type);
    }
    let bar = progress_bar(args.quiet, rq.bytes_in());
    let summary = rq
        .write(args.output(), |_, t| {
            bar.inc(rq.gguf.tensors()[t.index].size);
            bar.set_message(format!("{}: {} → {}", t.name, t.from, t.ggml_type));
        })
        .with_context(|| format!("writing {}", args.output().display()))?;
    bar.finish_and_clear();
    let copied = rq.tensors.iter().filter(|t| t.copied()).count();
    report(args, &summary, rq.tensors.iter().map(|t| t.ggml_type), &format!("; {copied} copied unchanged"));
    Ok(())
}

fn fallback_note(name: &str, row: u64, wanted: Option<GgmlType>, got: GgmlType) {
    if let Some(w) = wanted {
        dlm::errln!("note: {name}: row length {row} is not a multiple of {w}'s block size; using {got}");
    }
}

fn progress_bar(quiet: bool, total: u64) -> ProgressBar {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(total) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta}) {msg}")
            .expect("valid template"),
    );
    bar
}

/// The closing line: tensors by type, sizes, bits per weight, time.
fn report(args: &Args, summary: &Summary, types: impl Iterator<Item = GgmlType>, extra: &str) {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for t in types {
        match counts.iter_mut().find(|(n, _)| *n == t.name()) {
            Some(c) => c.1 += 1,
            None => counts.push((t.name(), 1)),
        }
    }
    let mix: Vec<String> = counts.iter().map(|(n, c)| format!("{c} {n}")).collect();
    dlm::errln!(
        "wrote {}: {} tensors ({}), {:.1} M params, {} in → {} out, {:.2} bits/weight, {:.1} s ({:.0} MB/s of source){extra}",
        args.output().display(),
        summary.tensors,
        mix.join(", "),
        summary.params as f64 / 1e6,
        human(summary.bytes_in),
        human(summary.bytes_out),
        summary.bits_per_weight(),
        summary.seconds,
        summary.bytes_in as f64 / 1e6 / summary.seconds.max(1e-9)
    );
}

fn main() -> ExitCode {
    dlm::cli::install();
    let args = match Args::from_arg_matches(&command().get_matches()) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    dlm::cli::exit(run(args))
}
