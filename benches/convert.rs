//! Conversion throughput on 7B-shaped layers (hidden 4096, 32 heads, FFN 11008, vocab 32000,
//! 2 layers, bf16 in two shards; about 1.3 GB of source weights), in MB/s of source weights.
//!
//! Peer in the same run: ggml's quantizer alone (`quantize_parallel`) over the same tensors,
//! already decoded to f32 in memory: the bound a converter can approach. The ratio
//! `convert / quantize_only` is what to report; the target is "limited by ggml's quantizer".
//!
//!     cargo bench --bench convert            # generates the checkpoint on first run (~1 min)

use std::path::PathBuf;
use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dlm_convert::{quantize_parallel, Options, OutType, Plan};

fn checkpoint() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/bench-data/diffullama-7b-shape-2l");
    if !dir.join("config.json").exists() {
        for script in ["tests/fetch_data.py"] {
            assert!(Command::new("python3").arg(script).current_dir(&root).status().unwrap().success());
        }
        let status = Command::new("python3")
            .args(["tests/make_checkpoint.py", dir.to_str().unwrap()])
            .args(["--layers", "2", "--hidden", "4096", "--heads", "32", "--ffn", "11008", "--shards", "2"])
            .current_dir(&root)
            .status()
            .unwrap();
        assert!(status.success(), "make_checkpoint.py failed");
    }
    dir
}

fn bench(c: &mut Criterion) {
    let dir = checkpoint();
    let out = dir.parent().unwrap().join("bench-out.gguf");
    let mut group = c.benchmark_group("convert_7b_shape_2_layers");
    group.sample_size(10);
    for kind in [OutType::Q4_0, OutType::Q8_0] {
        let plan = Plan::new(&dir, &Options { out_type: kind, mask_id: None, name: None, causal: false }).unwrap();
        group.throughput(Throughput::Bytes(plan.bytes_in()));
        group.bench_function(format!("dlm_convert_{}", kind.name()), |b| {
            b.iter(|| plan.write(&out, |_, _| {}).unwrap());
        });
        // The same tensors, pre-decoded: only ggml's quantizer runs in the timed loop.
        let decoded: Vec<_> =
            plan.tensors.iter().map(|t| (t.ggml_type, t.shape[0] as usize, plan.checkpoint.to_f32(&t.source))).collect();
        group.bench_function(format!("ggml_quantize_only_{}", kind.name()), |b| {
            b.iter(|| {
                for (ty, row, values) in &decoded {
                    std::hint::black_box(quantize_parallel(*ty, values, *row).unwrap());
                }
            });
        });
    }
    group.finish();
    let _ = std::fs::remove_file(out);
}

criterion_group!(benches, bench);
criterion_main!(benches);
