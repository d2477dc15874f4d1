//! ggml's GPU devices: whatever GPU backends this build compiled in (features `cuda`, `metal`,
//! `vulkan`) and found a device for, as listed by ggml's backend registry.

use std::ffi::CStr;

use llama_cpp_sys_2 as sys;

/// Where ggml keeps a device's handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// Index in ggml's device registry (all devices, the CPU included).
    Registry(usize),
    /// Device `index` of the RPC server at `endpoint` (ggml-rpc keeps one registry per server,
    /// made on first connection and never freed).
    #[cfg(feature = "rpc")]
    Rpc { endpoint: std::ffi::CString, index: usize },
}

/// One GPU (or accelerator) device ggml can run on: a local one, or a remote one behind an
/// RPC server (`--rpc`).
#[derive(Clone, Debug)]
pub struct GgmlDevice {
    pub(crate) source: Source,
    /// The backend: "CUDA", "Metal", "Vulkan", "RPC".
    pub api: String,
    /// ggml's name for the device ("CUDA0", "Vulkan0").
    pub name: String,
    pub description: String,
    pub memory_free: u64,
    pub memory_total: u64,
}

fn text(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns NUL-terminated strings that live as long as the static registry.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl GgmlDevice {
    /// A CPU-emulated device (Mesa's lavapipe/llvmpipe, SwiftShader), which ggml-vulkan lists
    /// only when `GGML_VK_VISIBLE_DEVICES` names it: slower than the ggml CPU backend on the same
    /// cores, so `--backend auto` never picks one.
    pub fn is_software(&self) -> bool {
        let d = self.description.to_ascii_lowercase();
        ["llvmpipe", "lavapipe", "swiftshader", "softpipe"].iter().any(|s| d.contains(s))
    }
}

/// Every GPU of the compiled-in ggml backends, in registry order.
pub fn gpu_devices() -> Vec<GgmlDevice> {
    super::init_logging();
    // SAFETY: the registry is static and initialised on first use; indices are below the count.
    let n = unsafe { sys::ggml_backend_dev_count() };
    let mut out = Vec::new();
    for i in 0..n {
        // SAFETY: as above.
        let dev = unsafe { sys::ggml_backend_dev_get(i) };
        if dev.is_null() {
            continue;
        }
        // SAFETY: a live static device.
        let kind = unsafe { sys::ggml_backend_dev_type(dev) };
        if kind != sys::GGML_BACKEND_DEVICE_TYPE_GPU && kind != sys::GGML_BACKEND_DEVICE_TYPE_IGPU {
            continue; // the CPU, and accelerators such as BLAS that only speed up the CPU
        }
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: a live device and two out-pointers to locals.
        unsafe { sys::ggml_backend_dev_memory(dev, &mut free, &mut total) };
        out.push(describe(dev, Source::Registry(i), free, total));
    }
    out
}

/// The facts of the live device `dev`.
pub(crate) fn describe(dev: sys::ggml_backend_dev_t, source: Source, free: usize, total: usize) -> GgmlDevice {
    // SAFETY: a live device; its registry is static.
    let reg = unsafe { sys::ggml_backend_dev_backend_reg(dev) };
    GgmlDevice {
        source,
        // SAFETY: a live registry.
        api: text(unsafe { sys::ggml_backend_reg_name(reg) }),
        // SAFETY: a live device.
        name: text(unsafe { sys::ggml_backend_dev_name(dev) }),
        // SAFETY: a live device.
        description: text(unsafe { sys::ggml_backend_dev_description(dev) }),
        memory_free: free as u64,
        memory_total: total as u64,
    }
}

/// ggml's device handle for `d` (static: neither registry ever frees a device).
pub(crate) fn handle(d: &GgmlDevice) -> sys::ggml_backend_dev_t {
    match &d.source {
        // SAFETY: the index came from the registry, which never shrinks.
        Source::Registry(i) => unsafe { sys::ggml_backend_dev_get(*i) },
        #[cfg(feature = "rpc")]
        Source::Rpc { endpoint, index } => super::rpc::device_handle(endpoint, *index),
    }
}

/// The device's own buffer type (device memory).
pub fn buffer_type(d: &GgmlDevice) -> sys::ggml_backend_buffer_type_t {
    // SAFETY: a registered device; the buffer type is static.
    unsafe { sys::ggml_backend_dev_buffer_type(handle(d)) }
}
