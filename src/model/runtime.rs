//! A loaded model: weights as backend tensors (ggml CPU/GPU or wgpu), `forward(tokens) -> logits`.

use crate::sample::{RowCandidates, RowStats};
use std::path::Path;

use crate::backend::ggml::{Executor, TensorRef, Weights};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::graph::{CacheId, Engine, GraphKey, GraphKind, Ops, PassKind, Reduce, SeqShape};
use super::{load_network, DiffusionOverrides, DiffusionParams, Hparams, Inputs, Kv, Network, SeqKv};
use crate::generate::{Pass, SeqPass};

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// CPU threads for compute.
    pub threads: usize,
    /// Overrides the file's diffusion settings (mask id, shifted logits, attention mask); a
    /// setting neither overridden nor in the file takes the architecture's default (see
    /// [`DiffusionParams`]), exactly as `dlm-run` does.
    pub diffusion: DiffusionOverrides,
    /// Copy matmul weights whose type has interleaved CPU kernels (Q4_0, Q4_K, IQ4_NL on AVX2)
    /// into ggml's repacked layout at load: faster matmuls for one extra copy of those weights
    /// in RAM. Off: every weight is used in place from the memory map.
    pub repack: bool,
    /// Bidirectional attention through ggml's flash attention (the default) rather than
    /// explicit scores and soft-max (what llama.cpp runs with flash attention off).
    pub flash_attn: bool,
    /// Where the forward pass runs. The library's default is the CPU; `dlm-run` defaults to
    /// [`Backend::Auto`].
    pub backend: Backend,
    /// Which device of the GPU backend (its index among that backend's devices in
    /// `--list-devices`); `None`: the first hardware one.
    pub device: Option<usize>,
    /// Layers whose weights go to the GPU with a ggml GPU backend, counted from the last
    /// layer as in llama.cpp; the LM head goes too when every layer does. `None`: all.
    pub n_gpu_layers: Option<usize>,
    /// Planned graphs kept for reuse (at least 1). Block decoding with a cache alternates
    /// graphs; each kept one holds its own activation memory.
    pub max_graphs: usize,
    /// Check every tensor's values before loading ([`super::check_values`]: floats and block
    /// scales finite; about 5 % of one 128-token pass). Norm weights and biases are checked
    /// either way.
    pub check_values: bool,
    /// RPC servers (`HOST:PORT`, `dlm-rpc-server` or llama.cpp's `rpc-server`) whose devices
    /// run layers as local GPUs do, before a local ggml GPU if one is used: the offloaded
    /// layers (`n_gpu_layers`) are split among all devices by `tensor_split`.
    pub rpc: Vec<String>,
    /// Share of the offloaded layers each device gets, in device order (RPC servers' devices,
    /// then the local GPU), as llama.cpp's `--tensor-split`; missing entries are 0. Empty: in
    /// proportion to each device's free memory.
    pub tensor_split: Vec<f32>,
    /// The longest a load or a forward pass through RPC servers may take before the process
    /// ends with an error (ggml-rpc itself waits forever on a server that stops answering).
    pub rpc_timeout: std::time::Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            diffusion: DiffusionOverrides::default(),
            repack: true,
            flash_attn: true,
            backend: Backend::Cpu,
            device: None,
            n_gpu_layers: None,
            max_graphs: crate::graph::PlanCache::<()>::DEFAULT_CAPACITY,
            check_values: true,
            rpc: Vec::new(),
            tensor_split: Vec::new(),
            rpc_timeout: std::time::Duration::from_secs(600),
        }
    }
}

/// Compute backends a model can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The first device of a compiled-in ggml GPU backend; else a GPU through wgpu when a
    /// hardware adapter exists (never a software rasterizer such as lavapipe: ggml's CPU
    /// kernels are much faster); else the CPU.
    Auto,
    /// ggml's CUDA backend (built with the `cuda` feature).
    Cuda,
    /// ggml's Metal backend (built with the `metal` feature).
    Metal,
    /// ggml's Vulkan backend (built with the `vulkan` feature).
    Vulkan,
    /// ggml's CPU kernels.
    Cpu,
    /// Our WGSL kernels through wgpu (Vulkan, Metal, DX12); software adapters allowed when
    /// asked for by index or when no hardware one exists.
    Wgpu,
    /// Devices of other machines through ggml's RPC backend ([`LoadOptions::rpc`]), with this
    /// machine's CPU (and GPU, if one is used) for the rest: what [`Model::backend`] says of
    /// such a model; not something to ask for.
    Rpc,
}

impl Backend {
    /// The ggml registry name of a ggml GPU backend.
    fn ggml_api(self) -> Option<&'static str> {
        match self {
            Backend::Cuda => Some("CUDA"),
            Backend::Metal => Some("Metal"),
            Backend::Vulkan => Some("Vulkan"),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Cuda => "cuda",
            Backend::Metal => "metal",
            Backend::Vulkan => "vulkan",
            Backend::Cpu => "cpu",
            Backend::Wgpu => "wgpu",
            Backend::Rpc => "rpc",
        }
    }
}

/// A network on one backend with its executor: what [`Model`] runs, whichever backend.
trait Runner: Send {
    /// Logits of the sequences `seqs` in one pass, or each row reduced as `reduce` says
    /// ([`Reduce::Candidates`] at `inv_temp[i]` for sequence `i`); `kv_for` holds how many
    /// tokens each cache stores.
    fn forward_seqs(&mut self, kv_for: &mut KvFor, seqs: &[SeqPass<'_>], reduce: Reduce, inv_temp: &[f32]) -> Result<Vec<f32>>;
    /// Rows of the logits the last pass kept ([`Reduce::Candidates`]).
    fn read_kept(&mut self, rows: &[usize]) -> Result<Vec<f32>>;
    /// Frees the key/value cache `id`.
    fn free_kv(&mut self, id: CacheId);
    /// Which backend runs the forward pass, in words.
    fn description(&self) -> String;
    fn backend(&self) -> Backend;
    /// Device memory of a wgpu GPU: (weights, activations and caches).
    fn device_memory(&self) -> Option<(u64, u64)> {
        None
    }
    /// Weight matrices in ggml's repacked CPU layout.
    fn repacked(&self) -> usize {
        0
    }
    fn plans_built(&self) -> usize;
}

/// ggml's CPU backend, or a ggml GPU backend's device through its scheduler.
struct OnGgml {
    // Field order is drop order: graphs, then the network's handles, then the weight tensors
    // they point to (the map outlives all three: it is the model's `gguf`).
    executor: Executor,
    net: Box<dyn Network<TensorRef>>,
    weights: Weights,
    /// The ggml GPU backend's name ("CUDA", "Vulkan", "RPC" with any RPC device) when the
    /// engine runs on devices.
    api: Option<String>,
    /// With RPC devices: the longest a pass may take (see [`LoadOptions::rpc_timeout`]).
    #[cfg_attr(not(feature = "rpc"), allow(dead_code))]
    rpc_timeout: Option<std::time::Duration>,
    // Last: armed while the other fields drop (freeing remote buffers talks to the servers).
    #[cfg(feature = "rpc")]
    teardown: Option<crate::backend::ggml::rpc::Watchdog>,
}

impl OnGgml {
    /// Watches a pass through RPC servers (nothing without them).
    fn watch(&self) -> Option<impl Drop> {
        #[cfg(feature = "rpc")]
        return self.rpc_timeout.map(|t| crate::backend::ggml::rpc::Watchdog::arm("running a forward pass", t));
        #[cfg(not(feature = "rpc"))]
        None::<std::rc::Rc<()>>
    }
}

impl Drop for OnGgml {
    fn drop(&mut self) {
        #[cfg(feature = "rpc")]
        if let Some(t) = self.rpc_timeout {
            self.teardown = Some(crate::backend::ggml::rpc::Watchdog::arm("freeing the model's buffers on the servers", t));
        }
    }
}

impl Runner for OnGgml {
    fn forward_seqs(&mut self, kv_for: &mut KvFor, seqs: &[SeqPass<'_>], reduce: Reduce, inv_temp: &[f32]) -> Result<Vec<f32>> {
        let _watch = self.watch();
        forward_seqs_on(&mut self.executor, self.net.as_ref(), kv_for, seqs, reduce, inv_temp)
    }
    fn read_kept(&mut self, rows: &[usize]) -> Result<Vec<f32>> {
        let _watch = self.watch();
        self.executor.read_kept(rows)
    }
    fn free_kv(&mut self, id: CacheId) {
        let _watch = self.watch();
        self.executor.free_kv(id)
    }
    fn description(&self) -> String {
        match (self.executor.device_name(), &self.api) {
            (Some(devs), Some(api)) => format!("ggml {api} ({devs}, {} tensors in device memory)", self.weights.n_offloaded()),
            _ => "cpu (ggml)".into(),
        }
    }
    fn backend(&self) -> Backend {
        match self.api.as_deref() {
            Some("CUDA") => Backend::Cuda,
            Some("Metal") => Backend::Metal,
            Some("RPC") => Backend::Rpc,
            Some(_) => Backend::Vulkan,
            None => Backend::Cpu,
        }
    }
    fn repacked(&self) -> usize {
        self.weights.n_repacked()
    }
    fn plans_built(&self) -> usize {
        self.executor.plans_built()
    }
}

/// Our WGSL kernels through wgpu.
#[cfg(feature = "wgpu")]
struct OnWgpu {
    executor: crate::backend::wgpu::Executor,
    net: Box<dyn Network<crate::backend::wgpu::GpuTensor>>,
}

#[cfg(feature = "wgpu")]
impl Runner for OnWgpu {
    fn forward_seqs(&mut self, kv_for: &mut KvFor, seqs: &[SeqPass<'_>], reduce: Reduce, inv_temp: &[f32]) -> Result<Vec<f32>> {
        forward_seqs_on(&mut self.executor, self.net.as_ref(), kv_for, seqs, reduce, inv_temp)
    }
    fn read_kept(&mut self, rows: &[usize]) -> Result<Vec<f32>> {
        self.executor.read_kept(rows)
    }
    fn free_kv(&mut self, id: CacheId) {
        self.executor.free_kv(id)
    }
    fn description(&self) -> String {
        let a = self.executor.gpu().adapter();
        format!("wgpu ({}, {}, {})", a.name, a.api, a.kind)
    }
    fn backend(&self) -> Backend {
        Backend::Wgpu
    }
    fn device_memory(&self) -> Option<(u64, u64)> {
        Some(self.executor.device_bytes())
    }
    fn plans_built(&self) -> usize {
        self.executor.plans_built()
    }
}

/// A loaded model on one backend. `Send`: a server thread can own one.
pub struct Model {
    // Field order is drop order: the runner (graphs, weights) before the map it points into.
    runner: Box<dyn Runner>,
    /// Per key/value cache, the sequence length it holds a full pass of.
    kv_for: KvFor,
    params: Hparams,
    diffusion: DiffusionParams,
    gguf: Gguf,
    warnings: Vec<String>,
    /// [`Model::set_device_candidates`]; `None`: by backend.
    device_candidates: Option<bool>,
    /// Bytes of pass results brought back from the backend so far ([`Model::bytes_read_back`]).
    read_back: u64,
    /// Rows of the last pass when it was [`Model::forward_seqs_candidates`] (what
    /// [`Model::read_kept_rows`] may read); `None` after any other pass.
    kept_rows: Option<usize>,
}

// A server thread can own a model: checked at compile time.
const _: () = {
    const fn send<T: Send>() {}
    send::<Model>();
};

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("path", &self.gguf.path()).field("backend", &self.backend_description()).field("params", &self.params).finish()
    }
}

impl Model {
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Model> {
        Self::from_gguf(Gguf::open(path)?, opts)
    }

    /// Loads from an already opened file (to inspect its metadata first).
    pub fn from_gguf(gguf: Gguf, opts: &LoadOptions) -> Result<Model> {
        // Names, shapes and types first: nothing is mapped, uploaded or built for a bad file.
        let super::Checked { params, diffusion, unused, warnings } = super::check(&gguf, &opts.diffusion)?;
        if opts.check_values {
            super::check_values(&gguf)?;
        }
        let runner = Self::on_backend(&gguf, &params, opts, &unused)?;
        Ok(Model { runner, kv_for: KvFor::default(), params, diffusion, gguf, warnings, device_candidates: None, read_back: 0, kept_rows: None })
    }

    fn on_backend(gguf: &Gguf, params: &Hparams, opts: &LoadOptions, unused: &[String]) -> Result<Box<dyn Runner>> {
        let mut devices = Vec::new();
        if !opts.rpc.is_empty() && opts.n_gpu_layers != Some(0) {
            if opts.backend == Backend::Wgpu {
                return Err(Error::Invalid("--rpc runs layers through ggml's backends; the wgpu backend cannot share a model with them (use --backend auto, cpu, cuda, metal or vulkan)".into()));
            }
            devices.extend(crate::backend::ggml::rpc_devices(&opts.rpc, opts.rpc_timeout)?);
        }
        devices.extend(Self::ggml_device(opts)?);
        if !devices.is_empty() {
            check_weight_types(gguf, params, unused, true)?;
            return Self::ggml_gpu(gguf, params, opts, &devices);
        }
        if !opts.tensor_split.is_empty() {
            return Err(Error::Invalid("--tensor-split: no devices to split layers between (it needs --rpc or a ggml GPU backend)".into()));
        }
        let runner: Option<Box<dyn Runner>> = match opts.backend {
            Backend::Cpu | Backend::Cuda | Backend::Metal | Backend::Vulkan | Backend::Rpc => None,
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Some(Self::wgpu_runner(crate::backend::wgpu::Gpu::open(opts.device, true)?, gguf, params, unused, opts.max_graphs)?),
            #[cfg(feature = "wgpu")]
            Backend::Auto => match crate::backend::wgpu::Gpu::open(opts.device, opts.device.is_some()) {
                Ok(gpu) => Some(Self::wgpu_runner(gpu, gguf, params, unused, opts.max_graphs)?),
                Err(_) => None, // no hardware adapter: the CPU
            },
            #[cfg(not(feature = "wgpu"))]
            Backend::Wgpu => return Err(Error::Invalid("this build has no wgpu backend (built without the `wgpu` feature)".into())),
            #[cfg(not(feature = "wgpu"))]
            Backend::Auto => None,
        };
        if let Some(r) = runner {
            return Ok(r);
        }
        check_weight_types(gguf, params, unused, true)?;
        // The embedding is read by row lookups, which need the file's layout; every other
        // matrix is only ever the weight of a matmul.
        let weights = Weights::map(gguf, |t| opts.repack && !super::is_lookup_table(&t.name))?;
        let (net, _) = load_network(gguf, params.clone(), &|name| weights.get(name))?;
        let executor = Executor::cpu(opts.threads, opts.flash_attn)?.with_plan_capacity(opts.max_graphs);
        Ok(Box::new(OnGgml {
            executor,
            net,
            weights,
            api: None,
            rpc_timeout: None,
            #[cfg(feature = "rpc")]
            teardown: None,
        }))
    }
    /// The ggml GPU device `opts` asks for: for Cuda/Metal/Vulkan that backend's device (an
    /// error when the build or the machine has none); for Auto the first of any.
    fn ggml_device(opts: &LoadOptions) -> Result<Option<crate::backend::ggml::GgmlDevice>> {
        if opts.n_gpu_layers == Some(0) || !matches!(opts.backend, Backend::Auto | Backend::Cuda | Backend::Metal | Backend::Vulkan) {
            return Ok(None);
        }
        let all = crate::backend::ggml::gpu_devices();
        let Some(api) = opts.backend.ggml_api() else {
            // Auto: the first ggml GPU backend's device `--device` (default 0) when one exists;
            // with none, `--device` indexes wgpu's adapters. Software devices are skipped.
            let all: Vec<_> = all.into_iter().filter(|d| !d.is_software()).collect();
            let Some(api) = all.first().map(|d| d.api.clone()) else { return Ok(None) };
            let i = opts.device.unwrap_or(0);
            let of_api: Vec<_> = all.into_iter().filter(|d| d.api == api).collect();
            let n = of_api.len();
            return of_api.into_iter().nth(i).map(Some).ok_or_else(|| Error::Invalid(format!("no {api} device {i}: {n} found (see --list-devices)")));
        };
        let feature = opts.backend.name();
        let of_api: Vec<_> = all.into_iter().filter(|d| d.api == api).collect();
        if of_api.is_empty() {
            let built = match opts.backend {
                Backend::Cuda => cfg!(feature = "cuda"),
                Backend::Metal => cfg!(feature = "metal"),
                _ => cfg!(feature = "vulkan"),
            };
            return Err(Error::Invalid(if built {
                format!("ggml's {api} backend found no device (see --list-devices)")
            } else {
                format!("this build has no {api} backend: rebuild with `cargo build --release --features {feature}`")
            }));
        }
        let i = opts.device.unwrap_or(0);
        let n = of_api.len();
        of_api.into_iter().nth(i).map(Some).ok_or_else(|| Error::Invalid(format!("no {api} device {i}: {n} found (see --list-devices)")))
    }

    /// Loads onto ggml devices (GPUs, local or behind RPC servers): the last `n_gpu_layers`
    /// layers' weights (and the LM head when all are) in device memory, split among the
    /// devices by [`layer_devices`], the rest used in place from the map; each layer's
    /// key/value cache with its weights; graphs split by ggml's scheduler between the devices
    /// and the CPU.
    fn ggml_gpu(gguf: &Gguf, params: &Hparams, opts: &LoadOptions, devs: &[crate::backend::ggml::GgmlDevice]) -> Result<Box<dyn Runner>> {
        let n_layer = params.n_layer;
        let ngl = opts.n_gpu_layers.unwrap_or(n_layer).min(n_layer);
        if devs.len() > 15 {
            return Err(Error::Invalid(format!("{} devices (--rpc servers' and this machine's): a model runs on at most 15 besides the CPU", devs.len())));
        }
        let places = layer_devices(n_layer, ngl, devs, &opts.tensor_split)?;
        let rpc_timeout = devs.iter().any(|d| d.api == "RPC").then_some(opts.rpc_timeout);
        #[cfg(feature = "rpc")]
        let _watch = rpc_timeout.map(|t| crate::backend::ggml::rpc::Watchdog::arm("loading the weights onto the servers", t));
        let head = if ngl == n_layer { places.last().copied().flatten() } else { None };
        let offload = |t: &crate::gguf::TensorInfo| -> Option<usize> {
            let name = t.name.as_str();
            match super::layer_of(name) {
                Some(layer) => places.get(layer).copied().flatten(),
                // The embedding is a row lookup: it stays in host memory, as in llama.cpp.
                None if name == "token_embd.weight" => None,
                None => head,
            }
        };
        let bufts: Vec<_> = devs.iter().map(crate::backend::ggml::device_buffer_type).collect();
        let weights = Weights::map_offload(gguf, |t| opts.repack && !super::is_lookup_table(&t.name), Some((&bufts, &offload)))?;
        let (net, _) = load_network(gguf, params.clone(), &|name| weights.get(name))?;
        let executor = Executor::on_devices(opts.threads, opts.flash_attn, devs)?.with_plan_capacity(opts.max_graphs).with_kv_places(places);
        let api = if rpc_timeout.is_some() { "RPC".to_string() } else { devs[0].api.clone() };
        Ok(Box::new(OnGgml {
            executor,
            net,
            weights,
            api: Some(api),
            rpc_timeout,
            #[cfg(feature = "rpc")]
            teardown: None,
        }))
    }

    #[cfg(feature = "wgpu")]
    fn wgpu_runner(gpu: crate::backend::wgpu::Gpu, gguf: &Gguf, params: &Hparams, unused: &[String], max_graphs: usize) -> Result<Box<dyn Runner>> {
        use crate::backend::wgpu::{Executor as GpuExecutor, WeightSet};
        check_weight_types(gguf, params, unused, false)?;
        let weights = WeightSet::upload(&gpu, gguf)?;
        if !weights.converted.is_empty() {
            let types: std::collections::BTreeSet<String> = weights.converted.iter().map(|(_, t)| t.to_string()).collect();
            crate::errln!(
                "note: {} tensor(s) of type {} have no wgpu kernel; uploaded as f16 (more device memory than the file)",
                weights.converted.len(),
                types.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        let executor = GpuExecutor::new(gpu, weights).with_plan_capacity(max_graphs);
        let (net, _) = load_network(gguf, params.clone(), &|name| executor.weight(name))?;
        Ok(Box::new(OnWgpu { executor, net }))
    }

    pub fn params(&self) -> &Hparams {
        &self.params
    }

    /// The diffusion settings in effect (file keys, overrides, the family's defaults) and the
    /// family's sampling defaults.
    pub fn diffusion(&self) -> &DiffusionParams {
        &self.diffusion
    }

    /// What a user should know about the file that did not stop it from loading (one line
    /// each): tensors the graph never reads, for one.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Which backend runs the forward pass: `cpu`, or `wgpu` and the adapter.
    pub fn backend_description(&self) -> String {
        self.runner.description()
    }

    /// Device memory the model holds on a wgpu GPU: (weights, activations and caches of the last
    /// pass); `None` on ggml's backends.
    pub fn device_memory(&self) -> Option<(u64, u64)> {
        self.runner.device_memory()
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> Backend {
        self.runner.backend()
    }

    /// Weight matrices copied into ggml's repacked CPU layout at load (see [`LoadOptions::repack`]).
    pub fn repacked_tensors(&self) -> usize {
        self.runner.repacked()
    }

    /// How many graphs the backend has planned since the model was loaded: a pass whose graph
    /// is among the last few planned reuses it.
    pub fn graphs_built(&self) -> usize {
        self.runner.plans_built()
    }

    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    /// Logits for every position: `n_tokens × n_vocab`, row `i` is the output at position `i`.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.forward_rows(tokens, Pass::Full, None)
    }

    /// Logits (`rows.len() × n_vocab`, in the order of `rows`) for the positions `rows` of the
    /// sequence `tokens`, or for every computed position when `rows` is `None`. The LM head
    /// runs on those rows only. `pass` says which positions are computed, and through which
    /// key/value cache (see [`Pass`]).
    pub fn forward_rows(&mut self, tokens: &[u32], pass: Pass, rows: Option<&[usize]>) -> Result<Vec<f32>> {
        self.forward_seqs(&[SeqPass { tokens, pass, rows }])
    }

    /// [`Model::forward_rows`] with each row reduced on the backend to what a greedy sampler
    /// needs ([`RowStats`]): 20 bytes per row come back instead of `4 × n_vocab`.
    pub fn forward_rows_stats(&mut self, tokens: &[u32], pass: Pass, rows: &[usize]) -> Result<Vec<RowStats>> {
        self.forward_seqs_stats(&[SeqPass { tokens, pass, rows: Some(rows) }])
    }

    /// [`Model::forward_batch`] reduced as [`Model::forward_rows_stats`].
    pub fn forward_batch_stats(&mut self, seqs: &[&[u32]], rows: &[&[usize]]) -> Result<Vec<RowStats>> {
        self.forward_seqs_stats(&batch_of(seqs, rows)?)
    }

    /// Logits of several sequences in one pass (one read of the weights), each computing what
    /// its own [`Pass`] says through its own key/value cache, its rows in order (every computed
    /// position when `rows` is `None`), sequence after sequence. Attention stays within each
    /// sequence and each has its own positions from 0, so every sequence's logits are those of
    /// [`Model::forward_rows`] on it alone.
    pub fn forward_seqs(&mut self, seqs: &[SeqPass<'_>]) -> Result<Vec<f32>> {
        self.kept_rows = None;
        let out = self.runner.forward_seqs(&mut self.kv_for, seqs, Reduce::Logits, &[])?;
        self.read_back += 4 * out.len() as u64;
        Ok(out)
    }

    /// Bytes of results the forward passes brought back from the backend so far (logits, row
    /// statistics, candidates, kept rows read): what crosses from a GPU to the host.
    pub fn bytes_read_back(&self) -> u64 {
        self.read_back
    }

    /// [`Model::forward_seqs`] reduced as [`Model::forward_rows_stats`] (every sequence names its rows).
    pub fn forward_seqs_stats(&mut self, seqs: &[SeqPass<'_>]) -> Result<Vec<RowStats>> {
        self.check_row_stats()?;
        if seqs.iter().any(|s| s.rows.is_none()) {
            return Err(Error::Invalid("row statistics need the rows of every sequence".into()));
        }
        self.kept_rows = None;
        let raw = self.runner.forward_seqs(&mut self.kv_for, seqs, Reduce::Stats, &[])?;
        self.read_back += 4 * raw.len() as u64;
        Ok(RowStats::parse(&raw, self.params.n_vocab))
    }

    /// [`Model::forward_seqs`] with each row reduced on the backend to what a sampled step
    /// needs ([`RowCandidates`]: statistics at sequence `i`'s temperature `1 / inv_temp[i]` and
    /// the `k` largest logits, `k` capped at the vocabulary), `20 + 8k` bytes per row instead of
    /// `4 × n_vocab`. The logits stay on the backend until the next pass, for the rows the
    /// candidates cannot serve: [`Model::read_kept_rows`]. Every sequence names its rows.
    pub fn forward_seqs_candidates(&mut self, seqs: &[SeqPass<'_>], inv_temp: &[f32], k: usize) -> Result<Vec<RowCandidates>> {
        self.check_row_stats()?;
        if let Some(t) = inv_temp.iter().find(|t| !(t.is_finite() && **t > 0.0)) {
            return Err(Error::Invalid(format!("an inverse temperature of {t} (candidates need a finite temperature above 0)")));
        }
        let k = k.clamp(1, self.params.n_vocab);
        self.kept_rows = None;
        let raw = self.runner.forward_seqs(&mut self.kv_for, seqs, Reduce::Candidates { k }, inv_temp)?;
        self.read_back += 4 * raw.len() as u64;
        // A pass of no rows runs no graph: nothing of it is kept.
        self.kept_rows = Some(raw.len() / reduced_width(Reduce::Candidates { k }, self.params.n_vocab)).filter(|&n| n > 0);
        RowCandidates::parse(&raw, self.params.n_vocab, k).ok_or_else(|| Error::Invalid("the backend returned malformed row candidates".into()))
    }

    /// Logits of rows of the last [`Model::forward_seqs_candidates`] pass (indices into its
    /// rows, sequence after sequence), read from the backend: `rows.len() × n_vocab`. An error
    /// when another pass ran since.
    pub fn read_kept_rows(&mut self, rows: &[usize]) -> Result<Vec<f32>> {
        let Some(n) = self.kept_rows else {
            return Err(Error::Invalid("no logits are kept: the last pass was not a candidates pass".into()));
        };
        if let Some(&r) = rows.iter().find(|&&r| r >= n) {
            return Err(Error::Invalid(format!("row {r} of a pass of {n} rows")));
        }
        let out = self.runner.read_kept(rows)?;
        self.read_back += 4 * out.len() as u64;
        Ok(out)
    }

    /// Frees the key/value cache `id` (a sequence that has finished): its memory and the
    /// graphs that read it. A later [`Pass::Store`] under the same id starts it again.
    pub fn free_cache(&mut self, id: CacheId) {
        // The graphs reading the cache go, the last one's kept logits with them.
        self.kept_rows = None;
        self.kv_for.0.remove(&id);
        self.runner.free_kv(id);
    }

    /// Key/value caches held now (sequences that stored one and have not been freed).
    pub fn caches_held(&self) -> usize {
        self.kv_for.0.len()
    }

    /// Whether generation reduces greedy steps' logits on the backend ([`Model::forward_rows_stats`]):
    /// by default on a GPU backend (the logits would otherwise cross to the host every step), not
    /// on the CPU (they are already there, and the host sampler is exact and multi-threaded).
    pub fn device_candidates(&self) -> bool {
        self.check_row_stats().is_ok() && self.device_candidates.unwrap_or(self.runner.backend() != Backend::Cpu)
    }

    /// Row statistics carry token ids as f32: exact below 2^24 ids.
    fn check_row_stats(&self) -> Result<()> {
        if self.params.n_vocab > 1 << 24 {
            return Err(Error::Invalid(format!("a vocabulary of {} ids is too large to reduce rows on the backend (at most 2^24)", self.params.n_vocab)));
        }
        Ok(())
    }

    /// Forces [`Model::device_candidates`] on or off (`None`: the backend decides).
    pub fn set_device_candidates(&mut self, on: Option<bool>) {
        self.device_candidates = on;
    }

    /// Logits of the rows `rows[i]` of each sequence `seqs[i]` (in that order, sequence after
    /// sequence: `Σ rows[i].len() × n_vocab`). The sequences run as one batch: every matmul
    /// reads the weights once for all of them, attention stays within each sequence, and each
    /// has its own positions from 0, so every sequence's logits are those of a pass on its own.
    pub fn forward_batch(&mut self, seqs: &[&[u32]], rows: &[&[usize]]) -> Result<Vec<f32>> {
        self.forward_seqs(&batch_of(seqs, rows)?)
    }
}

/// Refuses, before anything is mapped or built, a weight whose type has no kernel: on ggml
/// (`ggml`: CPU and ggml GPU backends, which fall back to the CPU op) a matmul weight needs a
/// CPU dot product and a lookup table a dequantizer; wgpu converts types it has no kernel for
/// with ggml's dequantizer.
fn check_weight_types(gguf: &Gguf, p: &Hparams, unused: &[String], ggml: bool) -> Result<()> {
    use crate::backend::ggml::{can_dequantize, can_matmul_on_cpu};
    for t in gguf.tensors().iter().filter(|t| t.shape.len() >= 2 && !unused.contains(&t.name)) {
        let lookup_only = super::is_lookup_table(&t.name) && !(t.name == "token_embd.weight" && p.tied_output);
        let (ok, what) = if ggml && !lookup_only {
            (can_matmul_on_cpu(t.ggml_type), "matrix multiply")
        } else {
            (can_dequantize(t.ggml_type), "dequantizer")
        };
        if !ok {
            return Err(gguf.tensor_error(&t.name, format!("type {} has no {what} kernel in ggml, so no backend can run it (re-quantize the model to a weight type such as q8_0 or q4_k_m)", t.ggml_type)));
        }
    }
    Ok(())
}

/// Sequences computed in full, with their rows: what [`Model::forward_batch`] runs.
fn batch_of<'a>(seqs: &[&'a [u32]], rows: &[&'a [usize]]) -> Result<Vec<SeqPass<'a>>> {
    if seqs.is_empty() || seqs.len() != rows.len() {
        return Err(Error::Invalid(format!("a batch needs one row list per sequence ({} sequences, {} row lists)", seqs.len(), rows.len())));
    }
    Ok(seqs.iter().zip(rows).map(|(&tokens, &rows)| SeqPass { tokens, pass: Pass::Full, rows: Some(rows) }).collect())
}

/// Per key/value cache, the sequence length it holds a full pass of (set by a successful
/// [`Pass::Store`], needed by [`Pass::Reuse`]).
#[derive(Default)]
struct KvFor(std::collections::HashMap<CacheId, usize>);

/// [`Model::forward_seqs`] on one engine.
fn forward_seqs_on<E: Engine>(executor: &mut E, net: &dyn Network<E::T>, kv_for: &mut KvFor, seqs: &[SeqPass<'_>], reduce: Reduce, inv_temp: &[f32]) -> Result<Vec<f32>> {
    let p = net.hparams();
    let n_vocab = p.n_vocab;
    if seqs.is_empty() {
        return Err(Error::Invalid("a pass needs at least one sequence".into()));
    }
    let alone = seqs.len() == 1;
    let named = |i: usize, e: Error| if alone { e } else { Error::Invalid(format!("sequence {i} of the batch: {e}")) };
    if let Reduce::Candidates { .. } = reduce {
        if inv_temp.len() != seqs.len() || seqs.iter().any(|s| s.rows.is_none()) {
            return Err(Error::Invalid("candidates need every sequence's rows and temperature".into()));
        }
    }
    let mut shapes = Vec::with_capacity(seqs.len());
    let (mut ids, mut pos, mut out, mut temps) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, s) in seqs.iter().enumerate() {
        let total = s.tokens.len();
        check_tokens(s.tokens, n_vocab, net.max_positions()).map_err(|e| named(i, e))?;
        let (start, end, kind, cache) = match s.pass {
            Pass::Full => (0, total, PassKind::Full, None),
            Pass::Store { cache } => (0, total, PassKind::Store, Some(cache)),
            Pass::Reuse { cache, start, end } => {
                if p.causal {
                    // The graph masks a reused pass's scores by its own rows, not by absolute
                    // position: refused rather than computed wrongly.
                    return Err(Error::Invalid("reusing cached keys/values needs bidirectional attention (this model is causal): run without --cache".into()));
                }
                if kv_for.0.get(&cache) != Some(&total) {
                    return Err(named(i, Error::Invalid(format!("no cached keys/values for a sequence of {total} tokens: run a Pass::Store first"))));
                }
                if start >= end || end > total {
                    return Err(named(i, Error::Invalid(format!("positions {start}..{end} are not a range inside 0..{total}"))));
                }
                (start, end, PassKind::Reuse, Some(cache))
            }
        };
        if let Some(c) = cache {
            if seqs[..i].iter().any(|o| o.pass.cache() == Some(c)) {
                return Err(named(i, Error::Invalid(format!("key/value cache {c} is named by two sequences of one pass"))));
            }
        }
        // Output rows, as indices into the pass's computed rows.
        let base = ids.len();
        match s.rows {
            Some(rows) => {
                if let Some(&bad) = rows.iter().find(|&&r| r < start || r >= end) {
                    let why = if alone { format!("row {bad} is not among the computed positions {start}..{end}") } else { format!("row {bad} is outside its computed positions {start}..{end}") };
                    return Err(named(i, Error::Invalid(why)));
                }
                out.extend(rows.iter().map(|&r| (base + r - start) as i32));
                if let Some(&t) = inv_temp.get(i) {
                    temps.extend(std::iter::repeat_n(t.to_bits() as i32, rows.len()));
                }
            }
            None => out.extend((base..base + end - start).map(|r| r as i32)),
        }
        ids.extend(s.tokens[start..end].iter().map(|&t| t as i32));
        pos.extend(start as i32..end as i32);
        shapes.push(SeqShape { pass: kind, total, start, end, cache });
    }
    let n = ids.len();
    let n_rows = out.len();
    if n_rows == 0 {
        // Nothing asked for: no pass, so a storing sequence's cache is not filled either.
        for sh in shapes.iter().filter(|sh| sh.pass == PassKind::Store) {
            kv_for.0.remove(&sh.cache.expect("a storing pass has a cache"));
        }
        return Ok(Vec::new());
    }
    // One sequence asking for every computed row runs the LM head on all of them (no row
    // input); otherwise the rows, padded so that the graph is reused while masks drain.
    let out_rows = if alone && seqs[0].rows.is_none() { None } else { Some(padded_rows(out)) };
    // Until the pass succeeds: a failed (re)allocation below has already freed the old cache.
    for sh in shapes.iter().filter(|sh| sh.pass == PassKind::Store) {
        kv_for.0.remove(&sh.cache.expect("a storing pass has a cache"));
    }
    // Every cache first (allocating one may renumber the others' handles, as wgpu's do), then
    // the handles.
    for sh in &shapes {
        if let Some(id) = sh.cache {
            executor.kv_cache(id, p.n_layer, p.head_dim(), p.n_head_kv, sh.total)?;
        }
    }
    let mut caches = Vec::with_capacity(seqs.len());
    for sh in &shapes {
        caches.push(match sh.cache {
            None => Vec::new(),
            Some(id) => executor.kv_cache(id, p.n_layer, p.head_dim(), p.n_head_kv, sh.total)?,
        });
    }
    let reduce = match reduce {
        Reduce::Candidates { k } => Reduce::Candidates { k: k.clamp(1, n_vocab) },
        r => r,
    };
    let key = GraphKey { kind: GraphKind::Forward { parts: shapes.clone(), out_rows: out_rows.as_ref().map_or(0, |r| r.len()), reduce }, max_nodes: graph_size(p.n_layer, seqs.len()) };
    let mut inputs: Vec<&[i32]> = vec![&ids, &pos];
    if let Some(r) = &out_rows {
        inputs.push(r);
    }
    if let (Reduce::Candidates { .. }, Some(r)) = (reduce, &out_rows) {
        // The padding rows repeat the last row, at its temperature.
        let last = *temps.last().expect("rows were asked for");
        temps.resize(r.len(), last);
        inputs.push(&temps);
    }
    let mut logits = executor.run(&key, &inputs, |b| {
        let (t, ps) = (b.input_i32(n), b.input_i32(n));
        let rows = out_rows.as_ref().map(|r| b.input_i32(r.len()));
        let inv_t = match (reduce, &out_rows) {
            (Reduce::Candidates { .. }, Some(r)) => Some(b.input_f32(r.len())),
            _ => None,
        };
        let parts: Vec<SeqKv<'_, E::T>> = shapes
            .iter()
            .zip(&caches)
            .map(|(sh, cache)| SeqKv {
                len: sh.end - sh.start,
                kv: match sh.pass {
                    PassKind::Full => Kv::None,
                    PassKind::Store => Kv::Store(cache),
                    PassKind::Reuse => Kv::Reuse { cache, start: sh.start },
                },
            })
            .collect();
        let logits = net.forward(b, &Inputs { tokens: t, pos: ps, n, out_rows: rows, seqs: &parts });
        match (reduce, inv_t) {
            (Reduce::Stats, _) => b.row_stats(logits),
            (Reduce::Candidates { k }, Some(t)) => {
                b.keep(logits);
                b.row_candidates(logits, t, k)
            }
            _ => logits,
        }
    })?;
    for sh in shapes.iter().filter(|sh| sh.pass == PassKind::Store) {
        kv_for.0.insert(sh.cache.expect("a storing pass has a cache"), sh.total);
    }
    logits.truncate(n_rows * reduced_width(reduce, n_vocab));
    Ok(logits)
}

/// Values per row of [`Ops::row_stats`].
const ROW_STATS: usize = 5;

/// Values per row a pass returns.
fn reduced_width(reduce: Reduce, n_vocab: usize) -> usize {
    match reduce {
        Reduce::Logits => n_vocab,
        Reduce::Stats => ROW_STATS,
        Reduce::Candidates { k } => ROW_STATS + 2 * k.clamp(1, n_vocab),
    }
}

/// Tensors and nodes a forward graph may need, generously: a layer makes about 30, plus up to
/// about 17 per sequence of a batch (views, cache writes and attention) and one to join them.
fn graph_size(n_layer: usize, n_seqs: usize) -> usize {
    1024 + n_layer * (64 + 24 * n_seqs)
}

fn check_tokens(tokens: &[u32], n_vocab: usize, max_positions: Option<usize>) -> Result<()> {
    if tokens.is_empty() {
        return Err(Error::Invalid("forward needs at least one token".into()));
    }
    if let Some(max) = max_positions.filter(|&m| tokens.len() > m) {
        return Err(Error::Invalid(format!("{} tokens are more than the {max} positions this model has embeddings for", tokens.len())));
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(Error::Invalid(format!("token id {bad} is outside the {n_vocab}-token vocabulary")));
    }
    Ok(())
}

/// Output rows padded to a multiple of 16 by repeating the last one, so that the graph (built
/// per row count) is reused while masks drain. `rows` is not empty.
fn padded_rows(mut rows: Vec<i32>) -> Vec<i32> {
    let last = *rows.last().expect("not empty");
    rows.resize(rows.len().next_multiple_of(16), last);
    rows
}

/// Which device runs each of `n_layer` layers (`None`: the host): the last `ngl` go to the
/// devices `devs` in order, each taking its share of `split` (llama.cpp's `--tensor-split`:
/// missing entries 0; empty: in proportion to free memory, equal shares where no device says),
/// layer `i` of the offloaded ones to the first device whose cumulative share exceeds `i / ngl`
/// as llama.cpp assigns them.
pub fn layer_devices(n_layer: usize, ngl: usize, devs: &[crate::backend::ggml::GgmlDevice], split: &[f32]) -> Result<Vec<Option<usize>>> {
    if split.len() > devs.len() {
        return Err(Error::Invalid(format!("--tensor-split has {} values but there are {} devices ({})", split.len(), devs.len(), devs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", "))));
    }
    if let Some(v) = split.iter().find(|v| !v.is_finite() || **v < 0.0) {
        return Err(Error::Invalid(format!("--tensor-split: each share must be a finite number >= 0, got {v} (a value beyond f32's range reads as inf)")));
    }
    let mut shares: Vec<f64> = if split.is_empty() { devs.iter().map(|d| d.memory_free as f64).collect() } else { (0..devs.len()).map(|i| split.get(i).map_or(0.0, |&v| v as f64)).collect() };
    let total: f64 = shares.iter().sum();
    if total <= 0.0 {
        if !split.is_empty() {
            return Err(Error::Invalid("--tensor-split: every share is 0".into()));
        }
        shares = vec![1.0; devs.len()];
    }
    let total: f64 = shares.iter().sum();
    let mut cum = Vec::with_capacity(shares.len());
    let mut acc = 0.0;
    for s in &shares {
        acc += s / total;
        cum.push(acc);
    }
    let ngl = ngl.min(n_layer);
    let first = n_layer - ngl;
    Ok((0..n_layer)
        .map(|il| {
            if il < first {
                return None;
            }
            let x = (il - first) as f64 / ngl as f64;
            Some(cum.iter().position(|&c| c > x).unwrap_or(devs.len() - 1))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ggml::GgmlDevice;

    fn devs(free: &[u64]) -> Vec<GgmlDevice> {
        free.iter()
            .enumerate()
            .map(|(i, &f)| GgmlDevice { source: crate::backend::ggml::device::Source::Registry(i), api: "RPC".into(), name: format!("RPC{i}"), description: String::new(), memory_free: f, memory_total: f })
            .collect()
    }

    #[test]
    fn layers_split_as_llama_cpp_splits_them() {
        let two = devs(&[8, 8]);
        assert_eq!(layer_devices(4, 4, &two, &[1.0, 1.0]).unwrap(), [Some(0), Some(0), Some(1), Some(1)]);
        assert_eq!(layer_devices(4, 4, &two, &[3.0, 1.0]).unwrap(), [Some(0), Some(0), Some(0), Some(1)]);
        // Missing shares are 0; only the last ngl layers leave the host.
        assert_eq!(layer_devices(4, 2, &two, &[1.0]).unwrap(), [None, None, Some(0), Some(0)]);
        assert_eq!(layer_devices(4, 0, &two, &[]).unwrap(), [None; 4]);
        // Default: by free memory, equal shares where no device says.
        assert_eq!(layer_devices(4, 4, &devs(&[1, 3]), &[]).unwrap(), [Some(0), Some(1), Some(1), Some(1)]);
        assert_eq!(layer_devices(2, 2, &devs(&[0, 0]), &[]).unwrap(), [Some(0), Some(1)]);
        assert_eq!(layer_devices(3, 9, &two, &[0.0, 1.0]).unwrap(), [Some(1); 3]);
        for bad in [&[1.0, 1.0, 1.0][..], &[-1.0], &[f32::NAN], &[f32::INFINITY], &[0.0, 0.0]] {
            assert!(layer_devices(4, 4, &two, bad).is_err(), "{bad:?}");
        }
    }
}
