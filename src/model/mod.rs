//! Models: `general.architecture` → the model, weights as backend tensors, `forward(tokens) -> logits`.
//!
//! An architecture is one file of this folder and one line of [`architectures!`] below: a type
//! implementing [`Architecture`] reads the hyper-parameters once into [`Hparams`], validates
//! every tensor's presence, shape and type while taking its handle, states the family's
//! diffusion defaults ([`Family`]), and writes the forward pass once against [`crate::graph::Ops`]
//! (its [`Network`]). The runtime ([`Model`]) only ever sees a `dyn Network`.
//!
//! [`check`] is the whole validation of a file (architecture, hyper-parameters, every tensor's
//! presence and shape) without mapping weights into a backend or computing anything: what
//! [`Model::from_gguf`] runs first, and what the load-path fuzz target drives.

pub mod diffusion;
pub mod dream;
pub mod gpt2;
pub mod hparams;
pub mod llada;
pub mod llama;
mod tensors;
#[cfg(feature = "ggml")]
mod runtime;

use crate::error::Result;
use crate::gguf::Gguf;
use crate::graph::{LayerKv, Ops};
pub use crate::generate::Pass;
pub use diffusion::{DiffusionOverrides, DiffusionParams, Family, SamplingDefaults, UnmaskRule, LONG_ANSWER, LONG_BLOCK, LONG_THRESHOLD};
pub use hparams::Hparams;
#[cfg(feature = "ggml")]
pub use runtime::{Backend, LoadOptions, Model};

/// A backend's tensor handle as a network holds it.
pub trait Handle: Copy + Send + Sync + 'static {}
impl<T: Copy + Send + Sync + 'static> Handle for T {}

/// What one forward pass computes: the `n` token ids `tokens` at positions `pos` (i32 inputs).
///
/// `seqs` splits the `n` tokens into independent sequences (computed lengths summing to `n`,
/// each with its own positions in `pos` and its own key/value cache, see [`Kv`]): attention
/// never crosses them, so a batch of sequences costs one pass over the weights. `out_rows`
/// (i32 indices into the `n` computed rows) restricts the LM head to those rows, else every row.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a, T> {
    pub tokens: T,
    pub pos: T,
    pub n: usize,
    pub out_rows: Option<T>,
    pub seqs: &'a [SeqKv<'a, T>],
}

/// One sequence of a pass: how many of the pass's tokens are its own (its computed positions)
/// and what happens to its keys and values.
#[derive(Clone, Copy, Debug)]
pub struct SeqKv<'a, T> {
    pub len: usize,
    pub kv: Kv<'a, T>,
}

/// A loaded architecture's weights (handles of one backend) and its forward pass.
pub trait Network<T>: Send + Sync {
    fn hparams(&self) -> &Hparams;
    /// Logits `[n_vocab, n_out]` of the pass `x` describes, as nodes of `o`.
    fn forward(&self, o: &mut dyn Ops<T = T>, x: &Inputs<'_, T>) -> T;
    /// The longest sequence the graph can compute, when the architecture has one (learned
    /// position embeddings have a row per position).
    fn max_positions(&self) -> Option<usize> {
        None
    }
}

/// Tensors read only by row lookups (embeddings), never as a matmul weight: they keep the file's
/// layout (no repacking) and need only a dequantizer.
pub fn is_lookup_table(name: &str) -> bool {
    matches!(name, "token_embd.weight" | "position_embd.weight")
}

/// One architecture: what a `general.architecture` value needs to be checked, loaded and run.
pub trait Architecture {
    /// The `general.architecture` value.
    const NAME: &'static str;
    type Net<T: Handle>: Network<T>;
    /// The family's diffusion facts and sampling defaults, for keys the file does not have.
    fn family() -> Family;
    /// Hyper-parameters from the `{arch}.*` keys, checked; `causal` is the attention mask the
    /// diffusion settings resolved (file key, override or the family's default).
    fn hparams(g: &Gguf, causal: bool) -> Result<Hparams>;
    /// Checks every tensor the graph reads (presence, shape, type) and takes its handle from
    /// `get`; also returns the file's tensors the graph never reads.
    fn load<T: Handle>(g: &Gguf, p: Hparams, get: &dyn Fn(&str) -> Option<T>) -> Result<(Self::Net<T>, Vec<String>)>;
}

/// The registry: one line per architecture. Generates [`ARCHITECTURES`] and the dispatch from a
/// `general.architecture` value to its [`Architecture`].
macro_rules! architectures {
    ($($arch:ty),* $(,)?) => {
        /// `general.architecture` values this runtime runs.
        pub const ARCHITECTURES: &[&str] = &[$(<$arch>::NAME),*];

        /// The diffusion family of a `general.architecture` value (its defaults: mask id, logit
        /// shift, sampling), `None` for an architecture this runtime does not run.
        pub fn family_of(arch: &str) -> Option<Family> {
            $(if arch == <$arch>::NAME { return Some(<$arch>::family()); })*
            None
        }

        fn hparams_of(arch: &str, g: &Gguf, causal: bool) -> Result<Hparams> {
            $(if arch == <$arch>::NAME { return <$arch>::hparams(g, causal); })*
            Err(unsupported(g, arch))
        }

        /// The network of `p.arch` with handles from `get`, and the tensors it does not read.
        pub(crate) fn load_network<T: Handle>(g: &Gguf, p: Hparams, get: &dyn Fn(&str) -> Option<T>) -> Result<(Box<dyn Network<T>>, Vec<String>)> {
            $(if p.arch == <$arch>::NAME {
                let (net, unused) = <$arch>::load(g, p, get)?;
                return Ok((Box::new(net), unused));
            })*
            let arch = p.arch.clone();
            Err(unsupported(g, &arch))
        }
    };
}

architectures! {
    llama::Llama,
    llada::Llada,
    dream::Dream,
    gpt2::Gpt2,
}

fn unsupported(g: &Gguf, arch: &str) -> crate::Error {
    let arch = crate::gguf::shown_name(arch);
    g.metadata_error(crate::keys::ARCHITECTURE, format!("architecture `{arch}` is not supported (supported: {})", ARCHITECTURES.join(", ")))
}

/// What [`check`] found in a file that passed it.
#[derive(Clone, Debug)]
pub struct Checked {
    pub params: Hparams,
    /// The diffusion settings in effect, with what was assumed for keys the file lacks.
    pub diffusion: DiffusionParams,
    /// Tensors of the file that the graph never reads.
    pub unused: Vec<String>,
    /// What a user should know (one line each) that did not stop the file from loading.
    pub warnings: Vec<String>,
}

/// Validates `gguf` as a model this runtime can run: a supported architecture, diffusion
/// settings and hyper-parameters in range, and every tensor the graph reads present with the
/// shape the metadata implies. `over` overrides the file's diffusion settings.
pub fn check(gguf: &Gguf, over: &DiffusionOverrides) -> Result<Checked> {
    let diffusion = resolve(gguf, over)?;
    let params = hparams_of(&diffusion.arch, gguf, diffusion.causal)?;
    if diffusion.mask_id as usize >= params.n_vocab {
        let what = format!("mask id {} is outside the {}-token vocabulary", diffusion.mask_id, params.n_vocab);
        return Err(match diffusion.sources[0] {
            diffusion::Source::File => gguf.metadata_error(crate::keys::MASK_ID, what),
            diffusion::Source::Override => crate::Error::Invalid(what),
            diffusion::Source::Family => crate::Error::Invalid(format!("{what}: the file has no `{}` and the {} default does not fit", crate::keys::MASK_ID, diffusion.family.name)),
        });
    }
    let (_, unused) = load_network(gguf, params.clone(), &|_| Some(()))?;
    let warnings = unused_warning(&params.arch, &unused).into_iter().collect();
    Ok(Checked { params, diffusion, unused, warnings })
}

/// Every tensor's values, as llama.cpp's `--check-tensors` does: floats finite, block scales
/// finite (see [`crate::gguf::first_non_finite`]); the first bad tensor is the error. Reads the
/// whole file; returns its tensors' bytes. [`check`] does this only for the norm weights and
/// biases (small, and read by every pass).
pub fn check_values(gguf: &Gguf) -> Result<u64> {
    let mut bytes = 0;
    for t in gguf.tensors() {
        gguf.check_values(t)?;
        bytes += t.size;
    }
    Ok(bytes)
}

/// The file's diffusion settings (see [`DiffusionParams::resolve`]); refuses an architecture
/// this runtime has no graph for, naming those it has.
pub fn resolve(gguf: &Gguf, over: &DiffusionOverrides) -> Result<DiffusionParams> {
    let arch = gguf.get_str(crate::keys::ARCHITECTURE)?;
    let family = family_of(arch).ok_or_else(|| unsupported(gguf, arch))?;
    DiffusionParams::resolve(gguf, family, over)
}

/// Refuses a file of an architecture this runtime has no graph for, naming those it has.
pub fn check_architecture(gguf: &Gguf) -> Result<()> {
    resolve(gguf, &DiffusionOverrides::default()).map(|_| ())
}

/// The warning for tensors the graph does not read (at most 5 named).
fn unused_warning(arch: &str, unused: &[String]) -> Option<String> {
    if unused.is_empty() {
        return None;
    }
    let mut names: Vec<String> = unused.iter().take(5).map(|n| format!("`{}`", crate::gguf::shown_name(n))).collect();
    if unused.len() > 5 {
        names.push(format!("and {} more", unused.len() - 5));
    }
    Some(format!("{} tensor(s) of the file are not part of the {arch} graph and are ignored: {} (a variant of the architecture this runtime does not implement would run wrongly)", unused.len(), names.join(", ")))
}

/// The layer index of a `blk.N.*` tensor name.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Self-attention of one layer (`il`) as every architecture does it: each sequence of
/// `x.seqs` attends within itself, its `k`, `v` going through its key/value cache as its
/// [`Kv`] says. `q` `[hd, n_head, n]`, `k`/`v` `[hd, n_head_kv, n]`; returns `[hd * n_head, n]`.
pub fn attend<T: Copy>(o: &mut dyn Ops<T = T>, x: &Inputs<'_, T>, il: usize, q: T, k: T, v: T, causal: bool) -> T {
    // With a cache, the computed positions' keys/values go into it and attention reads the
    // whole cache: the other positions' entries are those of the last full pass.
    let through = |o: &mut dyn Ops<T = T>, kv: Kv<'_, T>, k: T, v: T| match kv {
        Kv::None => (k, v),
        Kv::Store(cache) => (o.write_tokens(cache[il].k, k, 0), o.write_tokens(cache[il].v, v, 0)),
        Kv::Reuse { cache, start } => (o.write_tokens(cache[il].k, k, start), o.write_tokens(cache[il].v, v, start)),
    };
    if let [one] = x.seqs {
        let (k, v) = through(o, one.kv, k, v);
        return o.attention(q, k, v, causal);
    }
    let mut parts = Vec::with_capacity(x.seqs.len());
    let mut s0 = 0;
    for s in x.seqs {
        let (qs, ks, vs) = (o.token_range(q, s0, s.len), o.token_range(k, s0, s.len), o.token_range(v, s0, s.len));
        let (ks, vs) = through(o, s.kv, ks, vs);
        parts.push(o.attention(qs, ks, vs, causal)); // [hd * n_head, len]
        s0 += s.len;
    }
    o.concat_tokens(&parts)
}

/// What a forward pass does with keys and values.
#[derive(Clone, Copy, Debug)]
pub enum Kv<'a, T> {
    /// Nothing kept: every position is computed.
    None,
    /// Every position is computed and its keys/values are kept in the cache (sized for exactly
    /// this sequence).
    Store(&'a [LayerKv<T>]),
    /// Only the sequence's positions `start..start + len` are computed (their keys/values
    /// replace the cached ones); they attend to every position, the others through the cache.
    Reuse { cache: &'a [LayerKv<T>], start: usize },
}
