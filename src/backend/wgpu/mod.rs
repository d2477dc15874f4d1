//! Our own GPU backend through wgpu (Vulkan, Metal, DX12), for machines where no ggml GPU
//! backend is compiled in. Kernels are WGSL files in `kernels/`, embedded at build time.
//!
//! - [`Gpu`]: an adapter and its device, plus the compiled pipelines ([`kernels`]).
//! - [`WeightSet`] (weights.rs): every tensor uploaded once, in a layout the kernels read.
//! - [`Executor`] (exec.rs): implements [`crate::graph::Ops`] by recording dispatches; a graph
//!   is planned once per shape (buffers assigned by liveness, bind groups made), then each run
//!   writes the inputs, submits every dispatch at once and reads back only the output.

mod exec;
mod kernels;
mod params;
mod weights;

use std::collections::HashMap;
use std::sync::Arc;

pub use exec::{Executor, GpuTensor, Recorder};
pub use weights::WeightSet;

use crate::error::{Error, Result};

/// What `--list-devices` shows of an adapter.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Position in [`adapters`]' list (what `--device` takes).
    pub index: usize,
    pub name: String,
    /// "Vulkan", "Metal", "Dx12".
    pub api: String,
    /// "discrete GPU", "integrated GPU", "virtual GPU", "CPU (software)", "other".
    pub kind: String,
    pub driver: String,
    /// Whether this is a software rasterizer (lavapipe/llvmpipe, WARP, SwiftShader).
    pub software: bool,
    /// The largest storage binding a kernel may read (bytes).
    pub max_binding: u64,
    /// Whether the adapter offers subgroup operations (wgpu's `SUBGROUP`): the few-column
    /// matmul then reduces in registers.
    pub subgroups: bool,
    /// Whether the adapter offers f16 arithmetic in shaders (`SHADER_F16`).
    pub f16: bool,
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    // GL lacks what the kernels need (and falls back silently); the native APIs are enough.
    desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
    wgpu::Instance::new(desc)
}

fn summary(index: usize, a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Cpu => "CPU (software)",
        wgpu::DeviceType::Other => "other",
    };
    let driver = [info.driver.as_str(), info.driver_info.as_str()].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(" ");
    AdapterSummary {
        index,
        name: info.name.clone(),
        api: format!("{:?}", info.backend),
        kind: kind.into(),
        driver,
        software: info.device_type == wgpu::DeviceType::Cpu,
        max_binding: a.limits().max_storage_buffer_binding_size,
        subgroups: a.features().contains(wgpu::Features::SUBGROUP),
        f16: a.features().contains(wgpu::Features::SHADER_F16),
    }
}

fn enumerate() -> Vec<wgpu::Adapter> {
    let mut list = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()));
    // Hardware first (discrete, integrated, virtual), software last; stable within a kind.
    list.sort_by_key(|a| match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    });
    list
}

/// Every adapter wgpu finds, hardware first.
pub fn adapters() -> Vec<AdapterSummary> {
    enumerate().iter().enumerate().map(|(i, a)| summary(i, a)).collect()
}

/// A device on one adapter, with the pipelines compiled so far.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    adapter: AdapterSummary,
    limits: wgpu::Limits,
    binding_cap: u64,
    /// Whether the device was opened with subgroups, which kernels then use.
    pub(crate) subgroups: bool,
    /// Whether matmuls of few columns take the row-per-workgroup kernel (else the tiled one).
    pub(crate) matvec: bool,
    /// Whether the device was opened with SHADER_F16 and tiled matmuls use f16 tiles.
    pub(crate) f16: bool,
    pipelines: HashMap<String, Arc<wgpu::ComputePipeline>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("adapter", &self.adapter).finish()
    }
}

impl Gpu {
    /// Opens adapter `index` of [`adapters`], or with `None` the first hardware adapter (and a
    /// software one only when `allow_software`), with every optional feature the kernels can use
    /// that the adapter offers, unless the environment sets `DLM_WGPU_PLAIN=1` (the portable
    /// kernels only: for a driver whose subgroup support misbehaves).
    pub fn open(index: Option<usize>, allow_software: bool) -> Result<Gpu> {
        let plain = std::env::var_os("DLM_WGPU_PLAIN").is_some_and(|v| v != "0" && !v.is_empty());
        Self::open_with(index, allow_software, !plain)
    }

    /// [`Gpu::open`], with the optional features (`SUBGROUP`, `SHADER_F16`) only when `optional`.
    pub fn open_with(index: Option<usize>, allow_software: bool, optional: bool) -> Result<Gpu> {
        let list = enumerate();
        let pick = match index {
            Some(i) => list.get(i).ok_or_else(|| {
                Error::Gpu(format!("no wgpu adapter {i}: {} found (see --list-devices)", list.len()))
            })?,
            None => list
                .iter()
                .find(|a| allow_software || a.get_info().device_type != wgpu::DeviceType::Cpu)
                .ok_or_else(|| Error::Gpu(if list.is_empty() {
                    "no wgpu adapter found (no Vulkan, Metal or DX12 driver; on Debian a software one is in mesa-vulkan-drivers)".into()
                } else {
                    "only software wgpu adapters found (the ggml CPU backend is faster than those)".into()
                }))?,
        };
        let adapter = summary(list.iter().position(|a| std::ptr::eq(a, pick)).unwrap_or(0), pick);
        // Everything the adapter offers: large storage bindings keep big weights in one piece.
        let limits = pick.limits();
        let optional_features = wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16;
        let features = if optional { pick.features() & optional_features } else { wgpu::Features::empty() };
        let desc = wgpu::DeviceDescriptor {
            label: Some("dlm"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(pick.request_device(&desc))
            .map_err(|e| Error::Gpu(format!("{}: cannot open the device: {e}", adapter.name)))?;
        let subgroups = features.contains(wgpu::Features::SUBGROUP);
        let f16 = features.contains(wgpu::Features::SHADER_F16);
        Ok(Gpu { device, queue, adapter, limits, binding_cap: u64::MAX, subgroups, matvec: true, f16, pipelines: HashMap::new() })
    }

    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// Whether kernels use subgroup operations on this device.
    pub fn uses_subgroups(&self) -> bool {
        self.subgroups
    }

    /// With `false`, matmuls of few columns run the tiled kernel too: for benchmarks and tests
    /// that compare the two.
    pub fn use_matvec(&mut self, on: bool) {
        self.matvec = on;
    }

    /// Whether tiled matmuls of quantized and f16 weights keep their tiles in f16.
    pub fn uses_f16(&self) -> bool {
        self.f16
    }

    /// With `false`, tiled matmuls keep f32 tiles even where the device offers f16 (for
    /// benchmarks and tests that compare the two).
    pub fn use_f16(&mut self, on: bool) {
        self.f16 &= on;
    }

    /// The largest buffer a kernel may bind (bytes, a multiple of 4).
    pub fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size).min(self.binding_cap) & !3
    }

    /// Caps the binding size below the adapter's: weights are then split into smaller chunks
    /// and longer sequences are refused sooner. For tests of the chunked paths (a small
    /// adapter rehearsed on a large one).
    pub fn cap_binding(&mut self, bytes: u64) {
        self.binding_cap = bytes.max(256);
    }

    /// Runs `f` and turns any wgpu validation or out-of-memory error it raised into an error.
    pub(crate) fn checked<R>(&self, what: &str, f: impl FnOnce() -> R) -> Result<R> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let r = f();
        let e1 = pollster::block_on(invalid.pop());
        let e2 = pollster::block_on(oom.pop());
        match e1.or(e2) {
            Some(e) => Err(Error::Gpu(format!("{} ({what}): {e}", self.adapter.name))),
            None => Ok(r),
        }
    }
}

/// `1.5 GiB`, `12.0 MiB`, `16 KiB`, `100 B`.
pub(crate) fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}
