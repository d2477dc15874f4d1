//! dlm-run end to end: generation output, reproducibility, --dump-logits against the numpy
//! reference, GGUFs written like llama.cpp's (no diffusion keys), and clear errors (exit 2).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{checkpoint, convert, python, read_npy};
use dlm_convert::OutType;

fn tiny(dir: &Path) -> PathBuf {
    let hf = dir.join("hf");
    checkpoint(&hf, &["--shards", "1"]);
    hf
}

fn dlm_run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlm-run")).args(args).output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "dlm-run failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

fn max_rel(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

#[test]
fn generates_reproducibly_and_dumps_the_reference_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tiny(tmp.path());
    let gguf = convert(&hf, OutType::F32);
    let g = gguf.to_str().unwrap();
    let npy = tmp.path().join("first.npy");
    let base = ["-m", g, "-p", "Today is a wonderful day,", "-n", "12", "--steps", "4", "-s", "7", "-t", "2", "--json"];
    let a = json(&dlm_run(&[&base[..], &["--dump-logits", npy.to_str().unwrap()]].concat()));
    let b = json(&dlm_run(&base));
    assert_eq!(a["tokens"], b["tokens"], "same seed, same output");
    assert_eq!(a["text"], b["text"]);
    let n_tok = a["tokens"].as_array().unwrap().len();
    assert!(n_tok <= 12 && a["steps"].as_u64().unwrap() <= 4);
    let c = json(&dlm_run(&[&base[..8], &["-s", "8", "-t", "2", "--json"]].concat()));
    assert_ne!(a["tokens"], c["tokens"], "another seed, another sample");

    // The first step's logits are the forward pass of BOS + prompt + 12 masks.
    let mut canvas: Vec<String> = a["prompt_tokens"].as_array().unwrap().iter().map(|t| t.to_string()).collect();
    canvas.extend(std::iter::repeat_n("811".to_string(), 12));
    let reference = tmp.path().join("ref.npy");
    python(&["tests/ref_forward.py", hf.to_str().unwrap(), "--tokens", &canvas.join(","), "--out", reference.to_str().unwrap()]);
    let err = max_rel(&read_npy(&npy).1, &read_npy(&reference).1);
    assert!(err < 1e-4, "dumped logits vs numpy: {err:.2e}");

    // Plain mode: text on stdout, timings on stderr; suffix infilling; every rule runs.
    for rule in ["origin", "confidence", "margin", "entropy", "threshold"] {
        let out = dlm_run(&["-m", g, "-p", "A", "--suffix", " the end.", "-n", "6", "--steps", "3", "--unmask", rule, "-s", "1", "--block-length", "3"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.contains("ms/step") && err.contains("tokens/s"), "{rule}: {err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("ms/step"));
    }
    // The caches: one step per block makes every step a refreshing full pass, so the output
    // equals the exact run's; with more steps per block they run and fill every position.
    let cached = |cache: &str, steps: &str| {
        json(&dlm_run(&["-m", g, "-p", "A", "-n", "12", "--steps", steps, "--block-length", "4", "--cache", cache, "--temp", "0", "-s", "1", "--json"]))
    };
    let exact = cached("none", "3");
    for cache in ["prefix", "dual"] {
        assert_eq!(cached(cache, "3")["tokens"], exact["tokens"], "{cache}");
        let steps = cached(cache, "12")["steps"].as_u64().unwrap();
        assert!((3..=12).contains(&steps), "{cache}: {steps} steps");
    }
    let bad = dlm_run(&["-m", g, "--cache", "everything"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn runs_gguf_written_like_llama_cpp_without_diffusion_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tiny(tmp.path());
    for kind in ["q8_0", "q4_0"] {
        let gguf = tmp.path().join(format!("lcpp-{kind}.gguf"));
        python(&["tests/pygguf_llama.py", hf.to_str().unwrap(), gguf.to_str().unwrap(), kind]);
        let npy = tmp.path().join("d.npy");
        let out = dlm_run(&["-m", gguf.to_str().unwrap(), "-p", "Hello", "-n", "6", "--steps", "2", "--temp", "0", "--json", "--dump-logits", npy.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.matches("no diffusion metadata").count(), 1, "said once: {err}");
        assert!(err.contains("mask id 811") && err.contains("bidirectional"), "{err}");
        let v = json(&out);
        let mut canvas: Vec<String> = v["prompt_tokens"].as_array().unwrap().iter().map(|t| t.to_string()).collect();
        canvas.extend(std::iter::repeat_n("811".to_string(), 6));
        let reference = tmp.path().join("r.npy");
        python(&["tests/ref_forward.py", hf.to_str().unwrap(), "--tokens", &canvas.join(","), "--out", reference.to_str().unwrap(), "--gguf", gguf.to_str().unwrap()]);
        let e = max_rel(&read_npy(&npy).1, &read_npy(&reference).1);
        println!("{kind} (gguf writer, llama.cpp layout) vs its dequantized weights: {e:.2e}");
        assert!(e < 0.03, "{kind}: {e:.2e}");
    }
}

#[test]
fn bad_input_is_one_clear_line_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tiny(tmp.path());
    let gguf = convert(&hf, OutType::Q8_0);
    let g = gguf.to_str().unwrap();
    std::fs::write(tmp.path().join("x.gguf"), b"definitely not").unwrap();
    let x = tmp.path().join("x.gguf");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-m", "/no/such.gguf"], "/no/such.gguf"),
        (vec!["-m", x.to_str().unwrap()], "bad magic"),
        (vec!["-m", g, "--steps", "0"], "--steps"),
        (vec!["-m", g, "--top-p", "1.5"], "--top-p"),
        (vec!["-m", g, "--threshold", "0"], "--threshold"),
        (vec!["-m", g, "--json", "--visual"], "cannot be combined"),
        (vec!["-m", g, "-n", "5000"], "exceeds the model's context of 2048"),
        (vec!["-m", g, "--mask-id", "40000"], "outside the 32000-token vocabulary"),
    ];
    for (args, needle) in cases {
        let out = dlm_run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error: ") && err.contains(needle) && err.lines().count() == 1, "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn prompts_from_a_file_run_in_batches_and_match_single_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tiny(tmp.path());
    let gguf = convert(&hf, OutType::Q8_0);
    let g = gguf.to_str().unwrap();
    let file = tmp.path().join("prompts.txt");
    // A blank line (skipped) and a CRLF ending.
    std::fs::write(&file, "Today is a wonderful day,\n\nThe capital of France is\r\nOnce upon a time\n").unwrap();
    let f = file.to_str().unwrap();
    let prompts = ["Today is a wonderful day,", "The capital of France is", "Once upon a time"];
    let common = ["-m", g, "-n", "10", "--steps", "5", "-s", "3", "-t", "2", "--json"];
    let out = dlm_run(&[&common[..], &["--prompts", f, "-b", "2"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 prompts in 2 batch(es)"), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    for (i, prompt) in prompts.iter().enumerate() {
        assert_eq!(lines[i]["prompt"], *prompt);
        let alone = json(&dlm_run(&[&common[..], &["-p", prompt]].concat()));
        assert_eq!(lines[i]["tokens"], alone["tokens"], "prompt {i}: batched differs from alone");
    }
    // With a cache the prompts batch too (each keeps its own cache), with the per-prompt results.
    let with_cache = ["--cache", "prefix", "--block-length", "5"];
    let cached = dlm_run(&[&common[..], &["--prompts", f, "-b", "3"], &with_cache[..]].concat());
    assert!(cached.status.success(), "{}", String::from_utf8_lossy(&cached.stderr));
    assert!(String::from_utf8_lossy(&cached.stderr).contains("3 prompts in 1 batch(es)"), "{}", String::from_utf8_lossy(&cached.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(cached.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    for (i, prompt) in prompts.iter().enumerate() {
        let alone = json(&dlm_run(&[&common[..], &["-p", prompt], &with_cache[..]].concat()));
        assert_eq!(lines[i]["tokens"], alone["tokens"], "prompt {i}: batched with a cache differs from alone");
    }
    // Text mode numbers the completions.
    let text = dlm_run(&["-m", g, "-n", "4", "--steps", "2", "--prompts", f]);
    assert!(text.status.success());
    let stdout = String::from_utf8(text.stdout).unwrap();
    assert!(stdout.starts_with("--- 1 ---\n") && stdout.contains("\n--- 3 ---\n"), "{stdout}");
    // Errors: no prompts, --prompts with -p or -f, with --dump-logits, a zero batch.
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();
    let e = empty.to_str().unwrap();
    for (args, says) in [
        (vec!["-m", g, "--prompts", e], "no prompts"),
        (vec!["-m", g, "--prompts", f, "-p", "hi"], "cannot be used with"),
        (vec!["-m", g, "--prompts", f, "-f", f], "cannot be used with"),
        (vec!["-m", g, "--prompts", f, "--dump-logits", "x.npy"], "--dump-logits"),
        (vec!["-m", g, "--prompts", f, "-b", "0"], "--batch-size"),
        (vec!["-m", g, "--prompts", "/nonexistent/prompts.txt"], "/nonexistent/prompts.txt"),
        (vec!["-m", g, "-f", "/nonexistent/prompt.txt"], "/nonexistent/prompt.txt"),
    ] {
        let out = dlm_run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn backend_flags_pick_the_engine_and_refuse_what_cannot_run() {
    let list = dlm_run(&["--list-devices"]);
    assert!(list.status.success());
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(listed.contains("cpu: ggml CPU backend") && listed.contains("--backend auto: "), "{listed}");
    let tmp = tempfile::tempdir().unwrap();
    let gguf = convert(&tiny(tmp.path()), OutType::F32);
    let g = gguf.to_str().unwrap();
    let base = ["-m", g, "-p", "Today is", "-n", "8", "--steps", "4", "--temp", "0", "--unmask", "confidence", "--json"];
    let cpu = json(&dlm_run(&[&base[..], &["--backend", "cpu"]].concat()));
    let ngl0 = json(&dlm_run(&[&base[..], &["-ngl", "0"]].concat()));
    assert_eq!(cpu["tokens"], ngl0["tokens"], "-ngl 0 runs on the CPU");
    if listed.contains("wgpu device 0") {
        let gpu = json(&dlm_run(&[&base[..], &["--backend", "wgpu"]].concat()));
        assert_eq!(cpu["tokens"], gpu["tokens"], "greedy decoding agrees across backends on an f32 model");
        let partial = dlm_run(&[&base[..], &["--backend", "wgpu", "-ngl", "1"]].concat());
        assert_eq!(partial.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&partial.stderr).contains("partial offload"), "{}", String::from_utf8_lossy(&partial.stderr));
    } else {
        eprintln!("no wgpu adapter: the wgpu half of this test is skipped");
    }
    // ggml's own GPU backends, in builds with one and a device (lavapipe through ggml-Vulkan
    // needs GGML_VK_VISIBLE_DEVICES=0): several steps, so cached graphs are run again.
    for api in ["cuda", "metal", "vulkan"] {
        if listed.contains(&format!("{api} device 0")) {
            let gpu = json(&dlm_run(&[&base[..], &["--backend", api]].concat()));
            assert_eq!(cpu["tokens"], gpu["tokens"], "greedy decoding on ggml {api} agrees with the CPU");
        }
    }
    let bad = dlm_run(&[&base[..], &["--backend", "wgpu", "--device", "99"]].concat());
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no wgpu adapter 99"), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// dlm-run with `input` on standard input.
fn dlm_run_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_dlm-run"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn prompt_input_follows_llama_cpp_habits() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tiny(tmp.path());
    let gguf = convert(&hf, OutType::Q8_0);
    let g = gguf.to_str().unwrap();
    let common = ["-m", g, "-n", "4", "--steps", "2", "-s", "3", "-t", "2", "--json"];
    // As typed in a shell: a backslash and an n. `text` has the newline itself.
    let multi = r"Today is a wonderful day,\nThe capital of France is";
    let text = multi.replace(r"\n", "\n");
    let by_p = json(&dlm_run(&[&common[..], &["-p", &text]].concat()));
    // -f is one prompt, the whole file (its trailing newline dropped): a two-line file is one
    // generation, the same as -p with that text.
    let file = tmp.path().join("prompt.txt");
    std::fs::write(&file, format!("{}\n", text)).unwrap();
    let by_f = json(&dlm_run(&[&common[..], &["-f", file.to_str().unwrap()]].concat()));
    assert_eq!(by_f["prompt_tokens"], by_p["prompt_tokens"]);
    assert_eq!(by_f["tokens"], by_p["tokens"]);
    // The same text on standard input, when there is no -p.
    let by_stdin = json(&dlm_run_stdin(&common, &format!("{}\n", text)));
    assert_eq!(by_stdin["prompt_tokens"], by_p["prompt_tokens"]);
    // -e turns a typed \n into a newline; without it the backslash stays.
    let escaped = json(&dlm_run(&[&common[..], &["-e", "-p", multi]].concat()));
    assert_eq!(escaped["prompt_tokens"], by_p["prompt_tokens"]);
    let raw = json(&dlm_run(&[&common[..], &["-p", multi]].concat()));
    assert_ne!(raw["prompt_tokens"], by_p["prompt_tokens"]);
    // --prompts - reads a batch from standard input: one JSON line per prompt.
    let out = dlm_run_stdin(&[&common[..], &["--prompts", "-"]].concat(), &format!("{}\n", text));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2);
    // Special-token text in a prompt is warned about.
    let out = dlm_run(&[&common[..], &["-p", "Hello <s> world"]].concat());
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: the prompt contains the text of a special token"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = dlm_run(&[&common[..], &["-p", "Hello world"]].concat());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("special token"));
}

#[test]
fn flags_that_do_nothing_say_so_and_the_live_views_show_the_final_text() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = convert(&tiny(tmp.path()), OutType::Q8_0);
    let g = gguf.to_str().unwrap();
    let stderr = |args: &[&str]| {
        let out = dlm_run(&[&["-m", g, "-p", "Hi", "-n", "4", "-s", "1", "-t", "2"][..], args].concat());
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let quiet = stderr(&[]);
    assert!(!quiet.contains("warning:") && !quiet.contains("note:"), "a plain run warns: {quiet}");
    for (args, said) in [
        (&["--unmask", "confidence", "--threshold", "0.7"][..], "--threshold applies only to --unmask threshold; this run uses --unmask confidence"),
        (&["-b", "4"], "-b/--batch-size applies only to a batch of prompts"),
        (&["--cache", "prefix"], "--cache without --block-length"),
        (&["--backend", "cpu", "--device", "0"], "--device and -ngl have no effect"),
        (&["--unmask", "origin", "--temp", "0"], "--unmask origin still picks which positions"),
        (&["--mask-id", "2"], "mask id 2 is also the EOS token"),
        (&["--unmask", "origin", "--steps", "64"], "of --steps 64: steps that commit nothing run no forward pass"),
        (&["--unmask", "confidence", "--steps", "64"], "(4 of --steps 64: only 4 positions to commit)"),
    ] {
        let err = stderr(args);
        assert!(err.contains(said), "{args:?}: `{said}` not in: {err}");
    }

    // --visual into a file: one plain line per step, no escape codes, the last one the final text.
    let out = dlm_run(&["-m", g, "-p", "Once upon a time", "-n", "24", "--steps", "8", "-s", "3", "-t", "2", "--unmask", "confidence", "--visual"]);
    assert!(out.status.success());
    let (text, err) = (String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').to_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!err.contains('\x1b'), "escape codes in a redirected stream: {err:?}");
    let frames: Vec<&str> = err.lines().filter(|l| l.starts_with("[step")).collect();
    assert_eq!(frames.len(), 8, "{err}");
    // stdout echoes the prompt, as llama.cpp does.
    assert_eq!(frames.last().unwrap().split_once("] ").unwrap().1, text, "last frame vs final text");
    assert!(frames[0].contains('_'), "masked positions are drawn: {}", frames[0]);

    // --visual on a terminal of 8 rows: redrawn in place, never taller than the terminal, no
    // clear-screen; the final frame ends with the final text.
    let cmd = format!(
        "stty rows 8 cols 40; {} -m {g} -p 'Once upon a time' -n 200 --steps 10 -s 3 -t 2 --unmask confidence --visual",
        env!("CARGO_BIN_EXE_dlm-run")
    );
    let tty = Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().unwrap();
    assert!(tty.status.success(), "{}", String::from_utf8_lossy(&tty.stderr));
    let shown = String::from_utf8_lossy(&tty.stdout).into_owned();
    assert!(!shown.contains("\x1b[2J"), "clears the whole screen");
    // Each frame starts with clear-to-end and, from the second, a cursor-up over the last one.
    let frames: Vec<&str> = shown.split("\x1b[J").skip(1).collect();
    assert_eq!(frames.len(), 10, "one frame per step: {shown:?}");
    for f in &frames[..9] {
        let up = f.rfind("\x1b[").expect("the next frame's cursor-up");
        let (body, code) = f.split_at(up);
        let code = code.trim_end_matches('\r');
        let lines = body.matches('\n').count();
        assert!(lines <= 7 && code == format!("\x1b[{lines}A"), "a frame of {lines} lines on an 8-row terminal, then {code:?}");
    }
    // The last frame: the header says how much is cut, then the end of the final text.
    let plain = |t: &str| t.replace("\x1b[2m", "").replace("\x1b[0m", "").chars().filter(|c| !c.is_control()).collect::<String>();
    let last: Vec<&str> = frames[9].split('\n').collect();
    assert!(last[0].contains("0 masked") && last[0].contains("(first"), "{:?}", last[0]);
    let rows = plain(&last[1..7].concat());
    let out = dlm_run(&["-m", g, "-p", "Once upon a time", "-n", "200", "--steps", "10", "-s", "3", "-t", "2", "--unmask", "confidence"]);
    let text = plain(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'));
    assert!(rows.len() > 100 && text.ends_with(&rows), "last frame {rows:?} is not the end of the final text {text:?}");
}

#[test]
fn info_and_tokenizer_tools_need_no_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tiny(tmp.path());
    // Tensor types per quantization, as PyPI gguf (an independent reader) counts them.
    let count_types = "import collections, gguf, sys\n\
        r = gguf.GGUFReader(sys.argv[1])\n\
        c = collections.Counter(t.tensor_type.name.lower() for t in r.tensors)\n\
        print(', '.join(f'{n} {t}' for t, n in sorted(c.items())))";
    for kind in [OutType::F32, OutType::F16, OutType::Bf16, OutType::Q8_0, OutType::Q4_0, OutType::Q4_K_M, OutType::Q6_K] {
        let gguf = convert(&hf, kind);
        let g = gguf.to_str().unwrap();
        let out = dlm_run(&["-m", g, "--info"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{}: {}", kind.name(), String::from_utf8_lossy(&out.stderr));
        let py = Command::new("python3").args(["-c", count_types, g]).output().unwrap();
        assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
        let want = String::from_utf8_lossy(&py.stdout).trim().to_owned();
        assert!(text.contains(&format!("tensor types: {want}\n")), "{}: `{want}` not in:\n{text}", kind.name());
        for line in ["architecture: llama", "layers 2, embedding 256, heads 4 (kv 4), head dim 64", "vocab 32000", "attention: bidirectional (file)", "mask id: 811 (file)", "logits shifted: true (file)", "chat template: none"] {
            assert!(text.contains(line), "{}: `{line}` not in:\n{text}", kind.name());
        }
        std::fs::remove_file(&gguf).unwrap();
    }
    let gguf = convert(&hf, OutType::Q8_0);
    let g = gguf.to_str().unwrap();
    // llama-tokenizer-js's published case: "grabbed" -> [1, 2646, 1327, 287].
    let ids = dlm_run(&["-m", g, "--tokenize", "-p", "grabbed", "--json"]);
    assert_eq!(String::from_utf8_lossy(&ids.stdout).trim(), "[1,2646,1327,287]", "{}", String::from_utf8_lossy(&ids.stderr));
    let lines = dlm_run(&["-m", g, "--tokenize", "-p", "grabbed"]);
    let listed: Vec<String> = String::from_utf8_lossy(&lines.stdout).lines().map(|l| l.split_whitespace().next().unwrap().to_owned()).collect();
    assert_eq!(listed, ["1", "2646", "1327", "287"]);
    assert!(String::from_utf8_lossy(&lines.stdout).starts_with("     1 \"<s>\"\n"), "{}", String::from_utf8_lossy(&lines.stdout));
    let text = dlm_run(&["-m", g, "--detokenize", "-p", "1, 2646 1327,287"]);
    assert_eq!(String::from_utf8_lossy(&text.stdout), "grabbed\n");
    let bad = dlm_run(&["-m", g, "--detokenize", "-p", "1 32000"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`32000` is not a token id of this 32000-token vocabulary"));
}

#[test]
fn llama_cpp_output_flags_echo_stop_context_verbosity_completions() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tiny(tmp.path());
    let gguf = convert(&hf, OutType::Q8_0);
    let g = gguf.to_str().unwrap();
    let prompt = "Once upon a time";
    // Blocks of 4 commit left to right, so a stop string in the middle ends the run early.
    let base = ["-m", g, "-p", prompt, "-n", "24", "--steps", "24", "-s", "5", "-t", "2", "--unmask", "confidence", "--block-length", "4"];
    let run = |extra: &[&str]| {
        let out = dlm_run(&[&base[..], extra].concat());
        assert!(out.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let full = json(&dlm_run(&[&base[..], &["--json"]].concat()));
    let generated = full["text"].as_str().unwrap().to_owned();

    // The prompt is echoed first, as llama.cpp does; --no-display-prompt prints the generation
    // alone (what --json's "text" holds). Into a pipe, --color auto adds no escape codes.
    let (echoed, _) = run(&[]);
    let (alone, _) = run(&["--no-display-prompt"]);
    assert_eq!(alone, format!("{generated}\n"));
    let rest = echoed.strip_prefix(prompt).unwrap_or_else(|| panic!("prompt not echoed: {echoed:?}"));
    // The same text, its first token's leading space included, echoed, alone and in --json.
    assert_eq!(rest, alone, "echoed text vs the generation alone");
    assert!(!echoed.contains('\x1b'));
    let (colored, _) = run(&["--color"]);
    assert!(colored.starts_with(&format!("\x1b[33m{prompt}\x1b[0m")), "{colored:?}");
    let (infill, _) = run(&["--suffix", " The end."]);
    assert!(infill.starts_with(prompt) && infill.ends_with(" The end.\n"), "{infill:?}");

    // --stop: what was committed before the stop string never changes, so the stopped text is
    // the full run's text cut before the string's first occurrence.
    let chars: Vec<char> = generated.chars().collect();
    assert!(chars.len() >= 12, "a longer generation is needed: {generated:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let want = &generated[..generated.find(&stop).unwrap()];
    let stopped = json(&dlm_run(&[&base[..], &["--json", "--stop", &stop, "--stop", "\u{1F999}never"]].concat()));
    assert_eq!(stopped["text"].as_str().unwrap(), want, "--stop {stop:?}");
    assert_eq!(stopped["stop"].as_str(), Some(stop.as_str()));
    assert!(stopped["steps"].as_u64() < full["steps"].as_u64(), "no pass after the stop: {} of {}", stopped["steps"], full["steps"]);
    let (plain, err) = run(&["--no-display-prompt", "--stop", &stop]);
    assert_eq!(plain, format!("{want}\n"));
    assert!(err.contains("was found in the final text"), "{err}");
    let out = dlm_run_stdin(&[&base[..2], &base[4..], &["--prompts", "-", "--json", "--stop", &stop]].concat(), &format!("{prompt}\n"));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["text"].as_str().unwrap(), want, "--stop in a batch");
    // --json's tokens end where its text does: they decode to the stopped text (less at most
    // the piece of one token cut by the stop string).
    let kept: Vec<u64> = stopped["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    let all: Vec<u64> = full["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    assert_eq!(kept[..], all[..kept.len()], "{stopped}");
    let text_of = |ids: &[u64]| {
        let list = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
        String::from_utf8(dlm_run(&["-m", g, "--detokenize", "-p", &list]).stdout).unwrap().trim_end_matches('\n').to_owned()
    };
    let want_alone = want.trim_start();
    assert!(want_alone.starts_with(&text_of(&kept)), "--json tokens beyond the stop: {:?} vs {want:?}", text_of(&kept));
    assert!(!want_alone.starts_with(&text_of(&all[..kept.len() + 1])), "--json tokens stop short of the stop string");

    // -c: the canvas limit, named in the error; beyond the trained context, a warning.
    let out = dlm_run(&[&base[..], &["-c", "10"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("exceeds -c 10"), "{err}");
    let (_, err) = run(&["-c", "100000"]);
    assert!(err.contains("warning: -c 100000 is longer than the"), "{err}");

    // -v: the settings and one line per pass; --log-disable: nothing but errors.
    let out = dlm_run(&[&base[..], &["-v", "--json"]].concat());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let steps = json(&out)["steps"].as_u64().unwrap() as usize;
    assert!(err.contains("settings: mask id 811, logits shifted true, attention bidirectional"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("step ")).count(), steps, "{err}");
    let (_, err) = run(&["--log-disable"]);
    assert!(err.is_empty(), "{err:?}");
    let out = dlm_run(&[&base[..], &["--log-disable", "--top-p", "2"]].concat());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: --top-p"), "{}", String::from_utf8_lossy(&out.stderr));

    // --verbose-prompt lists the ids --tokenize gives.
    let (_, err) = run(&["--verbose-prompt"]);
    let ids = dlm_run(&["-m", g, "-p", prompt, "--tokenize", "--json"]);
    let ids: Vec<u64> = serde_json::from_slice::<Vec<u64>>(&ids.stdout).unwrap();
    assert!(err.contains(&format!("prompt: {} tokens", ids.len())), "{err}");
    let listed: Vec<u64> = err.lines().filter(|l| l.contains(" -> ")).map(|l| l.split_whitespace().next().unwrap().parse().unwrap()).collect();
    assert_eq!(listed, ids);

    // Completions: bash parses the script and registers it; zsh's names its command.
    let bash = dlm_run(&["--completions", "bash"]);
    assert!(bash.status.success());
    let script = tmp.path().join("dlm-run.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    let check = Command::new("bash").args(["-c", &format!("source {} && complete -p dlm-run", script.display())]).output().unwrap();
    assert!(check.status.success() && String::from_utf8_lossy(&check.stdout).contains("dlm-run"), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(String::from_utf8_lossy(&bash.stdout).contains("--n-predict"));
    assert!(String::from_utf8_lossy(&dlm_run(&["--completions", "zsh"]).stdout).starts_with("#compdef dlm-run"));
    assert!(String::from_utf8_lossy(&dlm_run(&["--completions", "fish"]).stdout).contains("complete -c dlm-run"));
    assert_eq!(dlm_run(&["--completions", "tcsh"]).status.code(), Some(2));

    // --version names the backends and the linked ggml.
    let v = String::from_utf8(dlm_run(&["--version"]).stdout).unwrap();
    assert!(v.contains("backends: cpu (ggml)"), "{v}");
    let ggml = v.lines().find_map(|l| l.strip_prefix("ggml: ")).unwrap_or_else(|| panic!("{v}"));
    let parts: Vec<&str> = ggml.split_whitespace().next().unwrap().split('.').collect();
    assert!(parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok()), "ggml version {ggml:?}");
}

/// What tripped llama.cpp users (issue 31): the default `-n` fits the context the prompt
/// leaves (an explicit one still errors), llama.cpp's multi-letter short flags are read whole
/// (`-hf` printed help and exited 0, `-cnv` was `-c nv`), and a missing `-m` is one line in
/// every binary that runs a model.
#[test]
fn llama_cpp_habits_default_length_multi_letter_flags_missing_model() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = convert(&tiny(tmp.path()), OutType::Q8_0);
    let g = gguf.to_str().unwrap();
    let prompt = "Today is a wonderful day,";
    let ids = dlm_run(&["-m", g, "-p", prompt, "--tokenize"]);
    let n_prompt = String::from_utf8_lossy(&ids.stdout).lines().count();
    assert!(n_prompt > 2, "{ids:?}");
    let run = |extra: &[&str]| dlm_run(&[&["-m", g, "-p", prompt, "-s", "1", "-t", "2", "--steps", "4", "-c", "16"], extra].concat());
    let fitted = run(&["--json"]);
    let err = String::from_utf8_lossy(&fitted.stderr);
    assert!(err.contains(&format!("note: -n {}: the room a context of 16 tokens leaves after the prompt", 16 - n_prompt)), "{err}");
    assert!(json(&fitted)["steps"].as_u64().unwrap() >= 1);
    let explicit = run(&["-n", "128"]);
    assert_eq!(explicit.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&explicit.stderr).contains("exceeds -c 16"), "{explicit:?}");

    let one_line = |out: &Output, text: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: ") && err.contains(text), "{err}");
        assert!(out.stdout.is_empty());
    };
    one_line(&dlm_run(&["-hf", "foo/bar", "-p", "x"]), "dlm does not download models; see README: Getting a model");
    one_line(&dlm_run(&["-m", g, "-cnv"]), "no chat template");
    one_line(&dlm_run(&["-m", g, "-sysf", "f", "-p", "x"]), "--system-prompt");
    one_line(&dlm_run(&["-m", g, "-p", "x", "-ctk", "q8_0"]), "-ctk");
    one_line(&dlm_run(&["-m", g, "-hfrd", "org/repo"]), "-hfrd is a llama.cpp flag dlm does not have: dlm does not download models");
    let out = run(&["-co", "-n", "2"]);
    assert!(out.status.success() && out.stdout.starts_with(b"\x1b[33m"), "-co is --color on: {out:?}");
    one_line(&dlm_run(&["-m", g, "-p", &"x ".repeat(40), "-c", "16"]), "leave no room to generate in -c 16");
    // Those dlm has: -fa (with llama.cpp's on/off/auto, or bare) and -ngl.
    for fa in [&["-fa", "off"][..], &["-fa"], &["-fa", "auto"], &["-ngl", "0"]] {
        let out = run(&[fa, &["-n", "4"]].concat());
        assert!(out.status.success(), "{fa:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Rough edges: llama.cpp's infill names, --info in words, completions for every binary,
    // dlm-eval's settings as written.
    let infill = |flags: [&str; 2]| String::from_utf8(run(&[flags[0], "copy 12: ", flags[1], " end", "-n", "4"]).stdout).unwrap();
    assert_eq!(infill(["--in-prefix", "--in-suffix"]), infill(["-p", "--suffix"]));
    let info = String::from_utf8(dlm_run(&["-m", g, "--info"]).stdout).unwrap();
    assert!(info.contains("BOS 1 \"<s>\"") && info.contains("adds BOS: yes"), "{info}");
    assert!(!info.contains("Some(") && !info.contains("EmbeddedJson"), "Rust debug text in --info: {info}");
    for bin in [env!("CARGO_BIN_EXE_dlm-eval"), env!("CARGO_BIN_EXE_dlm-score")] {
        let out = Command::new(bin).args(["--completions", "bash"]).output().unwrap();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("complete -F"), "{bin}: {out:?}");
    }
    let problems = tmp.path().join("p.jsonl");
    std::fs::write(&problems, "{\"task\": \"copy\", \"prompt\": \"copy 12:\", \"answer\": \" 12\", \"n\": 3}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dlm-eval"))
        .args(["-m", g, "--problems", problems.to_str().unwrap(), "-t", "2", "--unmask", "threshold", "--threshold", "0.9", "--temp", "0.7"])
        .output()
        .unwrap();
    let settings = &json(&out)["settings"];
    assert_eq!((settings["threshold"].to_string(), settings["temp"].to_string(), settings["unmask"].to_string()), ("0.9".into(), "0.7".into(), "\"threshold\"".into()));

    // The README section -hf's error points to exists, and no project file points outside the
    // repository (../shared is not in a clone).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains("\n## Getting a model\n"), "README: Getting a model is missing");
    for f in ["README.md", "Cargo.toml", "src/lib.rs", "convert/src/lib.rs", "docs/DESIGN.md"] {
        assert!(!std::fs::read_to_string(root.join(f)).unwrap().contains("../shared"), "{f} points outside the repository");
    }
    let server = PathBuf::from(env!("CARGO_BIN_EXE_dlm-run")).with_file_name("dlm-server");
    assert!(server.exists(), "{} is missing: run the tests of the whole workspace", server.display());
    for bin in [PathBuf::from(env!("CARGO_BIN_EXE_dlm-run")), PathBuf::from(env!("CARGO_BIN_EXE_dlm-eval")), server] {
        for args in [&[][..], &["-t", "2"]] {
            one_line(&Command::new(&bin).args(args).output().unwrap(), "-m/--model is required");
        }
    }
}

/// DiffuLLaMA's defaults change at -n 64 (issue 32: blocks of 32, threshold 0.9, a step per
/// token as the budget); flags still win, and a run at the defaults is the run with those flags.
#[test]
fn long_answers_take_the_long_answer_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = convert(&tiny(tmp.path()), OutType::Q8_0);
    let g = gguf.to_str().unwrap();
    let info = |extra: &[&str]| {
        let out = dlm_run(&[&["-m", g, "--info"], extra].concat());
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let short = info(&["-n", "63"]);
    assert!(short.contains("--steps 64 --unmask threshold --block-length off --threshold 0.5 "), "{short}");
    assert!(short.contains("defaults by length (--unmask threshold): -n below 64: steps 64, threshold 0.5, one block; -n 64 and more: a step per token"), "{short}");
    assert!(info(&["-n", "64"]).contains("--steps 64 --unmask threshold --block-length 32 --threshold 0.9 "));
    // Whole blocks: 200 positions are 7 blocks of 32, each with a step per position.
    assert!(info(&["-n", "200"]).contains("--steps 224 --unmask threshold --block-length 32 --threshold 0.9 "));
    // Another rule keeps the family's defaults (the paper's origin sampler is unchanged).
    let origin = info(&["-n", "200", "--unmask", "origin"]);
    assert!(origin.contains("--steps 64 --unmask origin --block-length off --threshold 0.5 "), "{origin}");
    let given = info(&["-n", "200", "--steps", "50", "--block-length", "8", "--threshold", "0.7"]);
    assert!(given.contains("--steps 50 --unmask threshold --block-length 8 --threshold 0.7 "), "{given}");
    let run = |extra: &[&str]| json(&dlm_run(&[&["-m", g, "-p", "Once upon a time", "-n", "96", "-s", "2", "-t", "2", "--json"], extra].concat()));
    let default = run(&[]);
    let explicit = run(&["--unmask", "threshold", "--steps", "96", "--block-length", "32", "--threshold", "0.9"]);
    assert_eq!(default["tokens"], explicit["tokens"]);
    assert_eq!(default["steps"], explicit["steps"]);
    let old = run(&["--steps", "64", "--block-length", "96", "--threshold", "0.5"]);
    assert_ne!(default["steps"], old["steps"], "the short-answer defaults give the same run: {default} {old}");
    // Fewer steps than blocks: a pass per block all the same, and the run says so.
    let out = dlm_run(&["-m", g, "-p", "Once upon a time", "-n", "96", "-s", "2", "-t", "2", "--json", "--steps", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("note: --steps 2 is fewer than the 3 blocks of 32 in -n 96: each block the run reaches takes a pass"), "{err}");
    assert!(json(&out)["steps"].as_u64().unwrap() >= 3, "{err}");
}

/// The library's front door gives what the binaries print: `Session::generate` equals
/// `dlm-run --json` for the same settings and seed (family defaults and explicit ones, an
/// infill), and `Session::score` equals `dlm-score likelihood`.
#[test]
fn session_equals_dlm_run_and_dlm_score() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = convert(&tiny(tmp.path()), OutType::Q8_0);
    let g = gguf.to_str().unwrap();
    let mut s = dlm::Session::load_with(&gguf, &dlm::LoadOptions { threads: 2, ..Default::default() }).unwrap();
    let cases: Vec<(Vec<&str>, dlm::Settings)> = vec![
        (vec!["-n", "12", "-s", "3"], dlm::Settings { n: 12, seed: 3, ..Default::default() }),
        (
            vec!["-n", "12", "-s", "4", "--steps", "6", "--unmask", "confidence", "--temp", "0.5", "--top-k", "5", "--block-length", "4"],
            dlm::Settings { n: 12, seed: 4, steps: Some(6), unmask: Some(dlm::model::UnmaskRule::Confidence), temp: Some(0.5), top_k: Some(5), block_length: Some(4), ..Default::default() },
        ),
        (vec!["-n", "6", "-s", "5", "--suffix", " and the end."], dlm::Settings { n: 6, seed: 5, suffix: " and the end.".into(), ..Default::default() }),
        // A long answer: both take the long-answer defaults.
        (vec!["-n", "80", "-s", "6"], dlm::Settings { n: 80, seed: 6, ..Default::default() }),
    ];
    for (flags, settings) in cases {
        let cli = json(&dlm_run(&[&["-m", g, "-p", "Today is a wonderful day,", "-t", "2", "--json"][..], &flags].concat()));
        let out = s.generate("Today is a wonderful day,", &settings).unwrap();
        assert_eq!(serde_json::json!(out.tokens), cli["tokens"], "{flags:?}");
        assert_eq!(out.text, cli["text"].as_str().unwrap(), "{flags:?}");
        assert_eq!(serde_json::json!(out.steps), cli["steps"], "{flags:?}");
    }
    let scored = Command::new(env!("CARGO_BIN_EXE_dlm-score"))
        .args(["likelihood", "-m", g, "--context", "Today is a", "--continuation", " wonderful day", "-t", "2", "--json"])
        .output()
        .unwrap();
    assert!(scored.status.success(), "{}", String::from_utf8_lossy(&scored.stderr));
    let want: serde_json::Value = serde_json::from_slice(&scored.stdout).unwrap();
    let got = s.score("Today is a", " wonderful day").unwrap();
    assert!((got.score - want["score"].as_f64().unwrap()).abs() < 1e-9, "{} vs {}", got.score, want["score"]);
    // Bad settings are errors, not panics.
    assert!(s.generate("x", &dlm::Settings { n: 0, ..Default::default() }).is_err());
    assert!(s.generate("x", &dlm::Settings { n: 100_000, ..Default::default() }).is_err());
    assert!(s.generate("x", &dlm::Settings { n: usize::MAX, ..Default::default() }).is_err());
    assert!(s.generate("x", &dlm::Settings { temp: Some(f32::NAN), ..Default::default() }).is_err());
}

#[test]
fn device_candidates_give_the_same_greedy_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny.gguf");
    common::convert_to(&common::root().join("models/diffullama-tiny"), OutType::Q8_0, false, &out);
    let g = out.to_str().unwrap();
    for rule in ["confidence", "threshold", "origin"] {
        let run = |flag: &str| json(&dlm_run(&["-m", g, "-p", "add 25 17:", "-n", "8", "--temp", "0", "--unmask", rule, "-s", "3", "-t", "2", "--json", "--device-candidates", flag]));
        let (off, on) = (run("off"), run("on"));
        assert_eq!(off["tokens"], on["tokens"], "{rule}");
        assert_eq!(off["text"], run("auto")["text"], "{rule}");
    }
    let bad = dlm_run(&["-m", g, "-p", "x", "--device-candidates", "sometimes"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("device-candidates"), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// `-cnv`: each line of standard input is a user message rendered with the conversation so far
/// through the chat template; each answer equals `dlm-run -p RENDERED` with the turn's seed
/// (seed + turn index); a system prompt comes first; /exit ends; Ctrl-C ends an answer, not
/// the program; a model without a template is one error line.
#[test]
fn conversation_mode_renders_the_history_and_survives_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny.gguf");
    common::convert_to(&common::root().join("models/diffullama-tiny"), OutType::Q8_0, false, &model);
    let m = model.to_str().unwrap();
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let single = |prompt: &str, seed: u64| {
        let out = dlm_run(&["-m", m, "-p", prompt, "-n", "8", "-s", &seed.to_string(), "-t", "2", "--no-display-prompt"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // Only the last message: each turn is the plain prompt.
    let last = write("last.jinja", "{{ messages[-1].content }}");
    let out = dlm_run_stdin(&["-m", m, "-cnv", "--chat-template", &last, "-n", "8", "-s", "10", "-t", "2"], "copy 6859:\n\ncopy 7\\\n59:\n/exit\ncopy 1:\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    // A line ending in \ continues on the next; nothing after /exit is read.
    assert_eq!(answers, [single("copy 6859:", 10), single("copy 7\n59:", 11)]);
    // The whole history, answers and system prompt included, reaches the template.
    let all = write("all.jinja", "{% for m in messages %}{{ m.content }}{% endfor %}");
    let out = dlm_run_stdin(&["-m", m, "-cnv", "--chat-template", &all, "-sys", "copy 1:", "-n", "8", "-s", "20", "-t", "2"], "copy 6859:\ncopy 759:\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    let first = single("copy 1:copy 6859:", 20);
    assert_eq!(answers, [first.clone(), single(&format!("copy 1:copy 6859:{first}copy 759:"), 21)]);
    // Ctrl-C during a long answer ends that answer; the next message is still read.
    let mut child = Command::new(env!("CARGO_BIN_EXE_dlm-run"))
        .args(["-m", m, "-cnv", "--chat-template", &last, "-c", "512", "-n", "400", "--steps", "400", "--unmask", "random", "-t", "2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::{BufRead as _, Write as _};
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"copy 6859:\n").unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("seed:") {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "no seed line");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
        std::thread::sleep(std::time::Duration::from_millis(300));
        stdin.write_all(b"/exit\n").unwrap();
        drop(stdin);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{rest}");
        assert!(rest.contains("answer interrupted"), "{rest}");
    }
    // No template in the file and none given: one line, exit 2.
    let out = dlm_run_stdin(&["-m", m, "-cnv", "-n", "8"], "hi\n");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().count() == 1 && err.contains("no chat template") && err.contains("--chat-template"), "{err}");
}
