//! The kernel registry: WGSL sources embedded from `kernels/`, composed (a weight loader in
//! front of the kernels that read weights, sizes substituted) and compiled once per variant.

use std::sync::Arc;

use super::params::{self, KernelParams};
use super::Gpu;
use crate::error::Result;
use crate::gguf::GgmlType;

// Each kernel's source is the one its typed parameters mirror (params.rs).
const MATMUL: &str = <params::MatMul as KernelParams>::SOURCE;
const MATVEC: &str = <params::MatVec as KernelParams>::SOURCE;
const GET_ROWS: &str = <params::GetRows as KernelParams>::SOURCE;
const RMS_NORM: &str = <params::RmsNorm as KernelParams>::SOURCE;
const ROW_STATS: &str = <params::RowStats as KernelParams>::SOURCE;
const ROW_CANDIDATES: &str = <params::RowCandidates as KernelParams>::SOURCE;
/// One row's statistics, shared by [`ROW_STATS`] and [`ROW_CANDIDATES`].
const ROW_STATS_FN: &str = include_str!("../../../kernels/row_stats_fn.wgsl");
/// Workgroup tree reductions shared by [`RMS_NORM`], [`ROW_STATS`] and [`ROW_CANDIDATES`].
const REDUCE: &str = include_str!("../../../kernels/reduce.wgsl");
const ELEMENTWISE: &str = <params::Elementwise as KernelParams>::SOURCE;
const ROPE: &str = <params::Rope as KernelParams>::SOURCE;
const SLICE: &str = <params::Slice as KernelParams>::SOURCE;
const ATTENTION: &str = <params::Attention as KernelParams>::SOURCE;

/// How a tensor is laid out in device memory: what `w_load4` of its loader reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    IQ4NL,
}

/// How a quantized layout's blocks go to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// Blocks copied as they are (their size is a multiple of 4 bytes, every field aligned).
    Whole,
    /// The block's f16 scale (at its start or its end) moved behind all the blocks, two per
    /// word, so the rest of each block is whole words: no padding, the file's size on the device.
    SplitScale { at_start: bool },
}

impl Layout {
    /// The device layout for a file type, or `None` when the type has no kernel (such weights
    /// are converted to f16 at upload).
    pub fn of(t: GgmlType) -> Option<Layout> {
        Some(match t {
            GgmlType::F32 => Layout::F32,
            GgmlType::F16 => Layout::F16,
            GgmlType::Q4_0 => Layout::Q4_0,
            GgmlType::Q4_1 => Layout::Q4_1,
            GgmlType::Q5_0 => Layout::Q5_0,
            GgmlType::Q5_1 => Layout::Q5_1,
            GgmlType::Q8_0 => Layout::Q8_0,
            GgmlType::Q2_K => Layout::Q2K,
            GgmlType::Q3_K => Layout::Q3K,
            GgmlType::Q4_K => Layout::Q4K,
            GgmlType::Q5_K => Layout::Q5K,
            GgmlType::Q6_K => Layout::Q6K,
            GgmlType::IQ4_NL => Layout::IQ4NL,
            _ => return None,
        })
    }

    /// A quantized layout's values per block, bytes per block (as in the file) and packing;
    /// `None` for f32 and f16 rows.
    pub fn blocks(self) -> Option<(usize, usize, Packing)> {
        use Packing::*;
        Some(match self {
            Layout::F32 | Layout::F16 => return None,
            Layout::Q4_0 => (32, 18, SplitScale { at_start: true }),
            Layout::Q4_1 => (32, 20, Whole),
            Layout::Q5_0 => (32, 22, SplitScale { at_start: true }),
            Layout::Q5_1 => (32, 24, Whole),
            Layout::Q8_0 => (32, 34, SplitScale { at_start: true }),
            Layout::Q2K => (256, 84, Whole),
            Layout::Q3K => (256, 110, SplitScale { at_start: false }),
            Layout::Q4K => (256, 144, Whole),
            Layout::Q5K => (256, 176, Whole),
            Layout::Q6K => (256, 210, SplitScale { at_start: false }),
            Layout::IQ4NL => (32, 18, SplitScale { at_start: true }),
        })
    }

    /// The loader's source (with what it shares with other loaders).
    fn loader(self) -> String {
        const K_SCALES: &str = include_str!("../../../kernels/k_scale_min.wgsl");
        match self {
            Layout::Q4K | Layout::Q5K => format!("{K_SCALES}\n{}", self.own_loader()),
            _ => self.own_loader().to_owned(),
        }
    }

    fn own_loader(self) -> &'static str {
        match self {
            Layout::F32 => include_str!("../../../kernels/load_f32.wgsl"),
            Layout::F16 => include_str!("../../../kernels/load_f16.wgsl"),
            Layout::Q4_0 => include_str!("../../../kernels/load_q4_0.wgsl"),
            Layout::Q4_1 => include_str!("../../../kernels/load_q4_1.wgsl"),
            Layout::Q5_0 => include_str!("../../../kernels/load_q5_0.wgsl"),
            Layout::Q5_1 => include_str!("../../../kernels/load_q5_1.wgsl"),
            Layout::Q8_0 => include_str!("../../../kernels/load_q8_0.wgsl"),
            Layout::Q2K => include_str!("../../../kernels/load_q2_k.wgsl"),
            Layout::Q3K => include_str!("../../../kernels/load_q3_k.wgsl"),
            Layout::Q4K => include_str!("../../../kernels/load_q4_k.wgsl"),
            Layout::Q5K => include_str!("../../../kernels/load_q5_k.wgsl"),
            Layout::Q6K => include_str!("../../../kernels/load_q6_k.wgsl"),
            Layout::IQ4NL => include_str!("../../../kernels/load_iq4_nl.wgsl"),
        }
    }
}

/// A kernel and the variant to compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Tiled; with f16 tiles (`true`) or f32.
    MatMul(Layout, bool),
    /// Few columns (≤ [`MATVEC_MAX_N`]); with subgroup reductions or without.
    MatVec(Layout, bool),
    GetRows(Layout),
    /// RMS norm (`false`) or LayerNorm without weight and bias (`true`).
    Norm(bool),
    /// 0 add, 1 mul, 2 swiglu, 3 gelu.
    Elementwise(u32),
    Rope,
    Slice,
    RowStats,
    RowCandidates,
    /// Head dimension.
    Attention(u32),
}

/// The most columns [`Kernel::MatVec`] takes; more go to the tiled matmul.
pub const MATVEC_MAX_N: usize = 16;

/// The partial sums of a [`Kernel::MatVec`] workgroup, joined with subgroup adds.
const REDUCE_SUBGROUPS: &str = "    for (var c = 0u; c < NMAX; c++) {
        let s = subgroupAdd(acc[c]);
        part[c * 64u + lid] = select(0.0, s, sg_lane == 0u);
    }
    workgroupBarrier();
    if (lid < P.n) {
        var t = 0.0;
        for (var i = 0u; i < 64u; i++) {
            t += part[lid * 64u + i];
        }
        y[P.y_off + lid * P.ldy + P.m_base + row] = t;
    }";

/// The same without subgroups: a tree in workgroup memory.
const REDUCE_TREE: &str = "    for (var c = 0u; c < NMAX; c++) {
        part[c * 64u + lid] = acc[c];
    }
    workgroupBarrier();
    for (var s = 32u; s > 0u; s /= 2u) {
        if (lid < s) {
            for (var c = 0u; c < P.n; c++) {
                part[c * 64u + lid] += part[c * 64u + lid + s];
            }
        }
        workgroupBarrier();
    }
    if (lid < P.n) {
        y[P.y_off + lid * P.ldy + P.m_base + row] = part[lid * 64u];
    }";

/// Keys and values per attention tile: 2 × TKV × HD × 4 bytes of workgroup memory = 16 KiB.
pub fn attention_tile(hd: u32) -> u32 {
    (2048 / hd).max(1)
}

impl Kernel {
    fn source(self) -> String {
        match self {
            Kernel::MatMul(l, f16) => {
                let (enable, tile) = if f16 { ("enable f16;", "f16") } else { ("", "f32") };
                format!("{}\n{}", MATMUL.replace("{{ENABLE}}", enable).replace("{{TILE}}", tile), l.loader())
            }
            Kernel::MatVec(l, subgroups) => {
                // Naga takes subgroup builtins once the device has the feature, without WGSL's
                // `enable subgroups;` (which it refuses).
                let (args, reduce) = if subgroups { (", @builtin(subgroup_invocation_id) sg_lane: u32", REDUCE_SUBGROUPS) } else { ("", REDUCE_TREE) };
                let body = MATVEC.replace("{{ARGS}}", args).replace("{{REDUCE}}", reduce);
                format!("{body}\n{}", l.loader())
            }
            Kernel::GetRows(l) => format!("{GET_ROWS}\n{}", l.loader()),
            Kernel::Norm(_) => format!("{RMS_NORM}\n{REDUCE}"),
            Kernel::Slice => SLICE.into(),
            Kernel::RowStats => format!("{ROW_STATS}\n{ROW_STATS_FN}\n{REDUCE}"),
            Kernel::RowCandidates => format!("{ROW_CANDIDATES}\n{ROW_STATS_FN}\n{REDUCE}"),
            Kernel::Elementwise(_) => ELEMENTWISE.into(),
            Kernel::Rope => ROPE.into(),
            Kernel::Attention(hd) => {
                let tkv = attention_tile(hd);
                ATTENTION.replace("{{HD}}", &hd.to_string()).replace("{{TKV}}", &tkv.to_string()).replace("{{TKV_HD}}", &(tkv * hd).to_string())
            }
        }
    }
}

impl Gpu {
    /// The compiled pipeline for `k` (compiled on first use, then shared).
    pub(crate) fn pipeline(&mut self, k: Kernel) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = format!("{k:?}");
        if let Some(p) = self.pipelines.get(&key) {
            return Ok(p.clone());
        }
        let src = k.source();
        let constants: Vec<(&str, f64)> = match k {
            Kernel::Elementwise(op) => vec![("OP", op as f64)],
            Kernel::Norm(center) => vec![("CENTER", center as u32 as f64)],
            _ => Vec::new(),
        };
        let device = &self.device;
        let p = self.checked(&format!("compiling kernel {key}"), || {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&key),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&key),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions { constants: &constants, zero_initialize_workgroup_memory: false },
                cache: None,
            })
        })?;
        let p = Arc::new(p);
        self.pipelines.insert(key, p.clone());
        Ok(p)
    }
}
