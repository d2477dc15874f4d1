//! What `dlm-run` and `dlm-eval` share: the model and generation flags, loading a model with its
//! tokenizer and diffusion settings, and turning flags into [`GenParams`] and an [`Unmasker`].
//! The two binaries parse the same flags the same way, so an evaluation measures exactly what
//! `dlm-run` does with those flags.

#![allow(dead_code)] // each binary uses its own part of this module

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use dlm::generate::{Cache, GenParams, Prune};
use dlm::sample::{TokenSampler, UnmaskRule, Unmasker};
use dlm::{Backend, Gguf, LoadOptions, Model, Tokenizer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// a compiled-in ggml GPU backend's device, else a GPU through wgpu when a hardware adapter
    /// exists, else the CPU (a software Vulkan driver such as lavapipe is never picked)
    Auto,
    /// ggml's CPU kernels
    Cpu,
    /// ggml's CUDA backend (build with --features cuda)
    Cuda,
    /// ggml's Metal backend (build with --features metal)
    Metal,
    /// ggml's Vulkan backend (build with --features vulkan)
    Vulkan,
    /// our WGSL kernels through wgpu (Vulkan, Metal, DX12), software adapters included
    Wgpu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CacheArg {
    /// exact: every step computes every position
    None,
    /// the current block and everything after it are computed; the prefix is cached
    Prefix,
    /// only the current block is computed
    Dual,
}

/// on, off or auto (`-fa`, `--device-candidates`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
    Auto,
}

/// Which model, where it runs, and its diffusion facts.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF model file
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// CPU threads [default: all cores]
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Mask token id [default: from the file, else the family's: 811 DiffuLLaMA, 126336 LLaDA,
    /// 151666 Dream, 10541 DiffuGPT]
    #[arg(long)]
    pub mask_id: Option<u32>,
    /// Read predictions from the previous position's logits [default: from the file, else the
    /// family's: true for DiffuLLaMA, Dream and DiffuGPT, false for LLaDA]
    #[arg(long)]
    pub shift: Option<bool>,
    /// Where the model runs
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendArg,
    /// GPU to run on: its index in --list-devices [default: the first hardware GPU]
    #[arg(long, value_name = "N")]
    pub device: Option<usize>,
    /// Layers whose weights go to the GPU (also -ngl, as in llama.cpp): counted from the last
    /// layer, the LM head too when all go; 0 runs everything on the CPU. The wgpu backend runs
    /// all layers or none [default: all]
    #[arg(long = "n-gpu-layers", value_name = "N")]
    pub n_gpu_layers: Option<usize>,
    /// List the GPUs this build can use (and the devices of --rpc servers), then exit
    #[arg(long)]
    pub list_devices: bool,
    /// Run layers on other machines too: dlm-rpc-server (or llama.cpp's rpc-server) processes
    /// at HOST:PORT[,HOST:PORT…], whose devices take the offloaded layers (-ngl, default all)
    /// with the local GPU if any; the rest runs here. Weights go to each server once per load
    /// (kept by a server started with -c). No authentication or encryption: trusted networks
    /// only (README: Several machines)
    #[arg(long, value_name = "HOST:PORT,...", value_delimiter = ',')]
    pub rpc: Vec<String>,
    /// Shares of the offloaded layers per device (also -ts, as in llama.cpp), in the order
    /// --list-devices shows with --rpc: the servers' devices, then the local GPU; e.g. 3,1
    /// [default: in proportion to each device's free memory]
    #[arg(long = "tensor-split", value_name = "N0,N1,...", value_delimiter = ',')]
    pub tensor_split: Vec<f32>,
    /// With --rpc: the longest, in seconds, a load or one forward pass may wait on the servers
    /// before the run ends with an error (a frozen server or a machine gone from the network
    /// would otherwise hold it forever)
    #[arg(long, value_name = "SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub rpc_timeout: u64,
    /// Attention through ggml's flash-attention kernel (also -fa, as in llama.cpp): on (the
    /// default; auto is the same) or off (explicit scores and soft-max, what llama.cpp runs
    /// with it off)
    #[arg(long = "flash-attn", value_enum, value_name = "on|off|auto", num_args = 0..=1, default_missing_value = "on")]
    pub flash_attn: Option<Switch>,
    /// Reduce each step's logits on the backend, so 20 bytes (greedy) or 532 bytes (sampled:
    /// the 64 largest logits) per masked position come to the host instead of the whole
    /// vocabulary's logits: auto (on a GPU backend, off on the CPU, where the logits are
    /// already in memory), on, or off. Not with --cfg-scale, Gumbel sampling or --top-k 1024 and
    /// more. A sampled row whose draw the 64 cannot decide (a nucleus wider than that) is read
    /// back whole. The scores are exact up to f32 rounding where the host's f32 sums are up to
    /// ~1e-3 off (more at high temperature), so a token can differ where values are that close
    /// and a generation can commit in another order (README: Backends)
    #[arg(long = "device-candidates", value_enum, value_name = "on|off|auto", default_value = "auto")]
    pub device_candidates: Switch,
    /// Check every tensor's values at load: floats finite, every quantized block's scale
    /// finite (a NaN scale does not reach the logits; it makes garbage text). On by default: it
    /// reads the file at 11-19 GB/s, 5 % of one 128-token forward pass (README: "Checking
    /// weights"); llama.cpp's flag of the same name is accepted
    #[arg(long, overrides_with = "no_check_tensors")]
    pub check_tensors: bool,
    /// Skip the check of every tensor's values at load (norm weights and biases are still checked)
    #[arg(long, overrides_with = "check_tensors")]
    pub no_check_tensors: bool,
}

impl ModelArgs {
    /// `-m`, or the one-line error for its absence.
    pub fn path(&self) -> anyhow::Result<&std::path::Path> {
        self.model.as_deref().context("-m/--model is required: the GGUF model file (--help lists every flag)")
    }

    /// `--mask-id` and `--shift` as overrides of the file's diffusion settings.
    pub fn overrides(&self) -> dlm::model::DiffusionOverrides {
        dlm::model::DiffusionOverrides { mask_id: self.mask_id, shift_logits: self.shift, causal: None }
    }
}

/// How the canvas is denoised. Flags left out take the model family's defaults (DiffuLLaMA,
/// LLaDA, Dream and DiffuGPT sample differently; `--info` and `-v` show what is in effect), filled in by
/// [`GenArgs::resolve`] once the model is open.
#[derive(Args, Debug, Clone)]
pub struct GenArgs {
    /// Forward passes (denoising steps), split evenly over the blocks (rounded down), and at least
    /// one per block (fewer steps than blocks still run one pass per block); with --unmask threshold a budget:
    /// steps end early once every position is committed [default: the family's: 64 for DiffuLLaMA and DiffuGPT, one per
    /// generated token for LLaDA and Dream, and for DiffuLLaMA from -n 64 on]
    #[arg(long = "steps", id = "steps", value_name = "N", visible_alias = "diffusion-steps")]
    pub steps_flag: Option<usize>,
    /// Which positions to commit each step [default: the family's: threshold for DiffuLLaMA (the
    /// fastest setting that kept the exact rule's accuracy on the trained tiny model, README:
    /// "Trained tiny model"), confidence for LLaDA, entropy for Dream, origin for DiffuGPT]
    #[arg(long = "unmask", id = "unmask", value_enum, value_name = "RULE")]
    pub unmask_flag: Option<UnmaskRule>,
    /// llama-diffusion-cli's numbering of --unmask: 0 origin, 1 entropy, 2 margin, 3 random,
    /// 4 confidence
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=4), conflicts_with = "unmask")]
    pub diffusion_algorithm: Option<u8>,
    /// Semi-autoregressive blocks of B positions, left to right [default: the family's: one
    /// block; 32 for LLaDA, and for DiffuLLaMA from -n 64 on]
    #[arg(long = "block-length", id = "block_length", value_name = "B", visible_alias = "diffusion-block-length", conflicts_with = "diffusion_eps")]
    pub block_length_flag: Option<usize>,
    /// Confidence threshold for --unmask threshold. 0.5 was the fastest that kept the exact
    /// accuracy on the trained tiny model's short answers; Fast-dLLM's 0.9 is the cautious
    /// choice for large models and long answers (README: "Long answers") [default: 0.5 for
    /// DiffuLLaMA below -n 64, else 0.9]
    #[arg(long = "threshold", id = "threshold", value_name = "P")]
    pub threshold_flag: Option<f32>,
    /// Temperature (0: greedy) [default: the family's: 0.9 DiffuLLaMA, 0 LLaDA, 0.2 Dream, 0.95
    /// DiffuGPT]
    #[arg(long = "temp", id = "temp", value_name = "T")]
    pub temp_flag: Option<f32>,
    /// Top-k (0: off) [default: 0]
    #[arg(long = "top-k", id = "top_k", value_name = "K")]
    pub top_k_flag: Option<usize>,
    /// Top-p, applied after temperature (1: off) [default: the family's: 0.9 DiffuLLaMA and
    /// DiffuGPT, 1 LLaDA, 0.95 Dream]
    #[arg(long = "top-p", id = "top_p", value_name = "P")]
    pub top_p_flag: Option<f32>,
    /// Dream's timestep schedule (llama-diffusion-cli's --diffusion-eps): time runs from 1 to E
    /// and each step commits the fraction 1 − s/t of the masked positions, more late than
    /// early, for --unmask confidence, margin, entropy or random (e.g. 0.001)
    #[arg(long, value_name = "E")]
    pub diffusion_eps: Option<f32>,
    /// Dream's algorithm temperature (with --diffusion-eps): each step draws its positions at
    /// random with probabilities softmax(score / T) instead of taking the best-ranked ones
    /// (0: the best-ranked, deterministic) [default: 0]
    #[arg(long, value_name = "T", requires = "diffusion_eps")]
    pub diffusion_alg_temp: Option<f32>,
    /// LLaDA's Gumbel-max sampling (with --temp > 0): each token is drawn from the whole
    /// softmax(logits / temp), no top-k or top-p, and ranked by its plain softmax probability
    #[arg(long, conflicts_with_all = ["top_k", "top_p"])]
    pub diffusion_add_gumbel_noise: bool,
    /// Classifier-free guidance (LLaDA's cfg_scale): each step also runs the canvas with the
    /// prompt masked, in the same batch, and samples from uncond + (S + 1)·(cond − uncond);
    /// costs a second sequence per pass; 0 is off (LLaDA uses up to 3)
    #[arg(long = "cfg-scale", value_name = "S", visible_alias = "diffusion-cfg-scale", default_value_t = 0.0)]
    pub cfg_scale: f32,
    /// Random seed [default: random, printed on stderr]
    #[arg(short, long)]
    pub seed: Option<u64>,
    /// Key/value cache for block decoding (Fast-dLLM; approximate): `prefix` reuses the prompt
    /// and finished blocks, `dual` also the masked suffix. Each block starts with a full pass.
    #[arg(long, value_enum, default_value = "none")]
    pub cache: CacheArg,
    /// Leave the positions after a committed EOS (all EOS, already final) out of the forward
    /// passes (approximate: the model was trained seeing its padding; not with --suffix)
    #[arg(long)]
    pub prune_eos: bool,
    /// Keep at most N masked positions after the current block in each forward pass
    /// (approximate: leaves far-future masks out, as DPad does; needs --block-length to matter;
    /// not with --suffix)
    #[arg(long, value_name = "N")]
    pub mask_window: Option<usize>,
    // What is in effect: the flag, else the family's default (set by `resolve`).
    #[arg(skip)]
    pub steps: usize,
    #[arg(skip = UnmaskRule::Threshold)]
    pub unmask: UnmaskRule,
    #[arg(skip)]
    pub block_length: Option<usize>,
    #[arg(skip)]
    pub threshold: f32,
    #[arg(skip)]
    pub temp: f32,
    #[arg(skip)]
    pub top_k: usize,
    #[arg(skip)]
    pub top_p: f32,
}

/// The most steps a run may ask for: the origin rule draws for every masked position at every
/// step, passes or not, so far more would be a hang, not a schedule.
const MAX_STEPS: usize = 1_000_000;

impl GenArgs {
    /// Fills the settings in effect: each flag given, else `d`'s family default (steps for
    /// `n_gen` generated positions), then checks them.
    pub fn resolve(&mut self, d: &dlm::model::DiffusionParams, n_gen: usize) -> anyhow::Result<()> {
        let llama_cpp = self.diffusion_algorithm.and_then(UnmaskRule::from_llama_cpp);
        self.unmask = self.unmask_flag.unwrap_or(llama_cpp.unwrap_or(d.family.sampling.unmask));
        // Dream's timestep schedule replaces the family's blocks, and ranks positions: without a
        // rule given, a family default that does not rank (origin, threshold) becomes
        // llama-diffusion-cli's default, confidence.
        let explicit_rule = self.unmask_flag.is_some() || llama_cpp.is_some();
        if self.diffusion_eps.is_some() && !explicit_rule && matches!(self.unmask, UnmaskRule::Origin | UnmaskRule::Threshold) {
            self.unmask = UnmaskRule::Confidence;
        }
        // The defaults of this length under the rule in effect (long answers may differ).
        let f = &d.sampling_for(n_gen, self.unmask);
        // A family's one-step-per-token default follows -n, which is checked against the
        // context later, with its own message: here it only must not trip the --steps bound.
        self.steps = self.steps_flag.unwrap_or_else(|| d.default_steps(n_gen, self.unmask).min(MAX_STEPS));
        self.block_length = self.block_length_flag.or(if self.diffusion_eps.is_some() { None } else { f.block_length });
        self.threshold = self.threshold_flag.unwrap_or(f.threshold);
        self.temp = self.temp_flag.unwrap_or(f.temp);
        self.top_k = self.top_k_flag.unwrap_or(f.top_k);
        self.top_p = self.top_p_flag.unwrap_or(f.top_p);
        if self.diffusion_alg_temp.is_some_and(|t| t > 0.0) && self.unmask == UnmaskRule::Random {
            dlm::errln!("warning: --diffusion-alg-temp does nothing with --unmask random (positions are drawn uniformly already)");
        }
        if self.diffusion_add_gumbel_noise {
            // Gumbel-max draws from the whole distribution: the family's truncation is off.
            (self.top_k, self.top_p) = (0, 1.0);
            if self.temp == 0.0 {
                dlm::errln!("warning: --diffusion-add-gumbel-noise does nothing at --temp 0 (greedy); give --temp above 0 to sample");
            }
        }
        self.check()
    }

    /// Checks the flags given, before anything is loaded (`resolve` checks what is in effect).
    pub fn check_flags(&self) -> anyhow::Result<()> {
        let mut probe = self.clone();
        probe.unmask = self.unmask_flag.or(self.diffusion_algorithm.and_then(UnmaskRule::from_llama_cpp)).unwrap_or(UnmaskRule::Confidence);
        probe.steps = self.steps_flag.unwrap_or(1);
        probe.block_length = self.block_length_flag;
        probe.threshold = self.threshold_flag.unwrap_or(0.5);
        probe.temp = self.temp_flag.unwrap_or(0.0);
        probe.top_p = self.top_p_flag.unwrap_or(1.0);
        probe.check()
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.steps == 0 || self.steps > MAX_STEPS {
            bail!("--steps must be in 1..={MAX_STEPS}, got {}", self.steps);
        }
        if !(self.temp >= 0.0 && self.temp.is_finite()) {
            bail!("--temp must be 0 (greedy) or positive, got {}", self.temp);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            bail!("--threshold must be in (0, 1], got {}", self.threshold);
        }
        if self.block_length == Some(0) {
            bail!("--block-length must be at least 1");
        }
        if !(0.0..=dlm::generate::MAX_CFG_SCALE).contains(&self.cfg_scale) {
            bail!("--cfg-scale must be in [0, {}], got {}", dlm::generate::MAX_CFG_SCALE, self.cfg_scale);
        }
        if self.cfg_scale > 0.0 && !matches!(self.cache, CacheArg::None) {
            bail!("--cfg-scale runs a second, prompt-masked canvas every step and keeps no key/value cache: drop --cache {}", flag_value(&self.cache));
        }
        if let Some(e) = self.diffusion_eps {
            if !(e > 0.0 && e < 1.0) {
                bail!("--diffusion-eps must be in (0, 1), got {e}");
            }
            if matches!(self.unmask, UnmaskRule::Origin | UnmaskRule::Threshold) {
                bail!("--diffusion-eps schedules --unmask confidence, margin, entropy or random; this run uses --unmask {}", flag_value(&self.unmask));
            }
            if let Some(t) = self.diffusion_alg_temp.filter(|t| !(t.is_finite() && *t >= 0.0)) {
                bail!("--diffusion-alg-temp must be a finite number ≥ 0, got {t}");
            }
            if self.block_length.is_some() {
                bail!("--diffusion-eps and --block-length are two schedules: use one (the family's default blocks are in effect: add --block-length with a value at least -n to make one block, or drop --diffusion-eps)");
            }
        }
        Ok(())
    }

    /// The generation parameters for `n_gen` positions and `steps` passes.
    pub fn params(&self, l: &Loaded, n_gen: usize, steps: usize, seed: u64) -> GenParams {
        GenParams { steps, ..self.params_for(l.mask_id, l.shift, l.tok.eos, n_gen, seed) }
    }

    /// The generation parameters in effect (after [`GenArgs::resolve`]) for a model with these
    /// diffusion facts.
    pub fn params_for(&self, mask_id: u32, shift_logits: bool, eos: Option<u32>, n_gen: usize, seed: u64) -> GenParams {
        GenParams {
            n_gen,
            steps: self.steps,
            block_length: self.block_length,
            sampler: TokenSampler { temp: self.temp, top_k: self.top_k, top_p: self.top_p, gumbel: self.diffusion_add_gumbel_noise },
            seed,
            mask_id,
            shift_logits,
            eos,
            cache: match self.cache {
                CacheArg::None => Cache::None,
                CacheArg::Prefix => Cache::Prefix,
                CacheArg::Dual => Cache::Dual,
            },
            full_lm_head: false,
            cfg_scale: self.cfg_scale,
            prune: Prune { after_eos: self.prune_eos, window: self.mask_window },
        }
    }

    /// A factory of the unmasking rule (batches need one per sequence).
    pub fn unmasker(&self) -> impl Fn() -> Box<dyn Unmasker> {
        let (unmask, threshold, eps, alg_temp) = (self.unmask, self.threshold, self.diffusion_eps, self.diffusion_alg_temp);
        move || unmask.unmasker_with(threshold, eps, alg_temp)
    }

    /// `--seed`, or one from the clock.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64))
    }
}

/// A loaded model with what generation needs besides it.
pub struct Loaded {
    pub model: Model,
    pub tok: Tokenizer,
    pub mask_id: u32,
    pub shift: bool,
    pub path: PathBuf,
    pub load_s: f64,
}

impl Loaded {
    /// BOS + prompt as the runtime lays it out (BOS alone for an empty prompt).
    pub fn prefix(&self, prompt: &str) -> anyhow::Result<Vec<u32>> {
        Ok(self.tok.prompt_ids(prompt)?)
    }

    /// The suffix continues the text: no BOS.
    pub fn suffix(&self, suffix: &str) -> anyhow::Result<Vec<u32>> {
        Ok(self.tok.suffix_ids(suffix)?)
    }

    pub fn n_ctx(&self) -> usize {
        self.model.params().n_ctx_train
    }
}

/// The earliest of `stops` in `text`: its byte offset and the string.
pub fn find_stop<'s>(text: &str, stops: &'s [String]) -> Option<(usize, &'s str)> {
    stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str()).map(|at| (at, s.as_str()))).min_by_key(|&(at, _)| at)
}

/// The text of `tokens` (through `render`) cut before the first stop string, the stop string,
/// and how many tokens lie wholly before it (what `--json`'s `tokens` lists).
pub fn cut_at_stop<'s>(tokens: &[u32], stops: &'s [String], render: impl Fn(&[u32]) -> anyhow::Result<String>) -> anyhow::Result<(String, Option<&'s str>, usize)> {
    let mut text = render(tokens)?;
    let Some((at, stop)) = find_stop(&text, stops) else { return Ok((text, None, tokens.len())) };
    text.truncate(at);
    let mut kept = 0;
    while kept < tokens.len() && render(&tokens[..kept + 1])?.len() <= at {
        kept += 1;
    }
    Ok((text, Some(stop), kept))
}

/// A span as text, each masked position shown as `mask`; with `continues` it reads on from
/// text shown before it (its first token keeps its leading space).
pub fn canvas_text(tok: &Tokenizer, tokens: &[u32], masked: &[bool], mask: &str, continues: bool) -> String {
    match tok.decode_canvas(tokens, masked, continues) {
        Ok(runs) => runs.iter().map(|r| r.as_deref().unwrap_or(mask)).collect(),
        Err(_) => String::new(),
    }
}

/// Opens the file, resolves the diffusion settings and the backend, loads the model and its
/// tokenizer, and checks that they agree.
pub fn load(a: &ModelArgs) -> anyhow::Result<Loaded> {
    let path = a.path()?.to_owned();
    let threads = dlm::cli::threads(a.threads).map_err(anyhow::Error::msg)?;
    let t_load = Instant::now();
    let gguf = Gguf::open(&path)?;
    let over = a.overrides();
    let checked = dlm::model::check(&gguf, &over)?;
    if !a.no_check_tensors {
        let t = Instant::now();
        let bytes = dlm::model::check_values(&gguf)?;
        if dlm::cli::logs(dlm::cli::Log::Verbose) {
            dlm::errln!("checked the values of {} tensors ({:.0} MB) in {:.0} ms (--no-check-tensors skips it)", gguf.tensors().len(), bytes as f64 / 1e6, t.elapsed().as_secs_f64() * 1e3);
        }
    }
    if let Some(note) = checked.diffusion.report(&path) {
        dlm::errln!("{note}");
    }
    let backend = backend_of(a, checked.params.n_layer)?;
    // Checked above, timed for -v.
    let opts = LoadOptions {
        threads,
        diffusion: over,
        backend,
        device: a.device,
        n_gpu_layers: a.n_gpu_layers,
        check_values: false,
        flash_attn: a.flash_attn != Some(Switch::Off),
        rpc: a.rpc.clone(),
        tensor_split: a.tensor_split.clone(),
        rpc_timeout: std::time::Duration::from_secs(a.rpc_timeout),
        ..Default::default()
    };
    let mut model = Model::from_gguf(gguf, &opts)?;
    model.set_device_candidates(match a.device_candidates {
        Switch::Auto => None,
        Switch::On => Some(true),
        Switch::Off => Some(false),
    });
    for w in model.warnings() {
        dlm::errln!("warning: {}: {w}", path.display());
    }
    let (mask_id, shift) = (model.diffusion().mask_id, model.diffusion().shift_logits);
    let tok = Tokenizer::from_gguf(model.gguf())?;
    for (id, what) in [(tok.bos, "BOS"), (tok.eos, "EOS")] {
        if id == Some(mask_id) {
            dlm::errln!("warning: mask id {mask_id} is also the {what} token, so the model cannot tell masked positions from a real {what} (a wrong --mask-id?)");
        }
    }
    // A model's embedding may be wider than its tokenizer (Qwen2's and LLaDA's are padded for
    // speed); the reverse would feed the model ids it has no row for.
    if tok.vocab_size() > model.params().n_vocab {
        bail!("{}: the tokenizer has {} tokens but the model's vocabulary is only {}", path.display(), tok.vocab_size(), model.params().n_vocab);
    }
    // The other way round the model can generate ids the tokenizer has no entry for: say so
    // once. The file's token list counts (converters pad it with `[PAD{i}]` placeholders to
    // the embedding's rows, as llama.cpp does for Qwen2 and LLaDA, while the embedded
    // tokenizer.json stays unpadded); without one, the tokenizer's own size.
    let n_vocab = model.params().n_vocab;
    let listed = model.gguf().get(dlm::keys::TOKENS).and_then(|v| v.as_array()).map(|(_, items)| items.len());
    let known = listed.unwrap_or_else(|| tok.vocab_size());
    if known < n_vocab {
        dlm::errln!(
            "warning: {}: the tokenizer has {known} tokens but the model {n_vocab}: ids {known}..{} have no text (generated, they print nothing)",
            path.display(),
            n_vocab - 1
        );
    }
    Ok(Loaded { model, tok, mask_id, shift, path, load_s: t_load.elapsed().as_secs_f64() })
}

/// The backend the flags ask for.
fn backend_of(a: &ModelArgs, n_layer: usize) -> anyhow::Result<Backend> {
    let backend = match a.backend {
        BackendArg::Auto => Backend::Auto,
        BackendArg::Cpu => Backend::Cpu,
        BackendArg::Cuda => Backend::Cuda,
        BackendArg::Metal => Backend::Metal,
        BackendArg::Vulkan => Backend::Vulkan,
        BackendArg::Wgpu => Backend::Wgpu,
    };
    // RPC servers' devices take partial offloads as a ggml GPU does.
    let ggml_gpu = !a.rpc.is_empty() || dlm::backend::ggml::gpu_devices().iter().any(|d| !d.is_software());
    match a.n_gpu_layers {
        Some(0) => {
            if !a.rpc.is_empty() {
                bail!("--rpc with -ngl 0 runs nothing on the RPC servers (-ngl counts the layers that leave this machine): drop one of the two");
            }
            if a.backend == BackendArg::Wgpu {
                bail!("--backend wgpu with -ngl 0 runs nothing on the GPU: use --backend cpu");
            }
            Ok(Backend::Cpu)
        }
        Some(n) if n < n_layer && (backend == Backend::Wgpu || (backend == Backend::Auto && !ggml_gpu)) => {
            bail!("-ngl {n}: the wgpu backend runs all {n_layer} layers on the GPU or none (-ngl 0); partial offload needs a ggml GPU backend (--features cuda, metal or vulkan)")
        }
        _ => Ok(backend),
    }
}

/// Activation memory one pass of a batch may take.
pub const BATCH_MEMORY: f64 = 4.0 * (1u64 << 30) as f64;

/// Activation bytes one token of a pass takes: about 8 vectors of the embedding width, 3 of the
/// feed-forward width and, for the rows the LM head reads, a vocabulary of logits.
pub fn activation_bytes_per_token(p: &dlm::model::Hparams) -> f64 {
    4.0 * (8 * p.n_embd + 3 * p.n_ff + p.n_vocab) as f64
}

/// `--temp`'s value in effect for a settings line, with `--diffusion-add-gumbel-noise` and
/// `--cfg-scale` after it when asked for.
pub fn temp_flag(g: &GenArgs) -> String {
    let mut s = g.temp.to_string();
    if g.diffusion_add_gumbel_noise {
        s += " --diffusion-add-gumbel-noise";
    }
    if g.cfg_scale > 0.0 {
        s += &format!(" --cfg-scale {}", g.cfg_scale);
    }
    s
}

/// `--block-length`'s value in effect for a settings line (`off`), with Dream's timestep schedule
/// after it when one is asked for.
pub fn block_flag(g: &GenArgs) -> String {
    let blocks = g.block_length.map_or("off".into(), |b| b.to_string());
    match (g.diffusion_eps, g.diffusion_alg_temp.filter(|&t| t > 0.0)) {
        (Some(e), Some(t)) => format!("{blocks} --diffusion-eps {e} --diffusion-alg-temp {t}"),
        (Some(e), None) => format!("{blocks} --diffusion-eps {e}"),
        (None, _) => blocks,
    }
}

/// Mean milliseconds per pass from the second (the first includes graph building and
/// first-touch page faults).
pub fn steady_ms(seconds: &[f64]) -> f64 {
    let steady = if seconds.len() > 1 { &seconds[1..] } else { seconds };
    steady.iter().sum::<f64>() / steady.len().max(1) as f64 * 1e3
}

/// Process set-up both binaries need before any thread exists, and `-ngl` spelled as llama.cpp
/// spells it (clap's short flags are one letter). Returns the arguments to parse.
pub fn init() -> Vec<std::ffi::OsString> {
    // Vulkan drivers probe for a Wayland display when the instance is made; without
    // XDG_RUNTIME_DIR (headless machines, containers) libwayland prints an "error:" line to
    // stderr although nothing is wrong. A path that does not exist makes the probe fail quietly.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", "/nonexistent/dlm-headless");
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match llama_cpp_short_flags(&args) {
        Ok(args) => args,
        Err(e) => {
            dlm::errln!("error: {e}");
            std::process::exit(2);
        }
    }
}

/// llama.cpp's multi-letter short flags (`-ngl`), which clap would read as a run of one-letter
/// flags (`-hf` as `-h`: help, exit 0; `-cnv` as `-c nv`). Those dlm has become its long names;
/// the others are refused in one line that says what dlm offers instead.
const LLAMA_CPP_FLAGS: &[(&str, Result<&str, &str>)] = &[
    ("-ngl", Ok("--n-gpu-layers")),
    ("-fa", Ok("--flash-attn")),
    ("-dev", Err("llama.cpp's --device takes device names; dlm's --device takes an index from --list-devices")),
    ("-mu", Err("dlm does not download models; see README: Getting a model")),
    ("-cnv", Ok("--conversation")),
    ("-no-cnv", Err("dlm-run answers one prompt unless -cnv is given: drop -no-cnv")),
    ("-st", Err("dlm-run answers one prompt (-p) and exits, or converses with -cnv until /exit")),
    ("-sys", Ok("--system-prompt")),
    ("-sysf", Err("give the system prompt as text: --system-prompt \"$(cat FILE)\"")),
    ("-mli", Err("dlm-run has no interactive mode; -f FILE or standard input take a multi-line prompt")),
    ("-sm", Err("dlm splits by layer only, among the devices of --rpc and the local GPU (--tensor-split)")),
    ("-ts", Ok("--tensor-split")),
    ("-mg", Err("choose the GPU with --device N (an index from --list-devices)")),
    ("-ctk", Err("dlm chooses its key/value cache type itself")),
    ("-ctv", Err("dlm chooses its key/value cache type itself")),
    ("-nkvo", Err("dlm keeps the key/value cache where its layers run")),
    ("-cb", Err("dlm-server always batches continuously; dlm-run batches --prompts with -b")),
    ("-np", Err("dlm-server's parallel sequences are -b (per pass) and --max-queue")),
    ("-tb", Err("dlm uses -t threads for every pass")),
    ("-ub", Err("dlm sizes its passes itself (-b sequences per pass)")),
    ("-ot", Err("dlm does not override tensor placement (-ngl offloads whole layers)")),
    ("-cmoe", Err("dlm runs no mixture-of-experts models")),
    ("-ncmoe", Err("dlm runs no mixture-of-experts models")),
    ("-co", Ok("--color=on")),
    ("-sp", Err("dlm prints text, never the special tokens' own pieces")),
    ("-cml", Err("dlm-run -cnv uses the model's own chat template (or --chat-template FILE), not a named one")),
    ("-jf", Err("schema-constrained output is not implemented")),
    ("-dt", Err("dlm's key/value cache needs no defragmentation")),
    ("-kvu", Err("dlm keeps one key/value cache per model")),
    ("-to", Err("dlm-run has no server timeout; dlm-server's is --timeout")),
    ("-md", Err("dlm has no speculative decoding (draft models)")),
    ("-cd", Err("dlm has no speculative decoding (draft models)")),
    ("-ps", Err("dlm has no speculative decoding (draft models)")),
    ("-ngld", Err("dlm has no speculative decoding (draft models)")),
    ("-devd", Err("dlm has no speculative decoding (draft models)")),
    ("-td", Err("dlm has no speculative decoding (draft models)")),
    ("-tbd", Err("dlm has no speculative decoding (draft models)")),
    ("-ctkd", Err("dlm has no speculative decoding (draft models)")),
    ("-ctvd", Err("dlm has no speculative decoding (draft models)")),
    ("-otd", Err("dlm has no speculative decoding (draft models)")),
    ("-lv", Err("use -v for more output or --log-disable for less")),
];

fn llama_cpp_short_flags(args: &[std::ffi::OsString]) -> Result<Vec<std::ffi::OsString>, String> {
    args.iter()
        .map(|a| match LLAMA_CPP_FLAGS.iter().find(|(f, _)| a == f) {
            // Every -hf… flag (-hfr, -hfd, -hffv, …): clap would read `-h` and print help.
            None if a.to_str().is_some_and(|s| s.starts_with("-hf")) => {
                Err(format!("{} is a llama.cpp flag dlm does not have: dlm does not download models; see README: Getting a model", a.to_string_lossy()))
            }
            None => Ok(a.clone()),
            Some((_, Ok(long))) => Ok(long.into()),
            Some((f, Err(why))) => Err(format!("{f} is a llama.cpp flag dlm does not have: {why}")),
        })
        .collect()
}

/// `--list-devices`: every ggml GPU device and wgpu adapter, one per line, with what `auto`
/// would pick.
pub fn list_devices(m: &ModelArgs) -> anyhow::Result<()> {
    let remote = dlm::backend::ggml::rpc_devices(&m.rpc, std::time::Duration::from_secs(m.rpc_timeout))?;
    let list = dlm::backend::wgpu::adapters();
    let ggml = dlm::backend::ggml::gpu_devices();
    dlm::outln!("cpu: ggml CPU backend ({} threads)", LoadOptions::default().threads)?;
    for (i, d) in remote.iter().enumerate() {
        dlm::outln!("rpc device {i}: {} | {} | {} MiB free of {} MiB (--rpc: takes layers before the local GPU)", d.name, d.description, d.memory_free >> 20, d.memory_total >> 20)?;
    }
    let mut per_api: std::collections::HashMap<String, usize> = Default::default();
    for d in &ggml {
        let i = per_api.entry(d.api.clone()).or_default();
        let note = if d.is_software() { " (software: --backend auto never picks it)" } else { "" };
        dlm::outln!("{} device {i}: {} | {} | {} MiB free of {} MiB{note}", d.api.to_lowercase(), d.name, d.description, d.memory_free >> 20, d.memory_total >> 20)?;
        *i += 1;
    }
    if list.is_empty() {
        dlm::outln!("wgpu: no adapters (no Vulkan, Metal or DX12 driver found)")?;
    }
    for d in &list {
        let note = if d.software { " (software: --backend auto never picks it)" } else { "" };
        let feats: Vec<&str> = [(d.subgroups, "subgroups"), (d.f16, "f16")].into_iter().filter(|f| f.0).map(|f| f.1).collect();
        let feats = if feats.is_empty() { "none".to_string() } else { feats.join(", ") };
        dlm::outln!("wgpu device {}: {} | {} | {} | {} | max binding {} MiB | features: {feats}{note}", d.index, d.name, d.api, d.kind, d.driver, d.max_binding >> 20)?;
    }
    let auto = match (ggml.iter().find(|d| !d.is_software()), list.iter().find(|d| !d.software)) {
        (Some(d), _) => format!("{} ({})", d.api.to_lowercase(), d.name),
        (None, Some(d)) if remote.is_empty() => format!("wgpu device {} ({})", d.index, d.name),
        (None, _) => "cpu".to_string(),
    };
    let auto = if remote.is_empty() { auto } else { format!("the {} rpc device(s), then {auto}", remote.len()) };
    dlm::outln!("--backend auto: {auto}")?;
    Ok(())
}

/// A text input of at most 1 GiB, UTF-8, a leading byte-order mark dropped: a regular file, or
/// with `streams` also standard input (`-`), a pipe or a device (read up to the limit).
pub fn read_text(path: &Path, what: &str, streams: bool) -> anyhow::Result<String> {
    const MAX: u64 = 1 << 30;
    let stdin = path == Path::new("-") && streams;
    let at = if stdin { "standard input".to_string() } else { path.display().to_string() };
    let mut bytes = Vec::new();
    if stdin {
        std::io::stdin().take(MAX + 1).read_to_end(&mut bytes).with_context(|| format!("reading {what} from {at}"))?;
    } else {
        let meta = std::fs::metadata(path).with_context(|| format!("reading {what} from {at}"))?;
        if meta.is_dir() {
            bail!("{at}: a directory, expected a text file with {what}");
        }
        if !streams && !meta.is_file() {
            bail!("{at}: {what} must be a regular file");
        }
        let file = std::fs::File::open(path).with_context(|| format!("reading {what} from {at}"))?;
        file.take(MAX + 1).read_to_end(&mut bytes).with_context(|| format!("reading {what} from {at}"))?;
    }
    if bytes.len() as u64 > MAX {
        bail!("{at}: {what} is more than 1 GiB");
    }
    let text = String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{at}: {what} is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))?;
    Ok(text.strip_prefix('\u{feff}').map(str::to_owned).unwrap_or(text))
}

/// What stderr carries: nothing but errors (`--log-disable`), more (`-v`), or the default.
pub fn set_log(log_disable: bool, verbose: bool) {
    dlm::cli::set_log(if log_disable {
        dlm::cli::Log::Off
    } else if verbose {
        dlm::cli::Log::Verbose
    } else {
        dlm::cli::Log::Normal
    });
}

/// The binary's command with [`dlm::cli::long_version`] as its `--version`.
pub fn command<T: clap::CommandFactory>() -> clap::Command {
    T::command().long_version(dlm::cli::long_version())
}

/// An f32 setting for JSON as it was written: 0.9, not the widened 0.8999999761581421.
pub fn short(x: f32) -> f64 {
    x.to_string().parse::<f64>().unwrap_or(f64::from(x))
}

/// A flag's value as typed on the command line (`--unmask threshold`).
pub fn flag_value(v: &impl ValueEnum) -> String {
    v.to_possible_value().map_or_else(String::new, |v| v.get_name().to_owned())
}
