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
    /// Rows `ids` of `table` (`[ne0, rows]`, any weight type), as f32 `[ne0, n_ids]`.
    fn get_rows(&mut self, table: Self::T, ids: Self::T) -> Self::T;
    /// `w` `[k, m]` times `x` `[k, n]`: `[m, n]` f32.
    fn mul_mat(&mut self, w: Self::T, x: Self::T) -> Self::T;
    /// `x / sqrt(mean(x²) + eps)` over `ne0`.
    fn rms_norm(&mut self, x: Self::T, eps: f32) -> Self::T;
    /// Elementwise product; `b` broadcasts along the dimensions where it is 1.
    fn mul(&mut self, a: Self::T, b: Self::T) -> Self::T;
    /// Elementwise sum of two tensors of the same shape.
    fn add(&mut self, a: Self::T, b: Self::T) -> Self::T;
    /// The same data seen as `[ne0, ne1, ne2]`.
    fn reshape_3d(&mut self, x: Self::T, ne: [usize; 3]) -> Self::T;
    /// Rotary position embedding, ggml NORM mode (adjacent pairs rotate) on `x` `[head_dim, heads, n]`
    /// at positions `pos` (i32 `[n]`), over the first `n_dims` of each head.
    fn rope(&mut self, x: Self::T, pos: Self::T, n_dims: usize, theta: f32) -> Self::T;
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
    /// Writes `fresh` `[a, b, m]` over tokens `start..start + m` of the persistent tensor
    /// `cache` `[a, b, total]` and returns the whole cache, ordered after the write.
    fn write_tokens(&mut self, cache: Self::T, fresh: Self::T, start: usize) -> Self::T;
}

/// A backend that runs graphs of [`Ops`]: builds (or plans) a graph once per key, then runs it
/// as often as asked with new i32 inputs.
pub trait Engine {
    type T: Copy;
    type Builder<'a>: Ops<T = Self::T>
    where
        Self: 'a;

    /// Runs the graph `build` makes (made once per distinct `key`, which must determine the
    /// graph, and reused while the key stays the same), with `inputs` copied into the graph's
    /// i32 inputs in the order `build` created them; returns the output tensor's values.
    /// `graph_size` bounds the tensors and nodes `build` may create.
    fn run(
        &mut self,
        key: &[usize],
        graph_size: usize,
        inputs: &[&[i32]],
        build: impl FnOnce(&mut Self::Builder<'_>) -> Self::T,
    ) -> crate::Result<Vec<f32>>;

    /// Key/value cache tensors, f32 `[head_dim, n_head_kv, total]` for each of `layers`,
    /// allocated on first use and again whenever the shape changes (contents then undefined).
    fn kv_cache(&mut self, layers: usize, head_dim: usize, n_head_kv: usize, total: usize) -> crate::Result<Vec<LayerKv<Self::T>>>;
}

/// One layer's cached keys and values, `[head_dim, n_head_kv, total]` each (after RoPE).
#[derive(Clone, Copy, Debug)]
pub struct LayerKv<T> {
    pub k: T,
    pub v: T,
}
