//! dlm-convert against hostile outputs and signals: it never writes over one of its inputs (also
//! through a link) or onto a device or folder, an interrupted run leaves no partial file and an
//! earlier output untouched, and partial files of dead runs are cleaned up.

#[path = "../../tests/hostile_util/mod.rs"]
mod hostile_util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hostile_util::{assert_clean, judge, run_bounded, signal, snapshot, CharDevice, Want};

const CONVERT: &str = env!("CARGO_BIN_EXE_dlm-convert");

fn checkpoint(dir: &Path, extra: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for args in [vec!["tests/fetch_data.py"], [vec!["tests/make_checkpoint.py", dir.to_str().unwrap()], extra.to_vec()].concat()] {
        let out = Command::new("python3").args(&args).current_dir(root).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn the_converter_never_overwrites_an_input_or_leaves_a_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    // Big enough that a conversion takes a moment to interrupt.
    checkpoint(&hf, &["--shards", "2", "--layers", "4", "--hidden", "512", "--ffn", "1536"]);
    let limit = Duration::from_secs(120);
    let conv = |out: &Path, ty: &str| {
        let mut c = Command::new(CONVERT);
        c.args([hf.to_str().unwrap(), "-o", out.to_str().unwrap(), "--type", ty, "--quiet"]);
        c
    };
    let mut problems = Vec::new();
    let shard = std::fs::read_dir(&hf).unwrap().flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "safetensors")).unwrap();
    let link = tmp.path().join("link.gguf");
    std::os::unix::fs::symlink(&shard, &link).unwrap();
    let before = snapshot(tmp.path());
    for (name, out, text) in [
        ("-o config.json", hf.join("config.json"), "input"),
        ("-o a shard", shard.clone(), "input"),
        ("-o a link to a shard", link.clone(), "input"),
        ("-o the input folder", hf.clone(), "directory"),
        ("-o /dev/null", PathBuf::from("/dev/null"), "not a regular file"),
    ] {
        problems.extend(judge(name, run_bounded(conv(&out, "q8_0"), None, limit), Want::Error(text)));
    }
    if snapshot(tmp.path()) != before {
        problems.push("refused outputs: files changed or left behind".into());
    }
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device_like());

    // A partial file of a process that no longer runs goes at the next run; one of a live
    // process (this test) stays.
    let outdir = tmp.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("m.gguf");
    let mut dead = Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    let stale = outdir.join(format!(".m.gguf.{}.partial", dead.id()));
    let live = outdir.join(format!(".m.gguf.{}.partial", std::process::id()));
    std::fs::write(&stale, b"left by a killed run").unwrap();
    std::fs::write(&live, b"being written").unwrap();
    problems.extend(judge("convert", run_bounded(conv(&out, "f16"), None, limit), Want::Ok));
    if stale.exists() || !live.exists() || !out.exists() {
        problems.push(format!("stale partial removed: {}, live one kept: {}, output written: {}", !stale.exists(), live.exists(), out.exists()));
    }
    std::fs::remove_file(&live).unwrap();
    let done = std::fs::read(&out).unwrap();

    // Interrupted while writing (each signal once the temporary file exists): the temporary file
    // goes, exit 130, and the finished output of the run before is untouched.
    for (name, sig) in [("SIGINT", libc::SIGINT), ("SIGTERM", libc::SIGTERM), ("SIGHUP", libc::SIGHUP)] {
        let mut child = conv(&out, "q4_k_m").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let partial = outdir.join(format!(".m.gguf.{}.partial", child.id()));
        let t0 = Instant::now();
        while !partial.exists() && child.try_wait().unwrap().is_none() && t0.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(1));
        }
        if !partial.exists() {
            problems.push(format!("{name}: the conversion ended before it could be interrupted"));
            let _ = child.wait();
            continue;
        }
        signal(&child, sig);
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        if status.code() != Some(130) || partial.exists() {
            problems.push(format!("{name}: exit {:?}, partial left: {}, stderr: {err}", status.code(), partial.exists()));
        }
        if std::fs::read(&out).unwrap() != done {
            problems.push(format!("{name}: the existing output changed"));
        }
    }
    let left: Vec<_> = std::fs::read_dir(&outdir).unwrap().flatten().map(|e| e.file_name()).collect();
    if left.len() != 1 {
        problems.push(format!("files left in the output folder: {left:?}"));
    }
    assert_clean(problems);
}

/// A copy of `src` (files copied, so edits stay local) with `edit` applied.
fn variant(src: &Path, dst: &Path, edit: impl FnOnce(&Path)) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    edit(dst);
}

fn edit_config(dir: &Path, key: &str, v: serde_json::Value) {
    let p = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    c[key] = v;
    std::fs::write(&p, c.to_string()).unwrap();
}

/// Replaces `path` with a FIFO (opening it for reading would wait for a writer for ever).
fn fifo(path: &Path) {
    std::fs::remove_file(path).unwrap();
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

fn relink(dir: &Path, name: &str, target: &str) {
    std::fs::remove_file(dir.join(name)).unwrap();
    std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
}

#[test]
fn absurd_checkpoints_and_flags_end_at_once_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    checkpoint(&hf, &["--shards", "1"]);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // Each case must end well within this (the bugs were a run out of memory and hangs).
    let limit = Duration::from_secs(30);
    let mut problems = Vec::new();
    let cases: Vec<(&str, Box<dyn Fn(&Path)>, Want)> = vec![
        ("num_hidden_layers 2^32", Box::new(|d| edit_config(d, "num_hidden_layers", serde_json::json!(1u64 << 32))), Want::Error("`num_hidden_layers`: 4294967296 does not fit in 32 bits")),
        ("max_position_embeddings 0", Box::new(|d| edit_config(d, "max_position_embeddings", serde_json::json!(0))), Want::Error("max_position_embeddings")),
        ("config.json -> /dev/zero", Box::new(|d| relink(d, "config.json", "/dev/zero")), Want::Error("not a regular file")),
        ("tokenizer.json -> /dev/zero", Box::new(|d| relink(d, "tokenizer.json", "/dev/zero")), Want::Error("not a regular file")),
        ("model.safetensors is a FIFO", Box::new(|d| fifo(&d.join("model.safetensors"))), Want::Error("model.safetensors: not a regular file")),
        (
            "MistralForCausalLM with model_type llama",
            Box::new(|d| edit_config(d, "architectures", serde_json::json!(["MistralForCausalLM"]))),
            Want::Error("`architectures`: expected one of LlamaForCausalLM"),
        ),
        (
            "a 50 MB unknown field in tokenizer.json",
            Box::new(|d| {
                let p = d.join("tokenizer.json");
                let mut t: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                t["zz_extra"] = "x".repeat(50 << 20).into();
                std::fs::write(&p, t.to_string()).unwrap();
            }),
            Want::Error("cannot load it: it has a top-level field `zz_extra`, and only version,"),
        ),
    ];
    // Each case: a copy of `base` edited, converted to q8_0 in `out`, judged.
    let run_cases = |base: &Path, tag: &str, cases: Vec<(&str, Box<dyn Fn(&Path)>, Want)>| -> Vec<String> {
        let mut problems = Vec::new();
        for (i, (name, edit, want)) in cases.into_iter().enumerate() {
            let dir = tmp.path().join(format!("{tag}{i}"));
            variant(base, &dir, edit);
            let mut c = Command::new(CONVERT);
            c.arg(&dir).arg("-o").arg(out.join("m.gguf")).args(["--type", "q8_0", "--quiet"]);
            problems.extend(judge(name, run_bounded(c, None, limit), want));
        }
        problems
    };
    problems.extend(run_cases(&hf, "case", cases));
    // A sharded checkpoint whose index and shards disagree, or whose shard is a FIFO.
    let sharded = tmp.path().join("sharded");
    checkpoint(&sharded, &["--shards", "2"]);
    let index = |d: &Path| -> (PathBuf, serde_json::Value) {
        let p = d.join("model.safetensors.index.json");
        let v = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        (p, v)
    };
    let shards: Vec<String> = {
        let (_, v) = index(&sharded);
        let mut s: Vec<String> = v["weight_map"].as_object().unwrap().values().map(|x| x.as_str().unwrap().to_owned()).collect();
        s.sort();
        s.dedup();
        s
    };
    assert_eq!(shards.len(), 2, "{shards:?}");
    let (first, second) = (shards[0].clone(), shards[1].clone());
    let (second2, first2) = (second.clone(), first.clone());
    let sharded_cases: Vec<(&str, Box<dyn Fn(&Path)>, Want)> = vec![
        ("a shard named in the index is a FIFO", Box::new(move |d| fifo(&d.join(&second))), Want::Error("not a regular file")),
        (
            "the index names a tensor its shard lacks",
            Box::new(move |d| {
                let (p, mut v) = index(d);
                v["weight_map"]["model.layers.0.mlp.extra.weight"] = first.clone().into();
                std::fs::write(p, v.to_string()).unwrap();
            }),
            Want::Error("names tensor `model.layers.0.mlp.extra.weight`"),
        ),
        (
            "the index puts a tensor in the other shard",
            Box::new(move |d| {
                let (p, mut v) = index(d);
                let map = v["weight_map"].as_object_mut().unwrap();
                let name = map.iter().find(|(_, f)| **f == second2.as_str()).unwrap().0.clone();
                map.insert(name, first2.clone().into());
                std::fs::write(p, v.to_string()).unwrap();
            }),
            Want::Error("but it is in"),
        ),
    ];
    problems.extend(run_cases(&sharded, "sharded", sharded_cases));
    // No architectures list: converted by model_type, with one warning saying so.
    let dir = tmp.path().join("no-architectures");
    variant(&hf, &dir, |d| edit_config(d, "architectures", serde_json::json!([])));
    let mut c = Command::new(CONVERT);
    c.arg(&dir).arg("-o").arg(out.join("t.gguf")).args(["--type", "q8_0", "--quiet"]);
    let r = run_bounded(c, None, limit);
    if let Ok(o) = &r {
        let err = String::from_utf8_lossy(&o.stderr);
        if !err.contains("warning:") || !err.contains("no `architectures` list; converting by model_type `llama` as LlamaForCausalLM") {
            problems.push(format!("empty architectures: no warning: {err}"));
        }
    }
    problems.extend(judge("empty architectures", r, Want::Ok));
    for (name, threads, want) in [("-t 0", "0", Want::Error("-t")), ("-t 100000", "100000", Want::Ok)] {
        let mut c = Command::new(CONVERT);
        c.arg(&hf).arg("-o").arg(out.join("t.gguf")).args(["--type", "q8_0", "--quiet", "-t", threads]);
        let r = run_bounded(c, None, limit);
        if let (Ok(o), Want::Ok) = (&r, want) {
            if !String::from_utf8_lossy(&o.stderr).contains("warning: -t 100000") {
                problems.push(format!("{name}: no warning about the thread count"));
            }
        }
        problems.extend(judge(name, r, want));
    }
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().map(|e| e.file_name()).collect();
    if left != [std::ffi::OsString::from("t.gguf")] {
        problems.push(format!("files in the output folder: {left:?} (expected only t.gguf)"));
    }
    assert_clean(problems);
}
