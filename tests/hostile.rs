//! Hostile input against the release binaries: bad files (each a valid GGUF but for one value),
//! bad flags, closed pipes, full devices, signals, a file truncated under the map. Every case
//! runs under a time bound and must end with the documented exit code (0 success, 2 error,
//! 130 interrupted), exactly one `error:` line for an error, no panic, abort or signal, no file
//! left behind, and its inputs unchanged.

mod common;
mod hostile_util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{checkpoint, convert};
use hostile_util::{assert_clean, judge, run_bounded, signal, snapshot, CharDevice, Want};
use dlm::gguf::{GgmlType, Gguf, GgufWriter, Value};
use dlm_convert::OutType;

const RUN: &str = env!("CARGO_BIN_EXE_dlm-run");
const SCORE: &str = env!("CARGO_BIN_EXE_dlm-score");
const EVAL: &str = env!("CARGO_BIN_EXE_dlm-eval");

/// A rewritten copy of `src`: `meta` edits the metadata, `tensors` the tensor list (name, shape,
/// type, bytes); `alignment` is written as `general.alignment`.
fn rewrite(
    src: &Gguf,
    dst: &Path,
    meta: impl FnOnce(&mut Vec<(String, Value)>),
    tensors: impl FnOnce(&mut Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>),
) {
    let mut m: Vec<(String, Value)> = src.metadata().to_vec();
    meta(&mut m);
    let mut t: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)> =
        src.tensors().iter().map(|i| (i.name.clone(), i.shape.clone(), i.ggml_type, src.tensor_data(i).to_vec())).collect();
    tensors(&mut t);
    let mut w = GgufWriter::new();
    for (k, v) in m {
        w.set(&k, v).unwrap();
    }
    for (name, shape, ty, _) in &t {
        w.add_tensor(name, shape, *ty).unwrap();
    }
    let mut s = w.create(dst).unwrap();
    for (_, _, _, bytes) in &t {
        s.write_tensor(bytes).unwrap();
    }
    s.finish().unwrap();
}

fn set(m: &mut Vec<(String, Value)>, key: &str, v: Value) {
    match m.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = v,
        None => m.push((key.to_owned(), v)),
    }
}

fn f32_bytes(n: usize, v: f32) -> Vec<u8> {
    std::iter::repeat_n(v.to_le_bytes(), n).flatten().collect()
}

type Edit = Box<dyn Fn(&mut Vec<(String, Value)>, &mut Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>)>;

fn meta_only(f: impl Fn(&mut Vec<(String, Value)>) + 'static) -> Edit {
    Box::new(move |m, _| f(m))
}

/// The bad files: (name, edit, expected outcome of a short dlm-run on it).
fn bad_files() -> Vec<(&'static str, Edit, Want)> {
    let eps = "llama.attention.layer_norm_rms_epsilon";
    let rope = "llama.rope.freq_base";
    vec![
        ("negative rms epsilon", meta_only(move |m| set(m, eps, Value::F32(-1e-5))), Want::Error(eps)),
        ("NaN rms epsilon", meta_only(move |m| set(m, eps, Value::F32(f32::NAN))), Want::Error(eps)),
        ("rms epsilon 1e30", meta_only(move |m| set(m, eps, Value::F32(1e30))), Want::Error(eps)),
        ("rope base 0", meta_only(move |m| set(m, rope, Value::F32(0.0))), Want::Error(rope)),
        ("rope base -10000", meta_only(move |m| set(m, rope, Value::F32(-1e4))), Want::Error(rope)),
        ("rope base NaN", meta_only(move |m| set(m, rope, Value::F32(f32::NAN))), Want::Error(rope)),
        ("rope base f64 1e300 (inf as f32)", meta_only(move |m| set(m, rope, Value::F64(1e300))), Want::Error(rope)),
        ("rope base infinite", meta_only(move |m| set(m, rope, Value::F64(f64::INFINITY))), Want::Error(rope)),
        ("rope scaling yarn", meta_only(|m| set(m, "llama.rope.scaling.type", "yarn".into())), Want::Error("rope.scaling.type")),
        ("mixture of experts", meta_only(|m| set(m, "llama.expert_count", Value::U32(8))), Want::Error("expert_count")),
        ("context length 0", meta_only(|m| set(m, "llama.context_length", Value::U32(0))), Want::Error("llama.context_length")),
        ("head count 0", meta_only(|m| set(m, "llama.attention.head_count", Value::U32(0))), Want::Error("head_count")),
        ("kv heads 3 of 4", meta_only(|m| set(m, "llama.attention.head_count_kv", Value::U32(3))), Want::Error("head_count_kv")),
        ("key_length 32 of head 64", meta_only(|m| set(m, "llama.attention.key_length", Value::U32(32))), Want::Error("llama.attention.key_length")),
        ("value_length as a string", meta_only(|m| set(m, "llama.attention.value_length", "64".into())), Want::Error("llama.attention.value_length")),
        ("block_count below the layers", meta_only(|m| set(m, "llama.block_count", Value::U32(1))), Want::Error("llama.block_count")),
        ("block_count above the layers", meta_only(|m| set(m, "llama.block_count", Value::U32(3))), Want::Error("blk.2.")),
        ("block_count 2^32-1", meta_only(|m| set(m, "llama.block_count", Value::U32(u32::MAX))), Want::Error("block_count")),
        ("block_count as a string", meta_only(|m| set(m, "llama.block_count", "two".into())), Want::Error("llama.block_count")),
        ("architecture mamba", meta_only(|m| set(m, "general.architecture", "mamba".into())), Want::Error("not supported (supported: llama, llada, dream, gpt2)")),
        ("a llama file labelled gpt2", meta_only(|m| set(m, "general.architecture", "gpt2".into())), Want::Error("gpt2.embedding_length")),
        ("architecture with escapes", meta_only(|m| set(m, "general.architecture", "\u{1b}[2J\u{1b}[31mllama".into())), Want::Error("not supported")),
        ("bos id outside the vocabulary", meta_only(|m| set(m, "tokenizer.ggml.bos_token_id", Value::U32(1 << 30))), Want::Error("bos_token_id")),
        ("mask id outside the vocabulary", meta_only(|m| set(m, "tokenizer.ggml.mask_token_id", Value::U32(1 << 30))), Want::Error("mask id")),
        (
            "unknown id outside the vocabulary (token arrays)",
            meta_only(|m| {
                m.retain(|(k, _)| k != "tokenizer.huggingface.json");
                set(m, "tokenizer.ggml.unknown_token_id", Value::U32(1 << 30));
            }),
            Want::Error("unknown_token_id"),
        ),
        (
            "a weight in Q8_K (no matmul kernel)",
            Box::new(|_, t| {
                let w = t.iter_mut().find(|x| x.0 == "blk.0.attn_q.weight").unwrap();
                w.2 = GgmlType::Q8_K;
                w.3 = vec![0u8; GgmlType::Q8_K.tensor_bytes(&w.1).unwrap() as usize];
            }),
            Want::Error("q8_k"),
        ),
        (
            "a weight in I32",
            Box::new(|_, t| {
                let w = t.iter_mut().find(|x| x.0 == "blk.1.ffn_up.weight").unwrap();
                w.2 = GgmlType::I32;
                w.3 = vec![0u8; GgmlType::I32.tensor_bytes(&w.1).unwrap() as usize];
            }),
            Want::Error("blk.1.ffn_up.weight"),
        ),
        (
            "NaN output norm",
            Box::new(|_, t| {
                let w = t.iter_mut().find(|x| x.0 == "output_norm.weight").unwrap();
                w.3 = f32_bytes(w.1[0] as usize, f32::NAN);
            }),
            Want::Error("`output_norm.weight`: element 0 is NaN"),
        ),
        ("infinite attention norm", poison("blk.0.attn_norm.weight", 3, f32::INFINITY), Want::Error("`blk.0.attn_norm.weight`: element 3 is +inf")),
        ("NaN in an f32 weight matrix", poison("blk.1.ffn_up.weight", 1000, f32::NAN), Want::Error("`blk.1.ffn_up.weight`: element 1000 is NaN")),
        (
            "a missing tensor",
            Box::new(|_, t| t.retain(|x| x.0 != "blk.1.attn_v.weight")),
            Want::Error("blk.1.attn_v.weight"),
        ),
        (
            "a mis-shaped tensor",
            Box::new(|_, t| {
                let w = t.iter_mut().find(|x| x.0 == "blk.0.ffn_norm.weight").unwrap();
                w.1 = vec![w.1[0] / 2];
                w.3.truncate(w.3.len() / 2);
            }),
            Want::Error("blk.0.ffn_norm.weight"),
        ),
    ]
}

/// Element `at` of an f32 tensor set to `v`.
fn poison(name: &'static str, at: usize, v: f32) -> Edit {
    Box::new(move |_, t| {
        let w = t.iter_mut().find(|x| x.0 == name).unwrap();
        w.3[4 * at..4 * at + 4].copy_from_slice(&v.to_le_bytes());
    })
}

/// The f16 scale of block `block` of a Q4_0 tensor set to `bits` (0x7e00 NaN, 0x7c00 +inf).
fn poison_scale(name: &'static str, block: usize, bits: u16) -> Edit {
    Box::new(move |_, t| {
        let w = t.iter_mut().find(|x| x.0 == name).unwrap();
        assert_eq!(w.2, GgmlType::Q4_0, "{name}");
        w.3[18 * block..18 * block + 2].copy_from_slice(&bits.to_le_bytes());
    })
}

/// Files of the Q4_0 conversion: a NaN or infinite block scale never reaches the logits (ggml
/// re-quantizes the activations, turning NaN into numbers), so only the load-time check finds it.
fn bad_q4_files() -> Vec<(&'static str, Edit, Want)> {
    vec![
        ("NaN block scale in a Q4_0 attn_q", poison_scale("blk.0.attn_q.weight", 5, 0x7e00), Want::Error("`blk.0.attn_q.weight`: block 5 (elements 160..192): scale is NaN")),
        ("+inf block scale in a Q4_0 ffn_down", poison_scale("blk.1.ffn_down.weight", 77, 0x7c00), Want::Error("`blk.1.ffn_down.weight`: block 77 (elements 2464..2496): scale is +inf")),
        ("-inf block scale in a Q4_0 attn_output", poison_scale("blk.1.attn_output.weight", 0, 0xfc00), Want::Error("`blk.1.attn_output.weight`: block 0 (elements 0..32): scale is -inf")),
        ("NaN attention norm beside Q4_0 weights", poison("blk.1.attn_norm.weight", 0, f32::NAN), Want::Error("`blk.1.attn_norm.weight`: element 0 is NaN")),
    ]
}

fn run_args(model: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(RUN);
    c.args(["-m", model.to_str().unwrap(), "-p", "Hi", "-n", "4", "--steps", "4", "-s", "1", "-t", "2", "--temp", "0"]).args(extra);
    c
}

#[test]
fn bad_model_files_get_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    checkpoint(&hf, &["--shards", "1"]);
    let good = convert(&hf, OutType::F32);
    let src = Gguf::open(&good).unwrap();
    let dir = tmp.path().join("cases");
    std::fs::create_dir(&dir).unwrap();
    let limit = Duration::from_secs(60);
    let mut problems = Vec::new();
    let q4 = Gguf::open(convert(&hf, OutType::Q4_0)).unwrap();
    let cases = bad_files().into_iter().map(|c| (&src, c)).chain(bad_q4_files().into_iter().map(|c| (&q4, c)));
    for (i, (src, (name, edit, want))) in cases.enumerate() {
        let path = dir.join(format!("case{i}.gguf"));
        let mut meta = src.metadata().to_vec();
        let mut tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)> =
            src.tensors().iter().map(|i| (i.name.clone(), i.shape.clone(), i.ggml_type, src.tensor_data(i).to_vec())).collect();
        edit(&mut meta, &mut tensors);
        rewrite(src, &path, |m| *m = meta, |t| *t = tensors);
        let before = snapshot(&dir);
        problems.extend(judge(name, run_bounded(run_args(&path, &[]), None, limit), want));
        // The other model loader (dlm-score) must say the same.
        let mut score = Command::new(SCORE);
        score.args(["likelihood", "-m", path.to_str().unwrap(), "--context", "Hi", "--continuation", " there", "-t", "2"]);
        let name_score = format!("{name} (dlm-score)");
        problems.extend(judge(&name_score, run_bounded(score, None, limit), want));
        if snapshot(&dir) != before {
            problems.push(format!("{name}: files changed or left behind"));
        }
        // One case file at a time: each snapshot hashes every file of the folder.
        std::fs::remove_file(&path).unwrap();
    }

    // --no-check-tensors skips the scan of the weight matrices, not the norms' check.
    for (name, edit, want) in [
        ("--no-check-tensors, NaN Q4_0 scale (runs: the user opted out)", poison_scale("blk.0.attn_q.weight", 5, 0x7e00), Want::Ok),
        ("--no-check-tensors, NaN attention norm", poison("blk.0.attn_norm.weight", 1, f32::NAN), Want::Error("`blk.0.attn_norm.weight`: element 1 is NaN")),
    ] {
        let path = dir.join("opt-out.gguf");
        let mut meta = q4.metadata().to_vec();
        let mut tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)> =
            q4.tensors().iter().map(|i| (i.name.clone(), i.shape.clone(), i.ggml_type, q4.tensor_data(i).to_vec())).collect();
        edit(&mut meta, &mut tensors);
        rewrite(&q4, &path, |m| *m = meta, |t| *t = tensors);
        problems.extend(judge(name, run_bounded(run_args(&path, &["--no-check-tensors"]), None, limit), want));
        std::fs::remove_file(&path).unwrap();
    }

    // A tokenizer smaller than the embedding: runs, with one warning naming the ids without text.
    let path = dir.join("short-vocab.gguf");
    rewrite(
        &src,
        &path,
        |m| {
            m.retain(|(k, _)| k != "tokenizer.huggingface.json");
            for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"] {
                if let Some((_, Value::Array(_, items))) = m.iter_mut().find(|(k, _)| k == key) {
                    items.truncate(31_990);
                }
            }
        },
        |_| {},
    );
    let r = run_bounded(run_args(&path, &[]), None, limit);
    if let Ok(o) = &r {
        let err = String::from_utf8_lossy(&o.stderr);
        if err.lines().filter(|l| l.contains("the tokenizer has 31990 tokens but the model 32000: ids 31990..31999 have no text")).count() != 1 {
            problems.push(format!("a tokenizer smaller than the embedding: no single warning: {err}"));
        }
    }
    problems.extend(judge("a tokenizer smaller than the embedding", r, Want::Ok));
    std::fs::remove_file(&path).unwrap();

    // A file whose data section starts 16 bytes off ggml's 32-byte alignment (general.alignment
    // 16 and a 16-byte tensor first) runs, and gives the tokens of the original file.
    let aligned16 = dir.join("align16.gguf");
    rewrite(
        &src,
        &aligned16,
        |m| set(m, "general.alignment", Value::U32(16)),
        |t| t.insert(0, ("extra.weight".into(), vec![4], GgmlType::F32, f32_bytes(4, 1.0))),
    );
    let json = |model: &Path| run_bounded(run_args(model, &["--json"]), None, limit);
    match (json(&good), json(&aligned16)) {
        (Ok(a), Ok(b)) => {
            problems.extend(judge("alignment 16", Ok(b.clone()), Want::Ok));
            if b.status.success() {
                let tokens = |o: &Output| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["tokens"].clone();
                if tokens(&a) != tokens(&b) {
                    problems.push("alignment 16: other tokens than the original file".into());
                }
                let err = String::from_utf8_lossy(&b.stderr);
                if !err.contains("warning:") || !err.contains("extra.weight") {
                    problems.push(format!("alignment 16: no warning about the tensor the graph ignores: {err}"));
                }
            }
        }
        (a, b) => problems.push(format!("alignment 16: {:?} / {:?}", a.err(), b.err())),
    }

    // Container-level damage: tensor_count off by one either way, a 70 KB tensor name, a
    // truncated file, an empty one.
    let bytes = std::fs::read(&good).unwrap();
    let n_tensors = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    for (name, delta) in [("tensor_count + 1", 1i64), ("tensor_count - 1", -1)] {
        let mut b = bytes.clone();
        b[8..16].copy_from_slice(&((n_tensors as i64 + delta) as u64).to_le_bytes());
        let p = dir.join("count.gguf");
        std::fs::write(&p, b).unwrap();
        problems.extend(judge(name, run_bounded(run_args(&p, &[]), None, limit), Want::Error("count.gguf")));
    }
    let mut long = Vec::new();
    long.extend_from_slice(b"GGUF");
    long.extend_from_slice(&3u32.to_le_bytes());
    long.extend_from_slice(&1u64.to_le_bytes());
    long.extend_from_slice(&0u64.to_le_bytes());
    long.extend_from_slice(&70_000u64.to_le_bytes());
    long.extend(std::iter::repeat_n(b'x', 70_000));
    long.extend_from_slice(&[0u8; 64]);
    let p = dir.join("long.gguf");
    std::fs::write(&p, long).unwrap();
    problems.extend(judge("70 KB tensor name", run_bounded(run_args(&p, &[]), None, limit), Want::Error("70000 bytes")));
    let p = dir.join("truncated.gguf");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    problems.extend(judge("truncated file", run_bounded(run_args(&p, &[]), None, limit), Want::Error("truncated")));
    std::fs::write(&p, b"").unwrap();
    problems.extend(judge("empty file", run_bounded(run_args(&p, &[]), None, limit), Want::Error("truncated.gguf")));
    // Not files: a directory, a FIFO (opening it would block), a device.
    problems.extend(judge("a directory as -m", run_bounded(run_args(&dir, &[]), None, limit), Want::Error("is a directory")));
    let fifo = dir.join("fifo.gguf");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    problems.extend(judge("a FIFO as -m", run_bounded(run_args(&fifo, &[]), None, limit), Want::Error("not a regular file")));
    std::fs::remove_file(&fifo).unwrap();
    problems.extend(judge("/dev/zero as -m", run_bounded(run_args(Path::new("/dev/zero"), &[]), None, limit), Want::Error("not a regular file")));
    problems.extend(judge("a missing -m", run_bounded(run_args(&dir.join("nope.gguf"), &[]), None, limit), Want::Error("nope.gguf")));
    assert_clean(problems);
}

/// The tiny f32 model (used in place from the map: no repacked copy) in `dir`.
fn tiny_f32(dir: &Path) -> PathBuf {
    let hf = dir.join("hf");
    checkpoint(&hf, &["--shards", "1"]);
    convert(&hf, OutType::F32)
}

/// A pipe whose reading end is already closed: a write to it fails with EPIPE at once (what
/// `dlm-run … | head -c1` and `--list-devices | true` do, without the race).
#[allow(unsafe_code)]
fn closed_pipe() -> Stdio {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just returned by pipe(2) and are owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

#[test]
fn bad_flags_and_closed_or_full_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_f32(tmp.path());
    let limit = Duration::from_secs(60);
    let mut problems = Vec::new();
    let max = u64::MAX.to_string();
    let cases: Vec<(&str, Vec<&str>, Want)> = vec![
        ("-n u64::MAX", vec!["-n", &max], Want::Error("context")),
        ("-n 2^63", vec!["-n", "9223372036854775808"], Want::Error("context")),
        ("--steps u64::MAX", vec!["--steps", &max], Want::Error("--steps")),
        ("--temp -1", vec!["--temp", "-1"], Want::Error("--temp")),
        ("--temp NaN", vec!["--temp", "NaN"], Want::Error("--temp")),
        ("--top-p 2", vec!["--top-p", "2"], Want::Error("--top-p")),
        ("--threshold -0.5", vec!["--threshold", "-0.5"], Want::Error("--threshold")),
        ("-t 0", vec!["-t", "0"], Want::Error("-t")),
        ("-t 100000", vec!["-t", "100000"], Want::Ok),
        ("--steps 10^6 origin", vec!["--steps", "1000000", "--unmask", "origin"], Want::Ok),
        ("--block-length 0", vec!["--block-length", "0"], Want::Error("--block-length")),
        ("--mask-id 2^32-1", vec!["--mask-id", "4294967295"], Want::Error("mask id")),
    ];
    for (name, extra, want) in cases {
        // Only the flag under test is set (clap refuses a flag given twice).
        let mut c = Command::new(RUN);
        c.args(["-m", model.to_str().unwrap(), "-p", "Hi", "-s", "1"]).args(&extra);
        if !extra.contains(&"-n") && !extra.contains(&"--steps") {
            c.args(["-n", "4"]);
        }
        let r = run_bounded(c, None, limit);
        if name == "-t 100000" {
            if let Ok(o) = &r {
                if !String::from_utf8_lossy(&o.stderr).contains("warning: -t 100000") {
                    problems.push(format!("{name}: no warning about the thread count"));
                }
            }
        }
        problems.extend(judge(name, r, want));
    }

    // -b far above what memory holds is lowered, with a note, and still answers every prompt.
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "one\ntwo\nthree\n").unwrap();
    let mut c = Command::new(RUN);
    c.args(["-m", model.to_str().unwrap(), "--prompts", prompts.to_str().unwrap(), "-n", "4", "--steps", "4", "-s", "1", "-b", "1000000000000", "--json"]);
    match run_bounded(c, None, limit) {
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            let lines = String::from_utf8_lossy(&o.stdout).lines().count();
            if !err.contains("lowered") || lines != 3 {
                problems.push(format!("-b 10^12: {lines} completions (expected 3), stderr: {err}"));
            }
            problems.extend(judge("-b 10^12", Ok(o), Want::Ok));
        }
        Err(e) => problems.push(format!("-b 10^12: {e}")),
    }

    // Input files that never end: refused by type, not read until memory runs out.
    for (name, bin, args) in [
        ("dlm-eval --problems /dev/zero", EVAL, vec!["--problems", "/dev/zero"]),
        ("dlm-run --prompts /dev/zero", RUN, vec!["--prompts", "/dev/zero"]),
        ("dlm-score choice --items /dev/zero", SCORE, vec!["choice", "--items", "/dev/zero"]),
    ] {
        let mut c = Command::new(bin);
        c.args(&args).args(["-m", model.to_str().unwrap()]);
        problems.extend(judge(name, run_bounded(c, None, limit), Want::Error("/dev/zero")));
    }

    // A closed standard output ends the program quietly (exit 0), as `cat` does.
    for (name, args) in [
        ("text | closed", vec![]),
        ("--json | closed", vec!["--json"]),
    ] {
        let mut c = run_args(&model, &args);
        c.stdout(closed_pipe());
        let out = c.stderr(Stdio::piped()).stdin(Stdio::null()).output().unwrap();
        problems.extend(judge(name, Ok(out), Want::Ok));
    }
    let mut c = Command::new(RUN);
    c.arg("--list-devices").stdout(closed_pipe());
    problems.extend(judge("--list-devices | closed", Ok(c.stderr(Stdio::piped()).stdin(Stdio::null()).output().unwrap()), Want::Ok));

    // A full standard output is an error that says which stream; a full standard error is not
    // (the text still arrives).
    let full = || Stdio::from(std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap());
    let mut c = run_args(&model, &[]);
    c.stdout(full());
    let out = c.stderr(Stdio::piped()).stdin(Stdio::null()).output().unwrap();
    problems.extend(judge("stdout on /dev/full", Ok(out), Want::Error("standard output")));
    let mut c = run_args(&model, &[]);
    c.stderr(full());
    let out = c.stdout(Stdio::piped()).stdin(Stdio::null()).output().unwrap();
    if out.status.code() != Some(0) || out.stdout.is_empty() {
        problems.push(format!("stderr on /dev/full: exit {:?}, {} bytes of text", out.status.code(), out.stdout.len()));
    }

    // Output paths that are not regular files, or are an input, are refused before any work.
    let before = snapshot(tmp.path());
    for (name, path, text) in [
        ("--dump-logits /dev/full", PathBuf::from("/dev/full"), "not a regular file"),
        ("--dump-logits over the model", model.clone(), "input"),
        ("--dump-logits into a folder", tmp.path().to_path_buf(), "directory"),
    ] {
        let r = run_bounded(run_args(&model, &["--dump-logits", path.to_str().unwrap()]), None, limit);
        problems.extend(judge(name, r, Want::Error(text)));
    }
    if snapshot(tmp.path()) != before {
        problems.push("--dump-logits: files changed or left behind".into());
    }
    assert!(std::fs::metadata("/dev/full").unwrap().file_type().is_char_device_like());
    assert_clean(problems);
}

/// Spawns `cmd` with stderr piped and waits until its stderr has shown the line holding `marker`
/// (at most `limit`); returns the child and the rest of its stderr, read by a thread.
fn spawn_until(mut cmd: Command, marker: &str, limit: Duration) -> (std::process::Child, std::sync::mpsc::Receiver<u8>) {
    let mut child = cmd.stdin(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        while let Ok(1) = std::io::Read::read(&mut err, &mut b) {
            if tx.send(b[0]).is_err() {
                break;
            }
        }
    });
    let t0 = Instant::now();
    let mut seen = Vec::new();
    // The marker and the rest of its line.
    while !(String::from_utf8_lossy(&seen).contains(marker) && seen.ends_with(b"\n")) {
        assert!(t0.elapsed() < limit, "`{marker}` not seen on stderr within {limit:?}: {}", String::from_utf8_lossy(&seen));
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(10)) {
            seen.push(b);
        }
    }
    (child, rx)
}

/// Waits for `child` (at most `limit`) and returns its status with the rest of its stderr.
fn finish(mut child: std::process::Child, rx: std::sync::mpsc::Receiver<u8>, limit: Duration) -> (std::process::ExitStatus, String) {
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("still running {limit:?} after the signal");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(50));
    (status, String::from_utf8_lossy(&rx.try_iter().collect::<Vec<u8>>()).into_owned())
}

#[test]
fn signals_and_a_model_truncated_under_the_map() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_f32(tmp.path());
    let limit = Duration::from_secs(60);
    // Without -s the seed is printed once the model is loaded: the generation runs from there.
    let long_run = |m: &Path| {
        let mut c = Command::new(RUN);
        c.args(["-m", m.to_str().unwrap(), "-p", "Hi", "-n", "1000", "--steps", "1000", "-t", "2", "--unmask", "confidence"]).stdout(Stdio::null());
        c
    };
    // Ctrl-C prints the canvas so far (masked positions as `_`) and how far it got.
    let mut c = long_run(&model);
    c.stdout(Stdio::piped());
    let (mut child, rx) = spawn_until(c, "seed:", limit);
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, libc::SIGINT);
    let (status, err) = finish(child, rx, limit);
    let text = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("stopped after") && err.contains("still masked (shown as _)"), "{err}");
    assert!(text.contains('_') && text.trim_end().len() >= 1000, "the canvas so far: {text:?}");
    for (name, sig) in [("SIGINT", libc::SIGINT), ("SIGTERM", libc::SIGTERM), ("SIGHUP", libc::SIGHUP)] {
        let (child, rx) = spawn_until(long_run(&model), "seed:", limit);
        signal(&child, sig);
        let (status, err) = finish(child, rx, limit);
        assert_eq!(status.code(), Some(130), "{name}: {status:?}, stderr: {err}");
        assert!(err.contains("interrupted") && !err.contains("panicked"), "{name}: {err}");
    }

    // The file shrinks while mapped: one line saying so, exit 2, no core dump.
    let copy = tmp.path().join("shrinks.gguf");
    std::fs::copy(&model, &copy).unwrap();
    let (child, rx) = spawn_until(long_run(&copy), "seed:", limit);
    std::fs::OpenOptions::new().write(true).open(&copy).unwrap().set_len(4096).unwrap();
    let (status, err) = finish(child, rx, limit);
    assert_eq!(status.code(), Some(2), "truncated under the map: {status:?}, stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains("truncated or changed"), "{err}");
}

