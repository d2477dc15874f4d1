//! The wgpu backend's whole forward pass against ggml's CPU forward pass on small random
//! checkpoints (on lavapipe in CI). Skips, saying why, only when no wgpu adapter exists at all.
#![cfg(feature = "wgpu")]

mod common;

use common::{argmax, checkpoint, convert};
use dlm::model::Pass;
use dlm::{Backend, LoadOptions, Model};
use dlm_convert::OutType;

/// Whether any wgpu adapter exists; prints why the test is skipped when none does.
fn have_adapter() -> bool {
    let list = dlm::backend::wgpu::adapters();
    if list.is_empty() {
        eprintln!("SKIPPED: no wgpu adapter (no Vulkan/Metal/DX12 driver; Debian: apt install mesa-vulkan-drivers)");
    }
    !list.is_empty()
}

fn load(path: &std::path::Path, backend: Backend) -> Model {
    Model::load(path, &LoadOptions { threads: 2, backend, ..Default::default() }).unwrap()
}

/// (max |a - b| / max |b|, share of rows with the same argmax).
fn compare(got: &[f32], want: &[f32], n_vocab: usize) -> (f32, f32) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let rows = want.len() / n_vocab;
    let same = (0..rows).filter(|&i| argmax(&got[i * n_vocab..][..n_vocab]) == argmax(&want[i * n_vocab..][..n_vocab])).count();
    (err / scale, same as f32 / rows as f32)
}

#[test]
fn wgpu_logits_match_the_cpu_backend_per_type() {
    if !have_adapter() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    checkpoint(&hf, &["--kv-heads", "2"]);
    // 70 tokens: more than one 64-wide matmul tile and one attention workgroup, not a multiple.
    let tokens: Vec<u32> = (0..70u32).map(|i| if i % 3 == 2 { 811 } else { 1 + (i * 7919) % 31999 }).collect();
    // Bounds as for the numpy oracle: the CPU rounds activations to f16 (f16 weights) or to
    // Q8 blocks (quantized weights) inside matmuls; the GPU keeps them in f32.
    for (kind, bound) in [(OutType::F32, 1e-4), (OutType::F16, 2e-3), (OutType::Q8_0, 0.03), (OutType::Q4_0, 0.03)] {
        let gguf = convert(&hf, kind);
        let mut cpu = load(&gguf, Backend::Cpu);
        let mut gpu = load(&gguf, Backend::Wgpu);
        assert_eq!(gpu.backend(), Backend::Wgpu);
        let want = cpu.forward(&tokens).unwrap();
        let got = gpu.forward(&tokens).unwrap();
        let (err, top1) = compare(&got, &want, 32000);
        println!("{:>5}: {} vs cpu: max relative error {err:.2e}, top-1 {:.0}%", kind.name(), gpu.backend_description(), top1 * 100.0);
        assert!(err <= bound, "{}: {err:.2e} > {bound:.0e}", kind.name());
        assert!(top1 >= 0.95, "{}: top-1 agreement {top1}", kind.name());
        // The restricted LM head and a second, different graph on the same executor.
        let rows = [3usize, 17, 64, 69];
        let got_rows = gpu.forward_rows(&tokens, Pass::Full, Some(&rows)).unwrap();
        for (i, &r) in rows.iter().enumerate() {
            assert_eq!(&got_rows[i * 32000..][..32000], &got[r * 32000..][..32000], "row {r}");
        }
    }
}

#[test]
fn wgpu_batches_and_cache_passes_match_the_cpu_backend() {
    if !have_adapter() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    checkpoint(&hf, &["--dtype", "f32"]);
    let gguf = convert(&hf, OutType::F32);
    let (mut cpu, mut gpu) = (load(&gguf, Backend::Cpu), load(&gguf, Backend::Wgpu));
    // A batch of three sequences: attention per sequence, joined outputs.
    let seqs: [&[u32]; 3] = [&[1, 450, 811, 811, 811], &[1, 2, 3, 811, 811, 811, 811, 811, 811], &[1, 811]];
    let rows: [&[usize]; 3] = [&[1, 2, 3], &[0, 4, 8], &[1]];
    let (want, got) = (cpu.forward_batch(&seqs, &rows).unwrap(), gpu.forward_batch(&seqs, &rows).unwrap());
    let (err, top1) = compare(&got, &want, 32000);
    assert!(err < 1e-4 && top1 == 1.0, "batch: {err:.2e}, top-1 {top1}");
    // Store every position's keys/values, then recompute tokens 4..8 against the cache.
    let tokens: Vec<u32> = (0..12u32).map(|i| if i > 3 { 811 } else { 1 + i * 100 }).collect();
    for m in [&mut cpu, &mut gpu] {
        m.forward_rows(&tokens, Pass::Store, None).unwrap();
    }
    let reuse = Pass::Reuse { start: 4, end: 8 };
    let rows = [4usize, 5, 7];
    let (want, got) = (cpu.forward_rows(&tokens, reuse, Some(&rows)).unwrap(), gpu.forward_rows(&tokens, reuse, Some(&rows)).unwrap());
    let (err, top1) = compare(&got, &want, 32000);
    assert!(err < 1e-4 && top1 == 1.0, "cache reuse: {err:.2e}, top-1 {top1}");
}
