//! The small op set a model is written against. A backend implements [`Ops`]; a model's forward
//! pass is written once, top to bottom like the math, in these terms (model/llama.rs), and runs
//! on every backend that implements them.
//!
//! Shapes use ggml's order: `[ne0, ne1, ne2]` with `ne0` contiguous. A weight matrix of a
//! `y = W x` layer is `[n_in, n_out]`, activations are `[n_embd, n_tokens]`.
//! Ops do not fail: models validate every shape when they load, before any graph is built.

pub trait Ops {
    /// A tensor handle, valid only with the backend that made it.
    type T: Copy;

    /// An i32 vector of `n` values, set by the caller before compute (token ids, positions).
    fn input_i32(&mut self, n: usize) -> Self::T;
    /// An f32 vector of `n` values, set by the caller before compute through the same i32
    /// inputs as [`Ops::input_i32`]: each value as its bit pattern (`f32::to_bits() as i32`).
    fn input_f32(&mut self, n: usize) -> Self::T;
    /// Rows `ids` of `table` (`[ne0, rows]`, any weight type), as f32 `[ne0, n_ids]`.
    fn get_rows(&mut self, table: Self::T, ids: Self::T) -> Self::T;
    /// `w` `[k, m]` times `x` `[k, n]`: `[m, n]` f32.
    fn mul_mat(&mut self, w: Self::T, x: Self::T) -> Self::T;
    /// `x / sqrt(mean(x²) + eps)` over `ne0`.
    fn rms_norm(&mut self, x: Self::T, eps: f32) -> Self::T;
    /// `(x - mean(x)) / sqrt(var(x) + eps)` over `ne0` (LayerNorm before its weight and bias).
    fn layer_norm(&mut self, x: Self::T, eps: f32) -> Self::T;
    /// GELU, tanh approximation (GPT-2's `gelu_new`; ggml's `ggml_gelu`).
    fn gelu(&mut self, x: Self::T) -> Self::T;
    /// Values `start..start + len` along `ne0` of `x` `[ne0, n]`, as a contiguous `[len, n]`
    /// (a fused projection's part).
    fn slice0(&mut self, x: Self::T, start: usize, len: usize) -> Self::T;
    /// Elementwise product; `b` broadcasts along the dimensions where it is 1.
    fn mul(&mut self, a: Self::T, b: Self::T) -> Self::T;
    /// Elementwise sum; `b` broadcasts along the dimensions where it is 1 (a bias `[ne0]`).
    fn add(&mut self, a: Self::T, b: Self::T) -> Self::T;
    /// The same data seen as `[ne0, ne1, ne2]`.
    fn reshape_3d(&mut self, x: Self::T, ne: [usize; 3]) -> Self::T;
    /// Rotary position embedding on `x` `[head_dim, heads, n]` at positions `pos` (i32 `[n]`),
    /// over the first `n_dims` of each head, pairs chosen by `mode`.
    fn rope(&mut self, x: Self::T, pos: Self::T, n_dims: usize, theta: f32, mode: RopeMode) -> Self::T;
    /// Scaled dot-product attention of `q` `[hd, n_head, n]` over `k`, `v` `[hd, n_head_kv, n]`
    /// (grouped: query head h reads kv head h / (n_head / n_head_kv)); every position attends to
    /// every position unless `causal`. Returns `[hd * n_head, n]`.
    fn attention(&mut self, q: Self::T, k: Self::T, v: Self::T, causal: bool) -> Self::T;
    /// `silu(gate) * up`.
    fn swiglu(&mut self, gate: Self::T, up: Self::T) -> Self::T;
    /// Tokens `start..start + len` of `x` `[a, b, n]`: a view `[a, b, len]`.
    fn token_range(&mut self, x: Self::T, start: usize, len: usize) -> Self::T;
    /// `[a, n_i]` tensors stacked along the tokens: `[a, Σ n_i]`.
    fn concat_tokens(&mut self, parts: &[Self::T]) -> Self::T;
    /// What the host sampler needs of each row of logits `x` `[n, rows]`, so that 5 numbers per
    /// row leave the device instead of `n` ([`crate::sample::RowStats`]): f32 `[5, rows]` holding
    /// `n − i` for the lowest index `i` of the row's maximum `m`, `Σ exp(x − m)`,
    /// `Σ exp(x − m)·(x − m)`, the largest `x − m` below 0 (−1e30 if none), and how many entries
    /// are below the maximum.
    fn row_stats(&mut self, x: Self::T) -> Self::T;
    /// What a sampled step needs of each row of logits `x` `[n, rows]` (contiguous) at
    /// temperature `1 / inv_temp[row]` (`inv_temp` an f32 `[rows]` from [`Ops::input_f32`]),
    /// so that `5 + 2k` numbers per row leave the device ([`crate::sample::RowCandidates`]):
    /// f32 `[5 + 2k, rows]` holding [`Ops::row_stats`] of the row times its `inv_temp`, then
    /// the ids (as f32) of `k` largest logits of the row, then those logits unscaled; the `k`
    /// in no particular order, any of equal logits at the boundary. `1 ≤ k ≤ n`.
    fn row_candidates(&mut self, x: Self::T, inv_temp: Self::T, k: usize) -> Self::T;
    /// Keeps `x` (f32 `[n, rows]`, contiguous) readable after the graph runs, through
    /// [`Engine::read_kept`]: the logits behind a reduction, for the rows it cannot serve. At
    /// most one tensor per graph.
    fn keep(&mut self, x: Self::T);
    /// Writes `fresh` `[a, b, m]` over tokens `start..start + m` of the persistent tensor
    /// `cache` `[a, b, total]` and returns the whole cache, ordered after the write.
    fn write_tokens(&mut self, cache: Self::T, fresh: Self::T, start: usize) -> Self::T;
}

/// Which values of a head RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeMode {
    /// Adjacent pairs `(2p, 2p + 1)`: ggml's NORM mode, LLaMA as llama.cpp converts it (Q/K
    /// rows permuted from Hugging Face's layout).
    Norm,
    /// Pairs `(p, p + n_dims / 2)`: ggml's NEOX mode, Hugging Face's `rotate_half` on unpermuted
    /// rows (Qwen2, Dream).
    Neox,
}

impl RopeMode {
    /// ggml's `mode` value.
    pub fn ggml(self) -> i32 {
        match self {
            RopeMode::Norm => 0,
            RopeMode::Neox => 2,
        }
    }
}

/// A backend that runs graphs of [`Ops`]: builds (or plans) a graph once per key, then runs it
/// as often as asked with new i32 inputs.
pub trait Engine {
    type T: Copy;
    type Builder<'a>: Ops<T = Self::T>
    where
        Self: 'a;

    /// Runs the graph `build` makes (planned once per distinct `key`, which must determine the
    /// graph, and kept in a small [`PlanCache`]), with `inputs` copied into the graph's i32
    /// inputs in the order `build` created them; returns the output tensor's values.
    fn run(&mut self, key: &GraphKey, inputs: &[&[i32]], build: impl FnOnce(&mut Self::Builder<'_>) -> Self::T) -> crate::Result<Vec<f32>>;

    /// How many graphs were planned since the engine was created.
    fn plans_built(&self) -> usize;

    /// Rows `rows` (each `n` values, in that order) of the tensor the last graph run kept with
    /// [`Ops::keep`]. An error when that graph kept nothing, a row is out of range, or its plan
    /// has been dropped since (by [`Engine::free_kv`]).
    fn read_kept(&mut self, rows: &[usize]) -> crate::Result<Vec<f32>>;

    /// The key/value cache `id` (one sequence's): f32 `[head_dim, n_head_kv, total]` tensors
    /// for each of `layers`, allocated on first use and again whenever its shape changes
    /// (contents then undefined). Each id has its own memory; graphs may read several. The
    /// handles are valid until the next `kv_cache` or `free_kv` call (an engine may renumber
    /// them): ask for every cache a graph reads first, then take the handles.
    fn kv_cache(&mut self, id: CacheId, layers: usize, head_dim: usize, n_head_kv: usize, total: usize) -> crate::Result<Vec<LayerKv<Self::T>>>;

    /// Frees the key/value cache `id`, if held, and the plans that read it.
    fn free_kv(&mut self, id: CacheId);
}

/// Names one sequence's key/value cache in a model (see [`Engine::kv_cache`]).
pub type CacheId = u64;

/// One layer's cached keys and values, `[head_dim, n_head_kv, total]` each (after RoPE).
#[derive(Clone, Copy, Debug)]
pub struct LayerKv<T> {
    pub k: T,
    pub v: T,
}

/// What a graph computes, as much as determines every node a builder makes: two runs with equal
/// keys build the same graph, so an engine plans a key once and reuses the plan.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GraphKey {
    pub kind: GraphKind,
    /// An upper bound on the tensors and nodes the graph makes (engines that size their graph
    /// memory up front, such as ggml's, allocate this much; others may ignore it).
    pub max_nodes: usize,
}

/// The shapes of work a graph does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GraphKind {
    /// A forward pass over independent sequences (`parts`, in order; attention stays within
    /// each), the LM head on `out_rows` rows (0: every computed row of the one sequence),
    /// reduced as `reduce` says.
    Forward { parts: Vec<SeqShape>, out_rows: usize, reduce: Reduce },
    /// Any other graph (kernel tests, benchmarks): the caller's own numbers, which must
    /// determine it.
    Other(Vec<usize>),
}

/// What a forward graph returns of its LM head's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduce {
    /// The logits.
    Logits,
    /// [`Ops::row_stats`] of each row (greedy steps).
    Stats,
    /// [`Ops::row_candidates`] with `k` candidates per row, the logits kept ([`Ops::keep`])
    /// for the rows those cannot serve (sampled steps).
    Candidates { k: usize },
}

/// One sequence of a [`GraphKind::Forward`] pass: `total` tokens, positions `start..end`
/// computed ([`crate::generate::Pass`]), keys and values through the cache `cache` (the graph
/// points at that cache's tensors) unless the pass is [`PassKind::Full`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqShape {
    pub pass: PassKind,
    pub total: usize,
    pub start: usize,
    pub end: usize,
    pub cache: Option<CacheId>,
}

/// What a forward pass does with the key/value cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PassKind {
    Full,
    Store,
    Reuse,
}

impl GraphKey {
    /// Which kind of pass the graph is: a cache keeps at most one plan per kind, so a run that
    /// only ever makes one kind holds one plan's memory, as before plans were cached.
    fn class(&self) -> u8 {
        match &self.kind {
            GraphKind::Forward { parts, reduce, .. } => {
                let pass = match parts.as_slice() {
                    [one] => one.pass as u8,
                    many if many.iter().all(|p| p.pass == PassKind::Full) => 3,
                    _ => 4,
                };
                // Each reduction is its own kind: a step that runs reduced and unreduced
                // groups keeps a plan of each.
                let r = match reduce {
                    Reduce::Logits => 0,
                    Reduce::Stats => 1,
                    Reduce::Candidates { .. } => 2,
                };
                pass * 3 + r
            }
            GraphKind::Other(_) => 15,
        }
    }

    /// Whether the graph points at the key/value cache `id`.
    pub fn reads_cache(&self, id: CacheId) -> bool {
        matches!(&self.kind, GraphKind::Forward { parts, .. } if parts.iter().any(|p| p.cache == Some(id)))
    }

    /// A key for graphs outside the model runtime, with room for `max_nodes`.
    pub fn other(numbers: &[usize], max_nodes: usize) -> GraphKey {
        GraphKey { kind: GraphKind::Other(numbers.to_vec()), max_nodes }
    }
}

/// A few planned graphs by key: the latest of each kind of pass ([`PassKind`], batches, other),
/// at most `capacity`, the least recently used dropped first. Block decoding with a cache
/// alternates a storing and a reusing graph: holding both keeps each switch from planning anew,
/// while a run of one kind (row counts shrinking as masks drain, batches changing shape) holds
/// one plan, and one plan's activation memory, as an engine with a single plan did.
pub struct PlanCache<P> {
    /// Most recently used last.
    plans: Vec<(GraphKey, P)>,
    capacity: usize,
    built: usize,
}

impl<P> PlanCache<P> {
    /// Plans every engine keeps by default: enough for one of each kind a run alternates
    /// between (full, storing, reusing). Each plan holds its own activation memory.
    pub const DEFAULT_CAPACITY: usize = 3;

    pub fn new(capacity: usize) -> PlanCache<P> {
        PlanCache { plans: Vec::new(), capacity: capacity.max(1), built: 0 }
    }

    /// The plan of `key`, made by `make` when none is held (evicting the least recently used
    /// one first when full).
    pub fn get_or_make<E>(&mut self, key: &GraphKey, make: impl FnOnce() -> std::result::Result<P, E>) -> std::result::Result<&mut P, E> {
        match self.plans.iter().position(|(k, _)| k == key) {
            Some(i) => {
                let hit = self.plans.remove(i);
                self.plans.push(hit);
            }
            None => {
                // The old plan of this kind goes first (it is not planned again until its key
                // comes back), then the least recently used while full.
                self.plans.retain(|(k, _)| k.class() != key.class());
                if self.plans.len() >= self.capacity {
                    self.plans.remove(0);
                }
                let plan = make()?;
                self.built += 1;
                self.plans.push((key.clone(), plan));
            }
        }
        Ok(&mut self.plans.last_mut().expect("just pushed").1)
    }

    /// Drops every plan (they point at buffers about to be freed).
    pub fn clear(&mut self) {
        self.plans.clear();
    }

    /// Keeps only the plans whose key `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&GraphKey) -> bool) {
        self.plans.retain(|(k, _)| keep(k));
    }

    /// The plan run last (every use moves a plan last) and its key.
    pub fn last(&self) -> Option<(&GraphKey, &P)> {
        self.plans.last().map(|(k, p)| (k, p))
    }

    /// The plans held, least recently used first.
    pub fn plans(&self) -> impl Iterator<Item = &P> {
        self.plans.iter().map(|(_, p)| p)
    }

    /// How many plans were made since the engine was created (a measure of rebuilds).
    pub fn built(&self) -> usize {
        self.built
    }
}

/// The key/value caches both engines keep: per [`CacheId`], one cache of a given shape
/// (`[layers, head_dim, n_head_kv, total]`), replaced when that id asks for another shape.
pub struct KvStore<C> {
    held: Vec<(CacheId, [usize; 4], C)>,
}

impl<C> Default for KvStore<C> {
    fn default() -> Self {
        KvStore { held: Vec::new() }
    }
}

impl<C> KvStore<C> {
    /// The cache `id`, when it is held with `shape`.
    pub fn get(&self, id: CacheId, shape: [usize; 4]) -> Option<&C> {
        self.held.iter().find(|(i, s, _)| *i == id && *s == shape).map(|(_, _, c)| c)
    }

    /// Frees the cache `id` (whatever points at it, such as plans, must be gone first);
    /// whether one was held.
    pub fn remove(&mut self, id: CacheId) -> bool {
        let before = self.held.len();
        self.held.retain(|(i, _, _)| *i != id);
        self.held.len() != before
    }

    /// Holds `cache` of `shape` as `id` (after [`KvStore::remove`] of an old one).
    pub fn insert(&mut self, id: CacheId, shape: [usize; 4], cache: C) -> &C {
        self.held.retain(|(i, _, _)| *i != id);
        self.held.push((id, shape, cache));
        &self.held.last().expect("just pushed").2
    }

    /// Every cache held, oldest first, with its shape.
    pub fn iter(&self) -> impl Iterator<Item = (CacheId, [usize; 4], &C)> {
        self.held.iter().map(|(i, s, c)| (*i, *s, c))
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}
