//! Every WGSL kernel against a plain Rust reference (f64 sums over ggml's own dequantized
//! weights) on random inputs at several shapes, most of them ragged (not multiples of the
//! 64 x 64 matmul tile, of the attention tile, of 4 or of the 256-thread workgroups). Runs on
//! whatever wgpu adapter exists: lavapipe (CPU Vulkan) in CI. Skips, saying why, only when
//! there is none.
#![cfg(feature = "wgpu")]

use std::path::Path;

use dlm::backend::ggml::{dequantize, quantize};
use dlm::backend::wgpu::{Executor, Gpu, GpuTensor, Recorder, WeightSet};
use dlm::gguf::{GgmlType, Gguf, GgufWriter};
use dlm::graph::{GraphKey, Ops, RopeMode};

/// A test tensor: name, type, `ne0`, rows.
struct T<'a>(&'a str, GgmlType, usize, usize);

/// Deterministic pseudo-random values in [-1, 1).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn gpu() -> Option<Gpu> {
    if dlm::backend::wgpu::adapters().is_empty() {
        eprintln!("SKIPPED: no wgpu adapter (no Vulkan/Metal/DX12 driver; Debian: apt install mesa-vulkan-drivers)");
        return None;
    }
    Some(Gpu::open(None, true).expect("an adapter exists, so it opens"))
}

/// Writes `tensors` (random values, quantized by ggml) to a GGUF in `dir`, uploads them, and
/// returns the executor plus each tensor's values as the GPU should see them (ggml's
/// dequantization of the stored bytes).
fn upload(dir: &Path, mut gpu: Gpu, cap: Option<u64>, tensors: &[T<'_>]) -> (Executor, Vec<Vec<f32>>) {
    if let Some(c) = cap {
        gpu.cap_binding(c);
    }
    let mut w = GgufWriter::new();
    w.set("general.architecture", "test").unwrap();
    let mut blobs = Vec::new();
    let mut values = Vec::new();
    for (i, T(name, t, ne0, rows)) in tensors.iter().enumerate() {
        let src = random(ne0 * rows, i as u64 + 7);
        let bytes = match t {
            GgmlType::F32 => src.iter().flat_map(|v| v.to_le_bytes()).collect(),
            GgmlType::F16 => src.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
            GgmlType::BF16 => src.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
            _ => {
                let mut q = vec![0u8; t.row_bytes(*ne0 as u64).unwrap() as usize * rows];
                quantize(*t, &src, *ne0, &mut q).unwrap();
                q
            }
        };
        let mut back = vec![0f32; ne0 * rows];
        dequantize(*t, &bytes, &mut back).unwrap();
        let shape: Vec<u64> = if *rows == 1 { vec![*ne0 as u64] } else { vec![*ne0 as u64, *rows as u64] };
        w.add_tensor(name, &shape, *t).unwrap();
        blobs.push(bytes);
        values.push(back);
    }
    let path = dir.join("t.gguf");
    let mut s = w.create(&path).unwrap();
    for b in &blobs {
        s.write_tensor(b).unwrap();
    }
    s.finish().unwrap();
    let g = Gguf::open(&path).unwrap();
    let set = WeightSet::upload(&gpu, &g).unwrap();
    (Executor::new(gpu, set), values)
}

/// An f32 table's rows `0..n` as an activation (what every kernel below reads).
fn rows_of(o: &mut Recorder<'_>, table: GpuTensor, n: usize) -> GpuTensor {
    let ids = o.input_i32(n);
    o.get_rows(table, ids)
}

fn iota(n: usize) -> Vec<i32> {
    (0..n as i32).collect()
}

/// max |got - want| / max(|want|, 1e-3): every kernel's bound is relative to its output scale.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "output length");
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    got.iter().zip(want).fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs())) / scale
}

#[test]
fn get_rows_dequantizes_every_type() {
    let Some(gpu) = gpu() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // Types with kernels match ggml's dequantizer to rounding (the same arithmetic, bar fused
    // multiply-adds); BF16 has none and goes up converted to f32 at load, exactly.
    let types = [
        (GgmlType::F32, 0.0),
        (GgmlType::F16, 0.0),
        (GgmlType::Q8_0, 0.0),
        (GgmlType::Q4_0, 0.0),
        (GgmlType::Q4_1, 1e-6),
        (GgmlType::Q5_0, 0.0),
        (GgmlType::Q5_1, 1e-6),
        (GgmlType::IQ4_NL, 0.0),
        (GgmlType::Q2_K, 1e-6),
        (GgmlType::Q3_K, 1e-6),
        (GgmlType::Q4_K, 1e-6),
        (GgmlType::Q5_K, 1e-6),
        (GgmlType::Q6_K, 1e-6),
        (GgmlType::BF16, 0.0),
    ];
    let names: Vec<String> = types.iter().map(|(t, _)| format!("{t}")).collect();
    let tensors: Vec<T<'_>> = types.iter().zip(&names).map(|((t, _), n)| T(n, *t, 512, 37)).collect();
    let (mut ex, vals) = upload(tmp.path(), gpu, None, &tensors);
    let ids: Vec<i32> = vec![0, 36, 5, 5, 17, 1, 30, 2, 36];
    for (i, (t, bound)) in types.iter().enumerate() {
        let w = ex.weight(&names[i]).unwrap();
        let got = ex.run(&GraphKey::other(&[i], 0), &[&ids], |o| {
            let x = o.input_i32(ids.len());
            o.get_rows(w, x)
        });
        let got = got.unwrap();
        let want: Vec<f64> = ids.iter().flat_map(|&r| vals[i][r as usize * 512..][..512].iter().map(|&v| v as f64)).collect();
        let err = rel_err(&got, &want);
        println!("get_rows {t}: {err:.1e}");
        assert!(err <= *bound, "get_rows {t}: {err:.2e}");
    }
}

/// `W x` on the GPU (weight `wn` `[k, m]`, f32 table `xn` `[k, n]`) against f64 sums, within
/// `bound`.
fn check_matmul(ex: &mut Executor, (wn, wv): (&str, &[f32]), (xn, xv): (&str, &[f32]), (k, m, n): (usize, usize, usize), what: &str, bound: f64) {
    let (wt, xt) = (ex.weight(wn).unwrap(), ex.weight(xn).unwrap());
    // The plan key must determine the graph: the weight's name is part of it.
    let key: Vec<usize> = [k, m, n, 1].into_iter().chain(wn.bytes().map(usize::from)).collect();
    let got = ex
        .run(&GraphKey::other(&key, 0), &[&iota(n)], |o| {
            let xa = rows_of(o, xt, n);
            o.mul_mat(wt, xa)
        })
        .unwrap();
    let want: Vec<f64> = (0..n)
        .flat_map(|j| (0..m).map(move |r| (0..k).map(|l| wv[r * k + l] as f64 * xv[j * k + l] as f64).sum::<f64>()))
        .collect();
    let err = rel_err(&got, &want);
    println!("mul_mat {what} k={k} m={m} n={n}: {err:.1e}");
    assert!(err < bound, "mul_mat {what} k={k} m={m} n={n}: {err:.2e} (bound {bound:.0e})");
}

#[test]
fn matmul_matches_reference_at_ragged_shapes() {
    // Up to 16 columns the row-per-workgroup kernel runs (with subgroup sums where the adapter
    // has them), above it the tiled one; the portable variants are checked too.
    // Tiles in f16 (where the adapter offers SHADER_F16, for non-f32 weights) round W and x
    // to 11 bits: 1e-3 for those (measured 2–3e-4); everything else keeps f32 arithmetic.
    let Some(gpu) = gpu() else { return };
    let a = gpu.adapter().clone();
    println!("adapter {}: subgroups offered {}, used {}; f16 offered {}, used {}", a.name, a.subgroups, gpu.uses_subgroups(), a.f16, gpu.uses_f16());
    assert_eq!((gpu.uses_subgroups(), gpu.uses_f16()), (a.subgroups, a.f16), "every optional feature offered is used");
    let f16 = gpu.uses_f16();
    matmul_cases(gpu, "", true, f16);
    let plain = Gpu::open_with(None, true, false).unwrap();
    assert!(!plain.uses_subgroups() && !plain.uses_f16());
    matmul_cases(plain, " (no optional features)", true, false);
    let mut tiled = Gpu::open(None, true).unwrap();
    tiled.use_matvec(false);
    matmul_cases(tiled, " (tiled only)", false, f16);
    let mut tiled32 = Gpu::open(None, true).unwrap();
    tiled32.use_matvec(false);
    tiled32.use_f16(false);
    matmul_cases(tiled32, " (tiled only, f32 tiles)", false, false);
}

/// Every matmul case on `gpu` (`matvec`: whether few columns take the matvec kernel; `f16`:
/// whether tiled ones use f16 tiles).
fn matmul_cases(gpu: Gpu, variant: &str, matvec: bool, f16: bool) {
    let tmp = tempfile::tempdir().unwrap();
    // (type, k, m, n): tiles of 64 x 64 outputs and 32 along k; f32/f16 rows of 40 and 72 are
    // padded on the device, quantized ones are whole blocks by construction.
    let cases = [
        (GgmlType::F32, 40, 70, 3),
        (GgmlType::F16, 72, 64, 65),
        (GgmlType::Q8_0, 96, 130, 1),
        (GgmlType::Q8_0, 256, 64, 64),
        (GgmlType::Q4_0, 256, 129, 67),
        (GgmlType::Q4_0, 32, 17, 200),
        (GgmlType::Q6_K, 512, 33, 70),
        (GgmlType::Q4_1, 96, 65, 5),
        (GgmlType::Q5_0, 160, 33, 66),
        (GgmlType::Q5_1, 64, 70, 3),
        (GgmlType::IQ4_NL, 128, 31, 9),
        (GgmlType::Q2_K, 256, 67, 4),
        (GgmlType::Q3_K, 512, 35, 65),
        (GgmlType::Q4_K, 768, 66, 7),
        (GgmlType::Q5_K, 256, 129, 2),
        (GgmlType::Q4_0, 4096, 70, 8),
        (GgmlType::Q6_K, 1024, 40, 9),
        (GgmlType::F32, 44, 3, 6),
        (GgmlType::Q8_0, 64, 20, 16),
        (GgmlType::Q4_K, 256, 10, 17),
    ];
    let names: Vec<(String, String)> = (0..cases.len()).map(|i| (format!("w{i}"), format!("x{i}"))).collect();
    let mut tensors = Vec::new();
    for (i, &(t, k, m, n)) in cases.iter().enumerate() {
        tensors.push(T(&names[i].0, t, k, m));
        tensors.push(T(&names[i].1, GgmlType::F32, k, n));
    }
    let (mut ex, vals) = upload(tmp.path(), gpu, None, &tensors);
    for (i, &(t, k, m, n)) in cases.iter().enumerate() {
        let tiled = !matvec || n > 16;
        let bound = if f16 && tiled && t != GgmlType::F32 { 1e-3 } else { 2e-5 };
        check_matmul(&mut ex, (&names[i].0, &vals[2 * i]), (&names[i].1, &vals[2 * i + 1]), (k, m, n), &format!("{t}{variant}"), bound);
    }
}

#[test]
fn weights_larger_than_a_binding_are_split_into_row_chunks() {
    // Through both matmul kernels: 7 columns take the matvec one, unless it is turned off.
    for matvec in [true, false] {
        let Some(mut gpu) = gpu() else { return };
        let bound = if gpu.uses_f16() && !matvec { 1e-3 } else { 2e-5 };
        gpu.use_matvec(matvec);
        chunked(gpu, bound, if matvec { "matvec" } else { "tiled" });
    }
}

fn chunked(gpu: Gpu, bound: f64, kernel: &str) {
    let tmp = tempfile::tempdir().unwrap();
    // A 16 KiB binding cap: Q4_0 rows of 256 values take 144 bytes, so the 300-row table lands
    // in 3 chunks; Q6_K rows of 512 take 420 (208 bytes a block plus its scale), so 8 chunks;
    // Q3_K (scale moved out too) rows of 512 take 220, so 5; Q4_K (blocks whole) 288, so 6.
    let tensors = [
        T("q4", GgmlType::Q4_0, 256, 300),
        T("q6", GgmlType::Q6_K, 512, 300),
        T("x", GgmlType::F32, 512, 7),
        T("x2", GgmlType::F32, 256, 7),
        T("q3", GgmlType::Q3_K, 512, 300),
        T("q4k", GgmlType::Q4_K, 512, 300),
    ];
    let (mut ex, vals) = upload(tmp.path(), gpu, Some(16384), &tensors);
    assert_eq!(ex.weights().chunks("q4"), Some(3));
    assert_eq!(ex.weights().chunks("q6"), Some(8));
    assert_eq!(ex.weights().chunks("q3"), Some(5));
    assert_eq!(ex.weights().chunks("q4k"), Some(6));
    let ids: Vec<i32> = vec![299, 0, 27, 28, 150, 56];
    for (name, idx, ne0) in [("q4", 0, 256), ("q6", 1, 512), ("q3", 4, 512), ("q4k", 5, 512)] {
        let w = ex.weight(name).unwrap();
        let got = ex
            .run(&GraphKey::other(&[idx, 9], 0), &[&ids], |o| {
                let x = o.input_i32(ids.len());
                o.get_rows(w, x)
            })
            .unwrap();
        let want: Vec<f64> = ids.iter().flat_map(|&r| vals[idx][r as usize * ne0..][..ne0].iter().map(|&v| v as f64)).collect();
        assert!(rel_err(&got, &want) < 1e-6, "get_rows across chunks of {name}");
    }
    for (w, wi, x, xi, k) in [("q4", 0, "x2", 3, 256), ("q6", 1, "x", 2, 512), ("q3", 4, "x", 2, 512), ("q4k", 5, "x", 2, 512)] {
        check_matmul(&mut ex, (w, &vals[wi]), (x, &vals[xi]), (k, 300, 7), &format!("{w} in chunks, {kernel}"), bound);
    }
}

#[test]
fn norm_and_elementwise_kernels_match_reference() {
    let Some(gpu) = gpu() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // Rows of 100 (not a multiple of 4 or of the 256-thread workgroup) and of 1000; a norm
    // weight broadcast along the tokens, and a [ne0, 1] tensor broadcast the same way.
    let tensors = [T("a", GgmlType::F32, 100, 3), T("b", GgmlType::F32, 100, 3), T("g", GgmlType::F32, 100, 1), T("big", GgmlType::F32, 1000, 5)];
    let (mut ex, v) = upload(tmp.path(), gpu, None, &tensors);
    let (a, b, g, big) = (ex.weight("a").unwrap(), ex.weight("b").unwrap(), ex.weight("g").unwrap(), ex.weight("big").unwrap());
    let rms = |x: &[f32], n: usize| -> Vec<f64> {
        x.chunks(n)
            .flat_map(|r| {
                let s = (r.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64 + 1e-5).sqrt();
                r.iter().map(move |&v| v as f64 / s)
            })
            .collect()
    };
    let silu = |x: f64| x / (1.0 + (-x).exp());
    type Build = fn(&mut Recorder<'_>, [GpuTensor; 4]) -> GpuTensor;
    let cases: Vec<(&str, Build, Vec<f64>)> = vec![
        ("rms_norm", |o, [a, ..]| {
            let x = rows_of(o, a, 3);
            o.rms_norm(x, 1e-5)
        }, rms(&v[0], 100)),
        ("rms_norm 1000", |o, [.., big]| {
            let x = rows_of(o, big, 5);
            o.rms_norm(x, 1e-5)
        }, rms(&v[3], 1000)),
        ("mul by a broadcast weight", |o, [a, _, g, _]| {
            let x = rows_of(o, a, 3);
            o.mul(x, g)
        }, (0..300).map(|i| v[0][i] as f64 * v[2][i % 100] as f64).collect()),
        ("add", |o, [a, b, ..]| {
            let (x, y) = (rows_of(o, a, 3), rows_of(o, b, 3));
            o.add(x, y)
        }, (0..300).map(|i| v[0][i] as f64 + v[1][i] as f64).collect()),
        ("swiglu", |o, [a, b, ..]| {
            let (x, y) = (rows_of(o, a, 3), rows_of(o, b, 3));
            o.swiglu(x, y)
        }, (0..300).map(|i| silu(v[0][i] as f64) * v[1][i] as f64).collect()),
    ];
    for (i, (what, build, want)) in cases.into_iter().enumerate() {
        let n_inputs = if i == 1 { vec![iota(5)] } else if i < 3 { vec![iota(3)] } else { vec![iota(3), iota(3)] };
        let inputs: Vec<&[i32]> = n_inputs.iter().map(|v| v.as_slice()).collect();
        let got = ex.run(&GraphKey::other(&[100 + i], 0), &inputs, |o| build(o, [a, b, g, big])).unwrap();
        let err = rel_err(&got, &want);
        println!("{what}: {err:.1e}");
        assert!(err < 1e-5, "{what}: {err:.2e}");
    }
}

/// ggml's rope on `[hd, heads, n]` values at `pos`, over the first `n_dims` of each head: NORM
/// rotates values (i, i + 1), NEOX (i / 2, i / 2 + n_dims / 2), for even i < n_dims.
fn rope_ref(x: &[f32], hd: usize, heads: usize, pos: &[i32], n_dims: usize, theta: f64, mode: RopeMode) -> Vec<f64> {
    let mut y: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for (t, &p) in pos.iter().enumerate() {
        for h in 0..heads {
            for i in (0..n_dims).step_by(2) {
                let a = p as f64 * theta.powf(-(i as f64) / n_dims as f64);
                let head = (t * heads + h) * hd;
                let (o0, o1) = match mode {
                    RopeMode::Norm => (head + i, head + i + 1),
                    RopeMode::Neox => (head + i / 2, head + i / 2 + n_dims / 2),
                };
                let (x0, x1) = (x[o0] as f64, x[o1] as f64);
                y[o0] = x0 * a.cos() - x1 * a.sin();
                y[o1] = x0 * a.sin() + x1 * a.cos();
            }
        }
    }
    y
}

#[test]
fn rope_matches_reference_full_and_partial() {
    let Some(gpu) = gpu() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (hd, heads, n) = (64, 3, 10);
    let (mut ex, v) = upload(tmp.path(), gpu, None, &[T("x", GgmlType::F32, hd * heads, n)]);
    let x = ex.weight("x").unwrap();
    let pos: Vec<i32> = vec![0, 1, 2, 7, 100, 5, 9, 300, 4, 1000];
    for (mode, n_dims) in [(RopeMode::Norm, 64), (RopeMode::Norm, 32), (RopeMode::Neox, 64), (RopeMode::Neox, 32)] {
        let got = ex
            .run(&GraphKey::other(&[200 + n_dims + 1000 * (mode == RopeMode::Neox) as usize], 0), &[&iota(n), &pos], |o| {
                let xa = rows_of(o, x, n);
                let p = o.input_i32(n);
                let x3 = o.reshape_3d(xa, [hd, heads, n]);
                o.rope(x3, p, n_dims, 10000.0, mode)
            })
            .unwrap();
        let err = rel_err(&got, &rope_ref(&v[0], hd, heads, &pos, n_dims, 10000.0, mode));
        println!("rope {mode:?} n_dims={n_dims}: {err:.1e}");
        // f32 angles up to 1000 rad: the GPU's sin/cos of a rounded angle.
        assert!(err < 1e-4, "rope {mode:?} n_dims={n_dims}: {err:.2e}");
        // The other mode's pairs are a different rotation: the comparison can tell them apart.
        let other = if mode == RopeMode::Norm { RopeMode::Neox } else { RopeMode::Norm };
        assert!(rel_err(&got, &rope_ref(&v[0], hd, heads, &pos, n_dims, 10000.0, other)) > 1e-2);
    }
}

/// Soft-max attention in f64: q `[hd, nh, nq]`, k/v `[hd, nkv, nk]`, output `[hd, nh, nq]`.
fn attention_ref(q: &[f32], k: &[f32], v: &[f32], hd: usize, nh: usize, nkv: usize, causal: bool) -> Vec<f64> {
    let nq = q.len() / (hd * nh);
    let nk = k.len() / (hd * nkv);
    let mut out = vec![0f64; q.len()];
    for i in 0..nq {
        for h in 0..nh {
            let hk = h / (nh / nkv);
            let qo = (i * nh + h) * hd;
            let keys = if causal { i + 1 } else { nk };
            let s: Vec<f64> = (0..keys)
                .map(|j| (0..hd).map(|d| q[qo + d] as f64 * k[(j * nkv + hk) * hd + d] as f64).sum::<f64>() / (hd as f64).sqrt())
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for (j, sj) in s.iter().enumerate() {
                let p = (sj - m).exp() / z;
                for d in 0..hd {
                    out[qo + d] += p * v[(j * nkv + hk) * hd + d] as f64;
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_reference_bidirectional_causal_and_grouped() {
    let Some(gpu) = gpu() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // (head dim, query heads, kv heads, tokens): one token, a ragged 70 (two query workgroups
    // of 64, keys in tiles of 2048 / hd), 130 with grouped heads, head dim 128 (tiles of 16).
    let cases = [(64, 4, 4, 1), (64, 4, 2, 70), (32, 6, 2, 130), (128, 2, 1, 33)];
    let names: Vec<[String; 3]> = (0..cases.len()).map(|i| [format!("q{i}"), format!("k{i}"), format!("v{i}")]).collect();
    let mut tensors = Vec::new();
    for (i, &(hd, nh, nkv, n)) in cases.iter().enumerate() {
        tensors.push(T(&names[i][0], GgmlType::F32, hd * nh, n));
        tensors.push(T(&names[i][1], GgmlType::F32, hd * nkv, n));
        tensors.push(T(&names[i][2], GgmlType::F32, hd * nkv, n));
    }
    let (mut ex, vals) = upload(tmp.path(), gpu, None, &tensors);
    for (i, &(hd, nh, nkv, n)) in cases.iter().enumerate() {
        let [q, k, v] = [0, 1, 2].map(|j| ex.weight(&names[i][j]).unwrap());
        for causal in [false, true] {
            let ids = iota(n);
            let got = ex
                .run(&GraphKey::other(&[300 + i, causal as usize], 0), &[&ids, &ids, &ids], |o| {
                    let (qa, ka, va) = (rows_of(o, q, n), rows_of(o, k, n), rows_of(o, v, n));
                    let q3 = o.reshape_3d(qa, [hd, nh, n]);
                    let k3 = o.reshape_3d(ka, [hd, nkv, n]);
                    let v3 = o.reshape_3d(va, [hd, nkv, n]);
                    o.attention(q3, k3, v3, causal)
                })
                .unwrap();
            let want = attention_ref(&vals[3 * i], &vals[3 * i + 1], &vals[3 * i + 2], hd, nh, nkv, causal);
            let err = rel_err(&got, &want);
            println!("attention hd={hd} heads={nh}/{nkv} n={n} causal={causal}: {err:.1e}");
            assert!(err < 1e-5, "attention hd={hd} heads={nh}/{nkv} n={n} causal={causal}: {err:.2e}");
        }
    }
}

#[test]
fn token_views_concat_and_cache_writes_move_the_right_values() {
    let Some(gpu) = gpu() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (a, n) = (24, 9);
    let (mut ex, v) = upload(tmp.path(), gpu, None, &[T("x", GgmlType::F32, a, n)]);
    let x = ex.weight("x").unwrap();
    let tok = |t: usize| v[0][t * a..][..a].iter().map(|&x| x as f64).collect::<Vec<f64>>();
    // Tokens 5..9 then 0..2, joined: a batch's attention outputs are joined this way.
    let got = ex
        .run(&GraphKey::other(&[400], 0), &[&iota(n)], |o| {
            let xa = rows_of(o, x, n);
            let x3 = o.reshape_3d(xa, [a, 1, n]);
            let (p, q) = (o.token_range(x3, 5, 4), o.token_range(x3, 0, 2));
            o.concat_tokens(&[p, q])
        })
        .unwrap();
    let want: Vec<f64> = [5, 6, 7, 8, 0, 1].iter().flat_map(|&t| tok(t)).collect();
    assert_eq!(rel_err(&got, &want), 0.0, "token_range + concat_tokens");
    // A cache pass: all tokens stored, then tokens 3..5 rewritten from rows 0..2; the cache is
    // read through an add so that the output is a fresh tensor.
    let cache = ex.kv_cache(1, 1, a, 1, n).unwrap()[0].k;
    ex.run(&GraphKey::other(&[401], 0), &[&iota(n)], |o| {
        let xa = rows_of(o, x, n);
        let x3 = o.reshape_3d(xa, [a, 1, n]);
        o.write_tokens(cache, x3, 0)
    })
    .unwrap();
    let got = ex
        .run(&GraphKey::other(&[402], 0), &[&iota(2)], |o| {
            let xa = rows_of(o, x, 2);
            let x3 = o.reshape_3d(xa, [a, 1, 2]);
            o.write_tokens(cache, x3, 3)
        })
        .unwrap();
    let want: Vec<f64> = [0, 1, 2, 0, 1, 5, 6, 7, 8].iter().flat_map(|&t| tok(t)).collect();
    assert_eq!(rel_err(&got, &want), 0.0, "write_tokens keeps the other tokens");
}
