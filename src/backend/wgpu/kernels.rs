//! The kernel registry: WGSL sources embedded from `kernels/`, composed (a weight loader in
//! front of the kernels that read weights, sizes substituted) and compiled once per variant.

use std::sync::Arc;

use super::Gpu;
use crate::error::Result;
use crate::gguf::GgmlType;

const MATMUL: &str = include_str!("../../../kernels/matmul.wgsl");
const GET_ROWS: &str = include_str!("../../../kernels/get_rows.wgsl");
const RMS_NORM: &str = include_str!("../../../kernels/rms_norm.wgsl");
const ELEMENTWISE: &str = include_str!("../../../kernels/elementwise.wgsl");
const ROPE: &str = include_str!("../../../kernels/rope.wgsl");
const ATTENTION: &str = include_str!("../../../kernels/attention.wgsl");

/// How a tensor is laid out in device memory: what `w_load4` of its loader reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    F32,
    F16,
    Q4_0,
    Q8_0,
    Q6K,
}

impl Layout {
    /// The device layout for a file type, or `None` when the type has no kernel (such weights
    /// are converted to f16 at upload).
    pub fn of(t: GgmlType) -> Option<Layout> {
        Some(match t {
            GgmlType::F32 => Layout::F32,
            GgmlType::F16 => Layout::F16,
            GgmlType::Q4_0 => Layout::Q4_0,
            GgmlType::Q8_0 => Layout::Q8_0,
            GgmlType::Q6_K => Layout::Q6K,
            _ => return None,
        })
    }

    fn loader(self) -> &'static str {
        match self {
            Layout::F32 => include_str!("../../../kernels/load_f32.wgsl"),
            Layout::F16 => include_str!("../../../kernels/load_f16.wgsl"),
            Layout::Q4_0 => include_str!("../../../kernels/load_q4_0.wgsl"),
            Layout::Q8_0 => include_str!("../../../kernels/load_q8_0.wgsl"),
            Layout::Q6K => include_str!("../../../kernels/load_q6_k.wgsl"),
        }
    }
}

/// A kernel and the variant to compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    MatMul(Layout),
    GetRows(Layout),
    RmsNorm,
    /// 0 add, 1 mul, 2 swiglu.
    Elementwise(u32),
    Rope,
    /// Head dimension.
    Attention(u32),
}

/// Keys and values per attention tile: 2 × TKV × HD × 4 bytes of workgroup memory = 16 KiB.
pub fn attention_tile(hd: u32) -> u32 {
    (2048 / hd).max(1)
}

impl Kernel {
    fn source(self) -> String {
        match self {
            Kernel::MatMul(l) => format!("{MATMUL}\n{}", l.loader()),
            Kernel::GetRows(l) => format!("{GET_ROWS}\n{}", l.loader()),
            Kernel::RmsNorm => RMS_NORM.into(),
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
