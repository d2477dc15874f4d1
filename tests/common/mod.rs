//! Helpers shared by the integration tests: running the Python references and reading .npy.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `python3 args...` in the repository root; panics with its stderr on failure.
pub fn python(args: &[&str]) {
    let out = Command::new("python3").args(args).current_dir(root()).output().expect("python3 runs");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A small random DiffuLLaMA checkpoint at `dir` (tests/make_checkpoint.py with `extra` flags).
pub fn checkpoint(dir: &Path, extra: &[&str]) {
    python(&["tests/fetch_data.py"]);
    let mut args = vec!["tests/make_checkpoint.py", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    python(&args);
}

/// Converts `hf` with dlm-convert's library to a GGUF beside it.
pub fn convert(hf: &Path, kind: dlm_convert::OutType) -> PathBuf {
    let out = hf.with_file_name(format!("{}-{}.gguf", hf.file_name().unwrap().to_string_lossy(), kind.name()));
    convert_to(hf, kind, false, &out);
    out
}

/// Converts `hf` to `out` (`causal`: dlm-convert --causal).
pub fn convert_to(hf: &Path, kind: dlm_convert::OutType, causal: bool, out: &Path) {
    let opts = dlm_convert::Options { out_type: kind, mask_id: None, name: None, causal };
    dlm_convert::Plan::new(hf, &opts).unwrap().write(out, |_, _| {}).unwrap();
}

/// `dlm-eval -m model --problems problems --limit limit`, greedy on the CPU with a fixed seed and
/// two threads, plus `extra` flags; its JSON report. Panics with dlm-eval's stderr on failure.
pub fn dlm_eval(model: &Path, problems: &Path, limit: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["-m", model.to_str().unwrap(), "--problems", problems.to_str().unwrap(), "--limit", limit];
    args.extend_from_slice(&["--temp", "0", "--seed", "1", "-t", "2", "--backend", "cpu"]);
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_dlm-eval")).args(&args).output().unwrap();
    assert!(out.status.success(), "dlm-eval {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// One task's exact-match accuracy in a dlm-eval report.
pub fn task_accuracy(r: &serde_json::Value, task: &str) -> f64 {
    r["tasks"][task]["accuracy"].as_f64().unwrap_or_else(|| panic!("no accuracy for {task}: {r}"))
}

/// A float32 C-order .npy file: (shape, data).
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape_str = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape = shape_str.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    let data = b[10 + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    (shape, data)
}

pub fn argmax(r: &[f32]) -> usize {
    r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

/// The small random checkpoint with grouped KV (2 KV heads) converted to `kind`, in a temporary
/// folder that lives as long as the returned guard.
pub fn tiny_gqa_gguf(kind: dlm_convert::OutType) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    checkpoint(&hf, &["--kv-heads", "2"]);
    let gguf = convert(&hf, kind);
    (tmp, gguf)
}

/// Copies the GGUF `src` to `out` with its metadata, each tensor as `map(info, data)` gives it
/// (its type and bytes).
pub fn rewrite_gguf(src: &Path, out: &Path, map: impl Fn(&dlm::gguf::TensorInfo, &[u8]) -> (dlm::GgmlType, Vec<u8>)) {
    let g = dlm::Gguf::open(src).unwrap();
    let mut w = dlm::GgufWriter::new();
    for (k, v) in g.metadata() {
        w.set(k, v.clone()).unwrap();
    }
    let mut blobs = Vec::new();
    for info in g.tensors() {
        let (t, data) = map(info, g.tensor_data(info));
        w.add_tensor(&info.name, &info.shape, t).unwrap();
        blobs.push(data);
    }
    let mut s = w.create(out).unwrap();
    for b in &blobs {
        s.write_tensor(b).unwrap();
    }
    s.finish().unwrap();
}

/// Rewrites an f32 model with every matrix quantized to `t` by ggml (llama-quantize's `--pure`:
/// no per-tensor mix), vectors kept f32, metadata unchanged.
pub fn pure_gguf(f32_model: &Path, t: dlm::GgmlType, out: &Path) {
    rewrite_gguf(f32_model, out, |info, data| {
        assert_eq!(info.ggml_type, dlm::GgmlType::F32, "{} is not f32", info.name);
        if info.shape.len() < 2 {
            return (dlm::GgmlType::F32, data.to_vec());
        }
        let vals: Vec<f32> = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let mut q = vec![0u8; t.tensor_bytes(&info.shape).unwrap() as usize];
        dlm::backend::ggml::quantize(t, &vals, info.shape[0] as usize, &mut q).unwrap();
        (t, q)
    });
}

/// The first device of the first compiled-in ggml GPU backend (software ones included: an
/// explicit backend may use lavapipe, which ggml-vulkan lists with GGML_VK_VISIBLE_DEVICES=0).
#[cfg(any(feature = "cuda", feature = "metal", feature = "vulkan"))]
#[allow(dead_code)]
pub fn ggml_gpu() -> Option<dlm::Backend> {
    let Some(d) = dlm::backend::ggml::gpu_devices().into_iter().next() else {
        eprintln!("SKIPPED: this ggml GPU build found no device (for lavapipe: GGML_VK_VISIBLE_DEVICES=0)");
        return None;
    };
    Some(match d.api.as_str() {
        "CUDA" => dlm::Backend::Cuda,
        "Metal" => dlm::Backend::Metal,
        _ => dlm::Backend::Vulkan,
    })
}

/// Whether any wgpu adapter exists; prints why the test is skipped when none does.
#[cfg(feature = "wgpu")]
#[allow(dead_code)]
pub fn have_adapter() -> bool {
    let list = dlm::backend::wgpu::adapters();
    if list.is_empty() {
        eprintln!("SKIPPED: no wgpu adapter (no Vulkan/Metal/DX12 driver; Debian: apt install mesa-vulkan-drivers)");
    }
    !list.is_empty()
}

/// A copy of the f32 model `f32_model` whose LM head has the row of id `from` at id `to` for each
/// `(from, to)` of `dups`, so those logits tie exactly.
pub fn with_tied_rows(f32_model: &Path, dups: &[(usize, usize)], out: &Path) {
    rewrite_gguf(f32_model, out, |info, data| {
        let mut data = data.to_vec();
        if info.name == "output.weight" {
            let row = info.shape[0] as usize * 4;
            for &(from, to) in dups {
                data.copy_within(from * row..(from + 1) * row, to * row);
            }
        }
        (info.ggml_type, data)
    });
}

/// `n` held-out prompts of the trained tiny model (every `step`-th line of
/// models/tasks/test.jsonl) with their answers' positions masked: (canvas, the rows whose
/// logits predict the masked positions).
pub fn masked_canvases(tok: &dlm::Tokenizer, step: usize, n: usize) -> Vec<(Vec<u32>, Vec<usize>)> {
    let text = std::fs::read_to_string(root().join("models/tasks/test.jsonl")).unwrap();
    text.lines()
        .step_by(step)
        .take(n)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let mut canvas = tok.prompt_ids(v["prompt"].as_str().unwrap()).unwrap();
            let (len, gen) = (canvas.len(), v["n"].as_u64().unwrap() as usize);
            canvas.extend(std::iter::repeat_n(dlm::keys::DIFFULLAMA_MASK_ID, gen));
            (canvas, (len - 1..len - 1 + gen).collect())
        })
        .collect()
}
