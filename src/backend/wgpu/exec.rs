//! Running model graphs on the GPU through wgpu.
//!
//! [`Executor`] implements [`Ops`] by recording nodes (dispatches and buffer copies) into a
//! plan. A plan is made once per graph key, like the ggml executor's cached graphs: activation
//! buffers are assigned by liveness (a buffer is reused once every reader of its last tensor has
//! run), parameters go into one uniform buffer, bind groups are made once. A run writes the i32
//! inputs, encodes every node into one command buffer, submits it once and reads back only the
//! output tensor.

use std::sync::Arc;

use super::kernels::{Kernel, Layout, MATVEC_MAX_N};
use super::params::{self, KernelParams, PARAMS_BYTES};
use super::weights::WeightSet;
use super::Gpu;
use crate::error::{Error, Result};
use crate::graph::{CacheId, Engine, GraphKey, KvStore, LayerKv, Ops, PlanCache, RopeMode};

/// Where a tensor's values live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    /// A weight (index into the weight set); its chunks are bound per dispatch.
    Weight(usize),
    /// A persistent key/value cache buffer.
    Cache(usize),
    /// An i32 input of the plan.
    Input(usize),
    /// An activation of the plan (a logical buffer, mapped to a physical one by liveness).
    Act(usize),
}

/// A tensor handle of one [`Executor`]: weights and caches are valid across plans, everything
/// else only within the plan that made it.
#[derive(Clone, Copy, Debug)]
pub struct GpuTensor(usize);

/// A contiguous tensor: `ne` values from element `off` of its store.
#[derive(Clone, Copy, Debug)]
struct Desc {
    store: Store,
    off: usize,
    ne: [usize; 3],
}

impl Desc {
    fn numel(&self) -> usize {
        self.ne.iter().product()
    }
}

/// A buffer a node binds: a store, or one chunk of a weight.
#[derive(Clone, Copy, Debug)]
enum Bind {
    Store(Store),
    Chunk(usize, usize),
}

enum Node {
    Dispatch { kernel: Kernel, params: [u8; PARAMS_BYTES], binds: Vec<Bind>, groups: (u32, u32) },
    Copy { src: Store, src_off: u64, dst: Store, dst_off: u64, bytes: u64 },
}

/// Workgroup counts for `n` groups: x capped at the per-dimension limit, the rest in y.
fn groups_2d(n: usize) -> (u32, u32) {
    let x = n.clamp(1, 65535);
    (x as u32, n.div_ceil(x).max(1) as u32)
}

/// Records a graph (see [`Ops`]).
pub struct Recorder<'e> {
    weights: &'e WeightSet,
    /// Whether the device runs subgroup kernels.
    subgroups: bool,
    /// Whether few-column matmuls take the matvec kernel.
    matvec: bool,
    /// Whether tiled matmuls of non-f32 weights keep their tiles in f16.
    f16: bool,
    descs: Vec<Desc>,
    nodes: Vec<Node>,
    inputs: Vec<usize>,
    /// Bytes of each activation store.
    acts: Vec<u64>,
    /// The tensor [`Ops::keep`] named.
    kept: Option<GpuTensor>,
    error: Option<Error>,
}

impl Recorder<'_> {
    fn desc(&self, t: GpuTensor) -> Desc {
        self.descs[t.0]
    }

    fn push(&mut self, d: Desc) -> GpuTensor {
        self.descs.push(d);
        GpuTensor(self.descs.len() - 1)
    }

    /// A fresh f32 activation of shape `ne`.
    fn act(&mut self, ne: [usize; 3]) -> (GpuTensor, Desc) {
        self.acts.push((ne.iter().product::<usize>() * 4) as u64);
        let d = Desc { store: Store::Act(self.acts.len() - 1), off: 0, ne };
        (self.push(d), d)
    }

    fn fail(&mut self, what: String) {
        self.error.get_or_insert(Error::Gpu(what));
    }

    fn dispatch<P: KernelParams>(&mut self, kernel: Kernel, p: P, binds: Vec<Bind>, groups: (u32, u32)) {
        let mut params = [0u8; PARAMS_BYTES];
        params.copy_from_slice(bytemuck::bytes_of(&p));
        self.nodes.push(Node::Dispatch { kernel, params, binds, groups });
    }

    /// The binding for an f32 operand (activation, cache, or a one-chunk f32 weight).
    fn f32_bind(&mut self, d: Desc) -> Bind {
        match d.store {
            Store::Weight(w) => {
                let gw = &self.weights.weights[w];
                if gw.layout != Layout::F32 || gw.chunks.len() != 1 {
                    self.fail(format!("weight `{}` is used as an f32 operand but is {:?}", self.weights.names[w], gw.layout));
                }
                Bind::Chunk(w, 0)
            }
            s => Bind::Store(s),
        }
    }

    /// A kernel reading rows through a loader (`get_rows`, `mul_mat`) is given, per chunk:
    /// (layout, binding, first row, rows, w_off, w_row, w_sc).
    fn row_sources(&mut self, d: Desc) -> Vec<(Layout, Bind, usize, usize, u32, u32, u32)> {
        match d.store {
            Store::Weight(w) => {
                let gw = &self.weights.weights[w];
                gw.chunks.iter().enumerate().map(|(i, c)| (gw.layout, Bind::Chunk(w, i), c.row0, c.rows, 0, c.w_row, c.w_sc)).collect()
            }
            s => vec![(Layout::F32, Bind::Store(s), 0, d.ne[1] * d.ne[2], d.off as u32, d.ne[0] as u32, 0)],
        }
    }

    /// RMS norm or (`center`) LayerNorm without weight and bias, over each row.
    fn norm(&mut self, x: GpuTensor, eps: f32, center: bool) -> GpuTensor {
        let dx = self.desc(x);
        let rows = dx.ne[1] * dx.ne[2];
        let (y, dy) = self.act(dx.ne);
        let (gx, gy) = groups_2d(rows);
        let bx = self.f32_bind(dx);
        let p = params::RmsNorm { ne0: dx.ne[0] as u32, rows: rows as u32, x_off: dx.off as u32, y_off: dy.off as u32, eps, groups_x: gx, ..Default::default() };
        self.dispatch(Kernel::Norm(center), p, vec![bx, Bind::Store(dy.store)], (gx, gy));
        y
    }

    fn elementwise(&mut self, op: u32, a: GpuTensor, b: GpuTensor) -> GpuTensor {
        let (da, db) = (self.desc(a), self.desc(b));
        for i in 0..3 {
            if db.ne[i] != da.ne[i] && db.ne[i] != 1 {
                self.fail(format!("elementwise op {op}: shapes {:?} and {:?} do not broadcast", da.ne, db.ne));
            }
        }
        let (y, dy) = self.act(da.ne);
        let (gx, gy) = groups_2d(da.numel().div_ceil(256));
        let (ba, bb) = (self.f32_bind(da), self.f32_bind(db));
        let u = |v: usize| v as u32;
        let p = params::Elementwise {
            ne0: u(da.ne[0]), ne1: u(da.ne[1]), ne2: u(da.ne[2]), groups_x: gx,
            b0: u(db.ne[0]), b1: u(db.ne[1]), b2: u(db.ne[2]), a_off: u(da.off),
            b_off: u(db.off), y_off: u(dy.off), ..Default::default()
        };
        self.dispatch(Kernel::Elementwise(op), p, vec![ba, bb, Bind::Store(dy.store)], (gx, gy));
        y
    }
}

impl Ops for Recorder<'_> {
    type T = GpuTensor;

    fn row_stats(&mut self, x: GpuTensor) -> GpuTensor {
        let dx = self.desc(x);
        let rows = dx.ne[1] * dx.ne[2];
        let (y, dy) = self.act([5, rows, 1]);
        let (gx, gy) = groups_2d(rows);
        let bx = self.f32_bind(dx);
        let p = params::RowStats { ne0: dx.ne[0] as u32, rows: rows as u32, x_off: dx.off as u32, y_off: dy.off as u32, groups_x: gx, ..Default::default() };
        self.dispatch(Kernel::RowStats, p, vec![bx, Bind::Store(dy.store)], (gx, gy));
        y
    }

    fn input_i32(&mut self, n: usize) -> GpuTensor {
        self.inputs.push(n);
        self.push(Desc { store: Store::Input(self.inputs.len() - 1), off: 0, ne: [n, 1, 1] })
    }

    fn input_f32(&mut self, n: usize) -> GpuTensor {
        // Inputs are bytes: f32 bit patterns written as i32 are f32 to the kernels.
        self.input_i32(n)
    }

    fn row_candidates(&mut self, x: GpuTensor, inv_temp: GpuTensor, k: usize) -> GpuTensor {
        let (dx, dt) = (self.desc(x), self.desc(inv_temp));
        let rows = dx.ne[1] * dx.ne[2];
        if dt.numel() < rows {
            self.fail(format!("row_candidates: {} inverse temperatures for {rows} rows", dt.numel()));
        }
        let k = k.clamp(1, dx.ne[0].max(1));
        let (y, dy) = self.act([5 + 2 * k, rows, 1]);
        let (gx, gy) = groups_2d(rows);
        let (bx, bt) = (self.f32_bind(dx), self.f32_bind(dt));
        let p = params::RowCandidates { ne0: dx.ne[0] as u32, rows: rows as u32, x_off: dx.off as u32, y_off: dy.off as u32, groups_x: gx, k: k as u32, t_off: dt.off as u32, ..Default::default() };
        self.dispatch(Kernel::RowCandidates, p, vec![bx, bt, Bind::Store(dy.store)], (gx, gy));
        y
    }

    fn keep(&mut self, x: GpuTensor) {
        if matches!(self.desc(x).store, Store::Weight(_)) {
            self.fail("keep: a weight is not an activation to keep".into());
        }
        self.kept = Some(x);
    }

    fn get_rows(&mut self, table: GpuTensor, ids: GpuTensor) -> GpuTensor {
        let (dt, di) = (self.desc(table), self.desc(ids));
        let ne0 = dt.ne[0];
        let n_ids = di.numel();
        let (y, dy) = self.act([ne0, n_ids, 1]);
        let (gx, gy) = groups_2d((ne0.div_ceil(4) * n_ids).div_ceil(256));
        for (layout, bind, row0, rows, w_off, w_row, w_sc) in self.row_sources(dt) {
            let p = params::GetRows { ne0: ne0 as u32, n_ids: n_ids as u32, ids_off: di.off as u32, y_off: dy.off as u32, row0: row0 as u32, rows: rows as u32, groups_x: gx, w_off, w_row, w_sc, ..Default::default() };
            self.dispatch(Kernel::GetRows(layout), p, vec![bind, Bind::Store(di.store), Bind::Store(dy.store)], (gx, gy));
        }
        y
    }

    fn mul_mat(&mut self, w: GpuTensor, x: GpuTensor) -> GpuTensor {
        let (dw, dx) = (self.desc(w), self.desc(x));
        let k = dw.ne[0];
        let m = dw.ne[1] * dw.ne[2];
        let n = dx.ne[1] * dx.ne[2];
        if dx.ne[0] != k {
            self.fail(format!("mul_mat: weight rows of {k} values, input columns of {}", dx.ne[0]));
        }
        let (y, dy) = self.act([m, n, 1]);
        let bx = self.f32_bind(dx);
        for (layout, bind, row0, rows, w_off, w_row, w_sc) in self.row_sources(dw) {
            if n <= MATVEC_MAX_N && self.matvec {
                // Few columns: a workgroup per row of W, no 64-wide column tiles.
                let (gx, gy) = groups_2d(rows);
                let p = params::MatVec { m: rows as u32, n: n as u32, k: k as u32, ldy: m as u32, m_base: row0 as u32, x_off: dx.off as u32, y_off: dy.off as u32, w_off, w_row, w_sc, groups_x: gx, ..Default::default() };
                self.dispatch(Kernel::MatVec(layout, self.subgroups), p, vec![bind, bx, Bind::Store(dy.store)], (gx, gy));
                continue;
            }
            let p = params::MatMul { m: rows as u32, n: n as u32, k: k as u32, ldy: m as u32, m_base: row0 as u32, x_off: dx.off as u32, y_off: dy.off as u32, w_off, w_row, w_sc, ..Default::default() };
            let groups = (rows.div_ceil(64) as u32, n.div_ceil(64) as u32);
            if groups.1 > 65535 {
                self.fail(format!("mul_mat: {n} columns exceed what one dispatch covers"));
            }
            // f16 tiles for quantized weights only: an f32 model asks for f32 arithmetic.
            let f16 = self.f16 && !matches!(layout, Layout::F32);
            self.dispatch(Kernel::MatMul(layout, f16), p, vec![bind, bx, Bind::Store(dy.store)], groups);
        }
        y
    }

    fn rms_norm(&mut self, x: GpuTensor, eps: f32) -> GpuTensor {
        self.norm(x, eps, false)
    }

    fn layer_norm(&mut self, x: GpuTensor, eps: f32) -> GpuTensor {
        self.norm(x, eps, true)
    }

    fn gelu(&mut self, x: GpuTensor) -> GpuTensor {
        self.elementwise(3, x, x)
    }

    fn slice0(&mut self, x: GpuTensor, start: usize, len: usize) -> GpuTensor {
        let dx = self.desc(x);
        let n = dx.ne[1] * dx.ne[2];
        if start + len > dx.ne[0] {
            self.fail(format!("slice0: values {start}..{} of rows of {}", start + len, dx.ne[0]));
        }
        let (y, dy) = self.act([len, n, 1]);
        let (gx, gy) = groups_2d((len * n).div_ceil(256));
        let bx = self.f32_bind(dx);
        let p = params::Slice { ne0: dx.ne[0] as u32, len: len as u32, n: n as u32, groups_x: gx, start: start as u32, x_off: dx.off as u32, y_off: dy.off as u32, ..Default::default() };
        self.dispatch(Kernel::Slice, p, vec![bx, Bind::Store(dy.store)], (gx, gy));
        y
    }

    fn mul(&mut self, a: GpuTensor, b: GpuTensor) -> GpuTensor {
        self.elementwise(1, a, b)
    }

    fn add(&mut self, a: GpuTensor, b: GpuTensor) -> GpuTensor {
        self.elementwise(0, a, b)
    }

    fn reshape_3d(&mut self, x: GpuTensor, ne: [usize; 3]) -> GpuTensor {
        let d = self.desc(x);
        if ne.iter().product::<usize>() != d.numel() {
            self.fail(format!("reshape of {:?} to {ne:?}", d.ne));
        }
        self.push(Desc { ne, ..d })
    }

    fn rope(&mut self, x: GpuTensor, pos: GpuTensor, n_dims: usize, theta: f32, mode: RopeMode) -> GpuTensor {
        let (dx, dp) = (self.desc(x), self.desc(pos));
        let (y, dy) = self.act(dx.ne);
        let (gx, gy) = groups_2d((dx.numel() / 2).div_ceil(256));
        let bx = self.f32_bind(dx);
        let u = |v: usize| v as u32;
        let p = params::Rope {
            hd: u(dx.ne[0]), heads: u(dx.ne[1]), n: u(dx.ne[2]), groups_x: gx,
            x_off: u(dx.off), y_off: u(dy.off), pos_off: u(dp.off), n_dims: u(n_dims),
            theta, neox: (mode == RopeMode::Neox) as u32, ..Default::default()
        };
        self.dispatch(Kernel::Rope, p, vec![bx, Bind::Store(dp.store), Bind::Store(dy.store)], (gx, gy));
        y
    }

    fn attention(&mut self, q: GpuTensor, k: GpuTensor, v: GpuTensor, causal: bool) -> GpuTensor {
        let (dq, dk, dv) = (self.desc(q), self.desc(k), self.desc(v));
        let [hd, n_head, n_q] = dq.ne;
        let (n_head_kv, n_kv) = (dk.ne[1], dk.ne[2]);
        if hd > 256 || dk.ne[0] != hd || dv.ne != dk.ne || n_head % n_head_kv != 0 {
            self.fail(format!("attention: q {:?}, k {:?}, v {:?} (head dimension at most 256)", dq.ne, dk.ne, dv.ne));
        }
        let (y, dy) = self.act([hd * n_head, n_q, 1]);
        let (bq, bk, bv) = (self.f32_bind(dq), self.f32_bind(dk), self.f32_bind(dv));
        let scale = 1.0 / (hd as f32).sqrt();
        let u = |v: usize| v as u32;
        let p = params::Attention {
            n_q: u(n_q), n_kv: u(n_kv), n_head: u(n_head), n_head_kv: u(n_head_kv),
            q_off: u(dq.off), k_off: u(dk.off), v_off: u(dv.off), y_off: u(dy.off),
            scale, causal: causal as u32, ..Default::default()
        };
        let groups = (n_q.div_ceil(64) as u32, n_head as u32);
        self.dispatch(Kernel::Attention(hd as u32), p, vec![bq, bk, bv, Bind::Store(dy.store)], groups);
        y
    }

    fn swiglu(&mut self, gate: GpuTensor, up: GpuTensor) -> GpuTensor {
        self.elementwise(2, gate, up)
    }

    fn token_range(&mut self, x: GpuTensor, start: usize, len: usize) -> GpuTensor {
        let d = self.desc(x);
        if start + len > d.ne[2] {
            self.fail(format!("tokens {start}..{} of {:?}", start + len, d.ne));
        }
        self.push(Desc { off: d.off + start * d.ne[0] * d.ne[1], ne: [d.ne[0], d.ne[1], len], ..d })
    }

    fn concat_tokens(&mut self, parts: &[GpuTensor]) -> GpuTensor {
        let ds: Vec<Desc> = parts.iter().map(|&p| self.desc(p)).collect();
        let a = ds[0].ne[0];
        let total: usize = ds.iter().map(|d| d.numel() / a).sum();
        let (y, dy) = self.act([a, total, 1]);
        let mut at = 0u64;
        for d in ds {
            let bytes = (d.numel() * 4) as u64;
            self.nodes.push(Node::Copy { src: d.store, src_off: (d.off * 4) as u64, dst: dy.store, dst_off: at, bytes });
            at += bytes;
        }
        y
    }

    fn write_tokens(&mut self, cache: GpuTensor, fresh: GpuTensor, start: usize) -> GpuTensor {
        let (dc, df) = (self.desc(cache), self.desc(fresh));
        let per_token = dc.ne[0] * dc.ne[1];
        if df.numel() % per_token != 0 || start * per_token + df.numel() > dc.numel() {
            self.fail(format!("writing {:?} at token {start} of a cache {:?}", df.ne, dc.ne));
        }
        let dst_off = ((dc.off + start * per_token) * 4) as u64;
        self.nodes.push(Node::Copy { src: df.store, src_off: (df.off * 4) as u64, dst: dc.store, dst_off, bytes: (df.numel() * 4) as u64 });
        cache
    }
}

/// A planned graph, ready to run.
struct Plan {
    inputs: Vec<Buffer>,
    input_lens: Vec<usize>,
    /// (pipeline, bind group, workgroups) or a copy, in order.
    steps: Vec<Step>,
    output: (Buffer, u64, u64),
    staging: wgpu::Buffer,
    /// What [`Ops::keep`] named: its buffer, byte offset, and f32 values per row and rows.
    kept: Option<(Buffer, u64, usize, usize)>,
    // Kept alive for the bind groups.
    _uniforms: wgpu::Buffer,
    _acts: Vec<Buffer>,
}

/// A physical buffer a step reads or writes.
type Buffer = wgpu::Buffer;

enum Step {
    Dispatch(Arc<wgpu::ComputePipeline>, wgpu::BindGroup, (u32, u32)),
    Copy(Buffer, u64, Buffer, u64, u64),
}


/// Weights on one GPU, plus the planned graph and the cache.
pub struct Executor {
    gpu: Gpu,
    weights: WeightSet,
    /// Descriptors valid in every plan: the weights, then the cache tensors.
    base: Vec<Desc>,
    /// Every key/value cache's buffers, cache after cache (k, v per layer), as `base` names
    /// them after the weights.
    caches: Vec<Buffer>,
    /// Per cache id: its buffers (k, v per layer), in the order of `caches`.
    kv: KvStore<Vec<Buffer>>,
    plans: PlanCache<Plan>,
    /// The key of the last graph that ran to the end (what [`Executor::read_kept`] reads).
    last_run: Option<GraphKey>,
}

impl Executor {
    pub fn new(gpu: Gpu, weights: WeightSet) -> Executor {
        let base = weights
            .weights
            .iter()
            .enumerate()
            .map(|(i, w)| Desc { store: Store::Weight(i), off: 0, ne: [w.ne[0], w.ne[1], 1] })
            .collect();
        Executor { gpu, weights, base, caches: Vec::new(), kv: KvStore::default(), plans: PlanCache::new(PlanCache::<Plan>::DEFAULT_CAPACITY), last_run: None }
    }

    /// Keeps up to `n` planned graphs (at least 1; each holds its own activation buffers).
    pub fn with_plan_capacity(mut self, n: usize) -> Executor {
        self.plans = PlanCache::new(n);
        self
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Device memory held now: (weights, everything else: the cached plans' activations,
    /// inputs, parameters and read-back buffers, and the key/value cache).
    pub fn device_bytes(&self) -> (u64, u64) {
        let plan: u64 = self.plans.plans().map(|p| {
            let acts: u64 = p._acts.iter().chain(&p.inputs).map(|b| b.size()).sum();
            acts + p.staging.size() + p._uniforms.size()
        }).sum();
        let caches: u64 = self.caches.iter().map(|b| b.size()).sum();
        (self.weights.bytes, plan + caches)
    }

    pub fn weights(&self) -> &WeightSet {
        &self.weights
    }

    /// The handle of weight `name`.
    pub fn weight(&self, name: &str) -> Option<GpuTensor> {
        self.weights.index(name).map(GpuTensor)
    }

    /// The key/value cache `id`: f32 `[head_dim, n_head_kv, total]` tensors for each of
    /// `layers`, allocated on first use and again whenever its shape changes (contents then
    /// undefined). Each id has buffers of its own.
    pub fn kv_cache(&mut self, id: CacheId, layers: usize, head_dim: usize, n_head_kv: usize, total: usize) -> Result<Vec<LayerKv<GpuTensor>>> {
        let shape = [layers, head_dim, n_head_kv, total];
        if self.kv.get(id, shape).is_none() {
            self.free_kv(id);
            let bytes = (head_dim * n_head_kv * total * 4) as u64;
            if bytes > self.gpu.max_binding() {
                return Err(Error::Gpu(format!("a {} key/value cache layer exceeds the adapter's binding limit of {}", super::human_bytes(bytes), super::human_bytes(self.gpu.max_binding()))));
            }
            let mut bufs = Vec::with_capacity(2 * layers);
            for _ in 0..2 * layers {
                let gpu = &self.gpu;
                bufs.push(gpu.checked("allocating the key/value cache", || {
                    gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("kv cache"),
                        size: bytes,
                        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                        mapped_at_creation: false,
                    })
                })?);
            }
            self.kv.insert(id, shape, bufs);
            self.index_caches();
        }
        // This cache's buffers follow those of the caches held before it.
        let mut first = self.weights.weights.len();
        for (i, _, bufs) in self.kv.iter() {
            if i == id {
                break;
            }
            first += bufs.len();
        }
        Ok((0..layers).map(|l| LayerKv { k: GpuTensor(first + 2 * l), v: GpuTensor(first + 2 * l + 1) }).collect())
    }

    /// Frees the key/value cache `id`, if held. Cache handles are positions in `base`, which
    /// shift when a cache goes: every plan goes with it (they are planned again on use).
    pub fn free_kv(&mut self, id: CacheId) {
        if self.kv.remove(id) {
            self.index_caches();
        }
    }

    /// `caches` and `base`'s cache descriptors from the caches held, cache after cache; the
    /// plans, which bound the old ones, are dropped.
    fn index_caches(&mut self) {
        self.plans.clear();
        self.base.truncate(self.weights.weights.len());
        self.caches.clear();
        for (_, [_, head_dim, n_head_kv, total], bufs) in self.kv.iter() {
            for b in bufs {
                self.caches.push(b.clone());
                self.base.push(Desc { store: Store::Cache(self.caches.len() - 1), off: 0, ne: [head_dim, n_head_kv, total] });
            }
        }
    }

    /// Runs the graph `build` records (planned once per distinct `key`, which must determine
    /// the graph), with `inputs` written into the graph's i32 inputs in the order `build`
    /// created them, and returns the output tensor's values.
    pub fn run(&mut self, key: &GraphKey, inputs: &[&[i32]], build: impl FnOnce(&mut Recorder<'_>) -> GpuTensor) -> Result<Vec<f32>> {
        let Executor { gpu, weights, base, plans, caches, last_run, .. } = self;
        *last_run = None;
        let plan = plans.get_or_make(key, || {
            let mut r = Recorder { weights, subgroups: gpu.subgroups, matvec: gpu.matvec, f16: gpu.f16, descs: base.clone(), nodes: Vec::new(), inputs: Vec::new(), acts: Vec::new(), kept: None, error: None };
            let out = build(&mut r);
            let out = r.descs[out.0];
            let kept = r.kept.map(|k| r.descs[k.0]);
            if let Some(e) = r.error {
                return Err(e);
            }
            let (nodes, input_sizes, acts) = (r.nodes, r.inputs, r.acts);
            make_plan(gpu, weights, caches, nodes, input_sizes, acts, out, kept)
        })?;
        let plan = &*plan;
        if inputs.iter().map(|i| i.len()).ne(plan.input_lens.iter().copied()) {
            return Err(Error::Invalid(format!("graph takes inputs of {:?} values", plan.input_lens)));
        }
        let gpu = &self.gpu;
        gpu.checked("running the graph", || {
            for (b, data) in plan.inputs.iter().zip(inputs) {
                gpu.queue.write_buffer(b, 0, bytemuck::cast_slice(data));
            }
            let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") });
            let mut i = 0;
            while i < plan.steps.len() {
                if let Step::Copy(src, so, dst, d_o, n) = &plan.steps[i] {
                    enc.copy_buffer_to_buffer(src, *so, dst, *d_o, *n);
                    i += 1;
                    continue;
                }
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
                while let Some(Step::Dispatch(pipe, bg, (x, y))) = plan.steps.get(i) {
                    pass.set_pipeline(pipe);
                    pass.set_bind_group(0, bg, &[]);
                    pass.dispatch_workgroups(*x, *y, 1);
                    i += 1;
                }
            }
            let (buf, off, bytes) = &plan.output;
            enc.copy_buffer_to_buffer(buf, *off, &plan.staging, 0, *bytes);
            gpu.queue.submit([enc.finish()]);
        })?;
        let out = read_back(gpu, &plan.staging)?;
        self.last_run = Some(key.clone());
        Ok(out)
    }

    /// Rows of the tensor the last graph run kept (see [`Engine::read_kept`]).
    pub fn read_kept(&mut self, rows: &[usize]) -> Result<Vec<f32>> {
        let plan = match (self.plans.last(), &self.last_run) {
            (Some((k, p)), Some(ran)) if k == ran => p,
            _ => return Err(Error::Invalid("no graph ran since the kept rows were asked for".into())),
        };
        let Some((buf, off, n, total)) = &plan.kept else {
            return Err(Error::Invalid("the last graph kept no tensor".into()));
        };
        if let Some(&r) = rows.iter().find(|&&r| r >= *total) {
            return Err(Error::Invalid(format!("row {r} of a kept tensor of {total} rows")));
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let gpu = &self.gpu;
        let row_bytes = (*n * 4) as u64;
        let size = row_bytes * rows.len() as u64;
        if size > gpu.device.limits().max_buffer_size {
            return Err(Error::Gpu(format!("{} kept rows are more than one read-back buffer holds", rows.len())));
        }
        let staging = gpu.checked("reading kept rows", || {
            gpu.device.create_buffer(&wgpu::BufferDescriptor { label: Some("kept rows"), size, usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false })
        })?;
        gpu.checked("reading kept rows", || {
            let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kept rows") });
            for (i, &r) in rows.iter().enumerate() {
                enc.copy_buffer_to_buffer(buf, off + r as u64 * row_bytes, &staging, i as u64 * row_bytes, row_bytes);
            }
            gpu.queue.submit([enc.finish()]);
        })?;
        read_back(gpu, &staging)
    }
}

/// Waits for the queue and reads a mapped-for-reading buffer as f32.
fn read_back(gpu: &Gpu, staging: &wgpu::Buffer) -> Result<Vec<f32>> {
    let (tx, rx) = std::sync::mpsc::channel();
    staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    gpu.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(format!("{}: waiting for the graph: {e}", gpu.adapter().name)))?;
    rx.recv()
        .map_err(|_| Error::Gpu("the device dropped the read-back".into()))?
        .map_err(|e| Error::Gpu(format!("reading the output back: {e}")))?;
    let view = staging.slice(..).get_mapped_range().map_err(|e| Error::Gpu(format!("reading the output back: {e}")))?;
    let out = view.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    drop(view);
    staging.unmap();
    Ok(out)
}

/// Plans a recorded graph: pipelines, activation buffers shared by liveness, bind groups.
#[allow(clippy::too_many_arguments)]
fn make_plan(gpu: &mut Gpu, weights: &WeightSet, caches: &[Buffer], nodes: Vec<Node>, input_sizes: Vec<usize>, acts: Vec<u64>, out: Desc, kept: Option<Desc>) -> Result<Plan> {
    let max = gpu.max_binding();
    if let Some(&big) = acts.iter().find(|&&b| b > max) {
        return Err(Error::Gpu(format!(
            "an activation of {} exceeds the adapter's storage binding limit of {}: use a shorter sequence or --backend cpu",
            super::human_bytes(big),
            super::human_bytes(max)
        )));
    }
    let mut pipelines = Vec::new();
    for n in &nodes {
        if let Node::Dispatch { kernel, .. } = n {
            pipelines.push(gpu.pipeline(*kernel)?);
        }
    }
    let stores = |n: &Node| -> Vec<Store> {
        match n {
            Node::Dispatch { binds, .. } => binds.iter().filter_map(|b| if let Bind::Store(s) = b { Some(*s) } else { None }).collect(),
            Node::Copy { src, dst, .. } => vec![*src, *dst],
        }
    };
    // Last node using each activation; the output and the kept tensor live to the end (so no
    // other activation shares their buffers).
    let mut last = vec![0usize; acts.len()];
    for (i, n) in nodes.iter().enumerate() {
        for s in stores(n) {
            if let Store::Act(a) = s {
                last[a] = i;
            }
        }
    }
    for d in std::iter::once(out).chain(kept) {
        if let Store::Act(a) = d.store {
            last[a] = usize::MAX;
        }
    }
    let gpu = &*gpu;
    let device = &gpu.device;
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let buffer = |label: &str, size: u64, usage: wgpu::BufferUsages| {
        device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size: size.next_multiple_of(4).max(4), usage, mapped_at_creation: false })
    };
    gpu.checked("planning the graph", || {
        // Physical buffers: an activation takes the smallest free buffer that fits (or a new
        // one) at its first use and gives it back after its last.
        let mut phys: Vec<Buffer> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut of_act: Vec<Option<usize>> = vec![None; acts.len()];
        for (i, n) in nodes.iter().enumerate() {
            let used: Vec<usize> = stores(n).into_iter().filter_map(|s| if let Store::Act(a) = s { Some(a) } else { None }).collect();
            for &a in &used {
                if of_act[a].is_none() {
                    let fits = free.iter().enumerate().filter(|(_, &p)| phys[p].size() >= acts[a]).min_by_key(|(_, &p)| phys[p].size());
                    of_act[a] = Some(match fits.map(|(j, _)| j) {
                        Some(j) => free.swap_remove(j),
                        None => {
                            phys.push(buffer("activation", acts[a].next_multiple_of(256), storage));
                            phys.len() - 1
                        }
                    });
                }
            }
            for &a in &used {
                if last[a] == i && !free.contains(&of_act[a].expect("assigned above")) {
                    free.push(of_act[a].expect("assigned above"));
                }
            }
        }
        let inputs: Vec<Buffer> = input_sizes.iter().map(|&n| buffer("input", (n * 4) as u64, storage)).collect();
        let buffer_of = |s: Store| -> Buffer {
            match s {
                Store::Act(a) => phys[of_act[a].expect("every activation is used by a node")].clone(),
                Store::Cache(c) => caches[c].clone(),
                Store::Input(i) => inputs[i].clone(),
                Store::Weight(_) => unreachable!("weights are bound by chunk"),
            }
        };
        let n_dispatch = pipelines.len();
        let mut params = vec![0u8; n_dispatch.max(1) * 256];
        let uniforms = buffer("params", params.len() as u64, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST);
        let mut steps = Vec::with_capacity(nodes.len());
        let mut d = 0;
        for n in &nodes {
            match n {
                Node::Copy { src, src_off, dst, dst_off, bytes } => {
                    steps.push(Step::Copy(buffer_of(*src), *src_off, buffer_of(*dst), *dst_off, *bytes));
                }
                Node::Dispatch { params: p, binds, groups, .. } => {
                    params[d * 256..d * 256 + PARAMS_BYTES].copy_from_slice(p);
                    let bufs: Vec<Buffer> = binds
                        .iter()
                        .map(|b| match *b {
                            Bind::Store(s) => buffer_of(s),
                            Bind::Chunk(w, c) => weights.weights[w].chunks[c].buffer.clone(),
                        })
                        .collect();
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &uniforms, offset: (d * 256) as u64, size: std::num::NonZeroU64::new(48) }),
                    }];
                    for (j, b) in bufs.iter().enumerate() {
                        entries.push(wgpu::BindGroupEntry { binding: j as u32 + 1, resource: b.as_entire_binding() });
                    }
                    let pipe = pipelines[d].clone();
                    let bg = device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &pipe.get_bind_group_layout(0), entries: &entries });
                    steps.push(Step::Dispatch(pipe, bg, *groups));
                    d += 1;
                }
            }
        }
        gpu.queue.write_buffer(&uniforms, 0, &params);
        let out_bytes = (out.numel() * 4) as u64;
        let staging = buffer("read-back", out_bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        Plan {
            input_lens: input_sizes.clone(),
            output: (buffer_of(out.store), (out.off * 4) as u64, out_bytes),
            kept: kept.map(|d| (buffer_of(d.store), (d.off * 4) as u64, d.ne[0], d.ne[1] * d.ne[2])),
            inputs,
            steps,
            staging,
            _uniforms: uniforms,
            _acts: phys,
        }
    })
}

impl Engine for Executor {
    type T = GpuTensor;
    type Builder<'a> = Recorder<'a>;

    /// `graph_size` does not apply: plans grow as needed.
    fn run(&mut self, key: &GraphKey, inputs: &[&[i32]], build: impl FnOnce(&mut Recorder<'_>) -> GpuTensor) -> Result<Vec<f32>> {
        Executor::run(self, key, inputs, build)
    }

    fn plans_built(&self) -> usize {
        self.plans.built()
    }

    fn read_kept(&mut self, rows: &[usize]) -> Result<Vec<f32>> {
        Executor::read_kept(self, rows)
    }

    fn kv_cache(&mut self, id: CacheId, layers: usize, head_dim: usize, n_head_kv: usize, total: usize) -> Result<Vec<LayerKv<GpuTensor>>> {
        Executor::kv_cache(self, id, layers, head_dim, n_head_kv, total)
    }
    fn free_kv(&mut self, id: CacheId) {
        Executor::free_kv(self, id)
    }
}
