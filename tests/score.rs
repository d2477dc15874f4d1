//! Scoring (`dlm::score`, `dlm-score`) on the trained tiny DiffuLLaMA: the likelihood against an
//! independent numpy `eval_forward` (tests/ref_score.py) and against llama.cpp's own graph on
//! the same masks; multiple choice far above chance, and below it when generation is broken on
//! purpose; KL of a file with itself exactly 0 and growing as bits shrink; hostile inputs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{convert_to, python, root};
use dlm::backend::ggml::{LlamaCpp, LlamaCppOptions};
use dlm::score::{self, ScoreParams, Target};
use dlm::{Backend, Gguf, LoadOptions, Model, Tokenizer};
use dlm_convert::OutType;

fn tiny(dir: &Path, kind: OutType) -> PathBuf {
    let out = dir.join(format!("tiny-{}.gguf", kind.name()));
    if !out.exists() {
        convert_to(&root().join("models/diffullama-tiny"), kind, false, &out);
    }
    out
}

fn dlm_score(args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["-t", "2", "--backend", "cpu"]);
    Command::new(env!("CARGO_BIN_EXE_dlm-score")).args(&all).output().unwrap()
}

fn json_of(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = dlm_score(&all);
    assert!(out.status.success(), "dlm-score {all:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// The error line of a run that must fail with exit code 2.
fn fails(args: &[&str]) -> String {
    let out = dlm_score(args);
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(2), "dlm-score {args:?} should exit 2: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// Every `k`-th line of a file of the held-out set, written to `dir/name`.
fn sample_lines(src: &str, k: usize, name: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join(src)).unwrap();
    let out = dir.join(name);
    std::fs::write(&out, text.lines().step_by(k).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    out
}

#[test]
fn likelihood_matches_numpy_eval_forward_and_llamacpp_on_the_same_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny(tmp.path(), OutType::F32);
    let tok = Tokenizer::from_gguf(&Gguf::open(&file).unwrap()).unwrap();
    let enc = |s: &str| tok.encode(s).unwrap();
    let tail = |s: &str| enc(s)[1..].to_vec();
    // A wrong copy, a right English sentence, a wrong infill (with its suffix): scores of
    // 0.1 to 10 nats, so relative errors mean something.
    let targets = vec![
        Target::new(&enc("copy 6859:"), &tail(" 6856"), &[]),
        Target::new(&enc("On a happy evening,"), &tail(" the child plays near the garden."), &[]),
        Target::new(&enc("rev:"), &tail(" 9142"), &tail("= 2489")),
    ];
    let p = ScoreParams { levels: 5, draws: 2, seed: 3, mask_id: 811, shift: true, max_seqs: 7, max_tokens: 4096 };
    let seeds: Vec<u64> = (0..3).map(|i| score::item_seed(p.seed, i)).collect();
    let mut model = Model::load(&file, &LoadOptions { threads: 2, backend: Backend::Cpu, ..Default::default() }).unwrap();
    let (ours, cost) = score::likelihoods(&mut model, &targets, &seeds, &p).unwrap();
    assert_eq!(cost.copies, 3 * 5 * 2);
    assert!(cost.passes <= 5, "30 copies in passes of 7: {cost:?}");

    let masks = serde_json::json!({
        "mask_id": p.mask_id, "shift": p.shift, "levels": p.levels, "draws": p.draws,
        "targets": targets.iter().zip(&seeds).map(|(t, &s)| serde_json::json!({
            "tokens": t.tokens, "scored": t.scored,
            "copies": score::draw_masks(t, &p, s).iter().map(|c| serde_json::json!({"level": c.level, "draw": c.draw, "masked": c.masked})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    let (mpath, rpath) = (tmp.path().join("masks.json"), tmp.path().join("ref.json"));
    std::fs::write(&mpath, masks.to_string()).unwrap();
    python(&["tests/ref_score.py", "--gguf", file.to_str().unwrap(), "--masks", mpath.to_str().unwrap(), "--out", rpath.to_str().unwrap()]);
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&rpath).unwrap()).unwrap();
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    for (i, (o, r)) in ours.iter().zip(reference["targets"].as_array().unwrap()).enumerate() {
        let (rs, re) = (r["score"].as_f64().unwrap(), r["elbo"].as_f64().unwrap());
        println!("target {i}: score {:.6} (numpy {rs:.6}), bound {:.6} (numpy {re:.6}), se {:?}", o.score, o.elbo, o.score_se);
        assert!(rs > 0.1, "target {i} scores {rs}: too small for a relative check");
        assert!(rel(o.score, rs) <= 1e-5 && rel(o.elbo, re) <= 1e-5, "target {i}: {o:?} vs numpy {r}");
        assert!(o.score_se.is_some_and(|s| s > 0.0), "two draws give a standard error");
    }

    // llama.cpp's own graph (one llama_decode per masked copy) on the same masks.
    let mut peer = LlamaCpp::load(&file, &LlamaCppOptions::new(2, 128)).unwrap();
    let (theirs, _) = score::likelihoods(&mut peer, &targets, &seeds, &p).unwrap();
    for (o, t) in ours.iter().zip(&theirs) {
        assert!(rel(o.score, t.score) <= 1e-4 && rel(o.elbo, t.elbo) <= 1e-4, "dlm {o:?} vs llama.cpp {t:?}");
    }

    // The check can fail: unshifted logits (LLaDA's reading) are far from eval_forward.
    let unshifted = ScoreParams { shift: false, ..p.clone() };
    let (wrong, _) = score::likelihoods(&mut model, &targets, &seeds, &unshifted).unwrap();
    let r0 = reference["targets"][1]["score"].as_f64().unwrap();
    assert!(rel(wrong[1].score, r0) > 0.1, "unshifted {} vs {r0}", wrong[1].score);
}

#[test]
fn multiple_choice_ranks_the_right_answer_far_above_chance() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny(tmp.path(), OutType::Q4_0);
    // 100 items per task in the file: every 10th gives 10 per task.
    let items = sample_lines("models/tasks/choice.jsonl", 10, "items.jsonl", tmp.path());
    let per_item = tmp.path().join("per-item.jsonl");
    let m = file.to_str().unwrap();
    let base = ["choice", "-m", m, "--items", items.to_str().unwrap(), "--levels", "8"];
    let r = json_of(&[&base[..], &["--per-item", per_item.to_str().unwrap()]].concat());
    let acc = r["accuracy"].as_f64().unwrap();
    println!("q4_0 multiple choice: {r}");
    assert_eq!(r["items"], 70);
    assert_eq!(r["chance"], 0.25);
    assert!(acc >= 0.8, "accuracy {acc}");
    for task in ["copy", "reverse", "sort", "infill", "english"] {
        let a = r["tasks"][task]["accuracy"].as_f64().unwrap();
        assert!(a >= 0.8, "{task}: {a}");
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&per_item).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 70);
    let right = lines.iter().filter(|l| l["correct"] == true).count();
    assert_eq!(right as f64 / 70.0, acc);
    for l in &lines {
        let s: Vec<f64> = l["scores"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let best = (0..s.len()).fold(0, |b, k| if s[k] < s[b] { k } else { b });
        assert_eq!(l["pred"], best, "{l}");
    }
    // Same seed, same numbers; another seed draws other masks.
    assert_eq!(json_of(&base)["accuracy"], r["accuracy"]);

    // Broken on purpose: logits read unshifted fall below chance; a wrong mask token costs
    // accuracy but not all of it (the choice's unmasked tokens still carry the comparison).
    let unshifted = json_of(&[&base[..], &["--shift", "false"]].concat())["accuracy"].as_f64().unwrap();
    let wrong_mask = json_of(&[&base[..], &["--mask-id", "0"]].concat())["accuracy"].as_f64().unwrap();
    println!("broken: unshifted {unshifted}, mask id 0 {wrong_mask}");
    assert!(unshifted < 0.4, "unshifted still scores {unshifted}");
    assert!(wrong_mask < acc, "a wrong mask token scores {wrong_mask}, the right one {acc}");
}

#[test]
fn kl_divergence_is_zero_for_the_same_file_and_grows_as_bits_shrink() {
    let tmp = tempfile::tempdir().unwrap();
    let text = sample_lines("models/tasks/test.txt", 7, "text.txt", tmp.path());
    let base = tmp.path().join("base.kld");
    let f32 = tiny(tmp.path(), OutType::F32);
    let b = base.to_str().unwrap();
    let saved = json_of(&["perplexity", "-m", f32.to_str().unwrap(), "-f", text.to_str().unwrap(), "--per-line", "--levels", "4", "--kl-divergence-base", b]);
    assert_eq!(saved["windows"], 100);
    let mut last = -1.0;
    for kind in [OutType::F32, OutType::F16, OutType::Q8_0, OutType::Q6_K, OutType::Q4_K_M, OutType::Q4_0] {
        let f = tiny(tmp.path(), kind);
        let r = json_of(&["perplexity", "-m", f.to_str().unwrap(), "--kl-divergence-base", b, "--kl-divergence"]);
        let k = &r["kld"];
        let (kl, same) = (k["mean_kld"].as_f64().unwrap(), k["same_top1"].as_f64().unwrap());
        println!("{}: mean KL {kl:.3e} ± {:.1e}, same top-1 {same:.4}, score {} vs {}", kind.name(), k["mean_kld_se"].as_f64().unwrap(), k["score"], k["score_base"]);
        // The base's score recomputed from its stored 16-bit rows.
        let (sb, s0) = (k["score_base"].as_f64().unwrap(), saved["score"].as_f64().unwrap());
        assert!((sb - s0).abs() <= 1e-5 * s0, "base score {sb} from the file, {s0} when saved");
        if kind == OutType::F32 {
            assert_eq!(kl, 0.0, "a file against itself");
            assert_eq!(same, 1.0);
            assert_eq!(k["score"], k["score_base"]);
        } else {
            assert!(kl > last, "{}: KL {kl} not above the previous type's {last}", kind.name());
        }
        last = kl;
    }
    assert!(last > 1e-3, "q4_0 must differ visibly: {last}");

    // A truncated base file, a base compared while -f is given, garbage instead of a base.
    let bytes = std::fs::read(&base).unwrap();
    let cut = tmp.path().join("cut.kld");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let m = f32.to_str().unwrap();
    let e = fails(&["perplexity", "-m", m, "--kl-divergence-base", cut.to_str().unwrap(), "--kl-divergence"]);
    assert!(e.contains("cut.kld") && e.contains("truncated"), "{e}");
    // The comparison takes its windows and levels from the base: those flags are refused.
    let out = dlm_score(&["perplexity", "-m", m, "-f", text.to_str().unwrap(), "--kl-divergence-base", b, "--kl-divergence"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"), "{}", String::from_utf8_lossy(&out.stderr));
    let e = fails(&["perplexity", "-m", m, "--kl-divergence-base", text.to_str().unwrap(), "--kl-divergence"]);
    assert!(e.contains("not a dlm KL base file"), "{e}");
    // A base is read by its length: a pipe is refused, not read blindly.
    let e = fails(&["perplexity", "-m", m, "--kl-divergence-base", "/dev/stdin", "--kl-divergence"]);
    assert!(e.contains("not a regular file"), "{e}");
    // Saving never replaces what is not a base (here the text itself, or the model), and a
    // missing directory is refused before any work.
    let before = std::fs::read(&text).unwrap();
    for dest in [text.to_str().unwrap(), m] {
        let e = fails(&["perplexity", "-m", m, "-f", text.to_str().unwrap(), "--per-line", "--levels", "1", "--kl-divergence-base", dest]);
        assert!(e.contains("not a dlm KL base file: refusing to replace it"), "{e}");
    }
    assert_eq!(std::fs::read(&text).unwrap(), before);
    let e = fails(&["perplexity", "-m", m, "-f", text.to_str().unwrap(), "--per-line", "--levels", "1", "--kl-divergence-base", "/nonexistent/dir/x.kld"]);
    assert!(e.contains("/nonexistent/dir/x.kld") && e.contains("directory does not exist"), "{e}");
    // An existing base is replaced only by a complete new one.
    let again = json_of(&["perplexity", "-m", m, "-f", text.to_str().unwrap(), "--per-line", "--levels", "4", "--kl-divergence-base", b]);
    assert_eq!(again["score"], saved["score"]);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".partial")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn perplexity_bound_follows_what_the_model_learned() {
    let tmp = tempfile::tempdir().unwrap();
    let f32 = tiny(tmp.path(), OutType::F32);
    let m = f32.to_str().unwrap();
    let text = std::fs::read_to_string(root().join("models/tasks/test.txt")).unwrap();
    // The English lines were trained unconditionally half of the time: a low bound. Their
    // words shuffled within each line are text the model never saw: a much higher one.
    let english: Vec<&str> = text.lines().filter(|l| l.ends_with('.')).take(40).collect();
    let shuffled: Vec<String> = english
        .iter()
        .map(|l| {
            let mut w: Vec<&str> = l.split(' ').collect();
            w.reverse();
            w.join(" ")
        })
        .collect();
    let (a, b) = (tmp.path().join("english.txt"), tmp.path().join("shuffled.txt"));
    std::fs::write(&a, english.join("\n")).unwrap();
    std::fs::write(&b, shuffled.join("\n")).unwrap();
    let good = json_of(&["perplexity", "-m", m, "-f", a.to_str().unwrap(), "--per-line"]);
    let bad = json_of(&["perplexity", "-m", m, "-f", b.to_str().unwrap(), "--per-line"]);
    let (g, s) = (good["ppl_bound"].as_f64().unwrap(), bad["ppl_bound"].as_f64().unwrap());
    println!("PPL bound: English {g:.2} ± {}, reversed word order {s:.2}", good["ppl_bound_se"]);
    assert!(g < 100.0 && s > 4.0 * g, "English {g}, reversed {s}");
    // Windows of running text (BOS + --ctx-size - 1 tokens each).
    let w = json_of(&["perplexity", "-m", m, "-f", a.to_str().unwrap(), "-c", "32", "--levels", "2"]);
    let targets = w["targets"].as_u64().unwrap();
    assert!(w["windows"].as_u64().unwrap() >= targets / 31, "{w}");
}

#[test]
fn bad_inputs_get_one_line_naming_the_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tiny(tmp.path(), OutType::Q4_0);
    let m = f.to_str().unwrap();
    let cases: &[(&str, &str)] = &[
        ("{\"context\": \"a\", \"choices\": [\"b\"], \"label\": 0}", "at least 2 strings"),
        ("{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"label\": 2}", "\"label\""),
        ("{\"context\": 5, \"choices\": [\"b\", \"c\"], \"label\": 0}", "\"context\" must be a string"),
        ("{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"label\": 0, \"lable\": 1}", "unknown field \"lable\""),
        ("{\"context\": \"a\", \"choices\": [\"b b b b\", \"c\"], \"label\": 0, \"n\": 2}", "more than \"n\""),
        ("{\"context\": \"a\", \"choices\": [\"b\", \"\"], \"label\": 0}", "choice 1 is empty"),
        ("not json", "not JSON"),
    ];
    for (line, want) in cases {
        let items = tmp.path().join("bad.jsonl");
        std::fs::write(&items, format!("{{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"label\": 0}}\n{line}\n")).unwrap();
        let e = fails(&["choice", "-m", m, "--items", items.to_str().unwrap()]);
        assert!(e.contains("bad.jsonl line 2") && e.contains(want), "{line}: {e}");
    }
    // --per-item never overwrites the items it reads.
    let items = tmp.path().join("ok.jsonl");
    std::fs::write(&items, "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"label\": 0}\n").unwrap();
    let i = items.to_str().unwrap();
    let e = fails(&["choice", "-m", m, "--items", i, "--per-item", i]);
    assert!(e.contains("--per-item") && e.contains("refusing to write over an input of this run"), "{e}");
    assert!(std::fs::read_to_string(&items).unwrap().contains("choices"));
    assert!(fails(&["choice", "-m", m, "--items", "/dev/zero"]).contains("must be a regular file"));
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let e = fails(&["perplexity", "-m", m, "-f", empty.to_str().unwrap()]);
    assert!(e.contains("empty.txt") && e.contains("too few"), "{e}");
    assert!(fails(&["perplexity", "-m", m, "-f", empty.to_str().unwrap(), "-c", "100000"]).contains("--ctx-size"));
    assert!(fails(&["likelihood", "-m", m, "--continuation", "x", "--levels", "0"]).contains("--levels"));
    assert!(fails(&["likelihood", "-m", m, "--continuation", ""]).contains("empty"));
    let long = "1 ".repeat(400);
    assert!(fails(&["likelihood", "-m", m, "--continuation", &long]).contains("context of 128"));
}

#[test]
fn lm_eval_rows_convert_to_items_that_score() {
    let tmp = tempfile::tempdir().unwrap();
    let rows: &[(&str, serde_json::Value, &str, &str)] = &[
        ("hellaswag", serde_json::json!({"activity_label": "Baking", "ctx_a": "She mixes the flour.", "ctx_b": "then she", "endings": ["bakes it [title] now.", "sings", "runs", "reads"], "label": "0"}), "Baking: She mixes the flour. Then she", " bakes it. now."),
        ("piqa", serde_json::json!({"goal": "Open a jar", "sol1": "Twist the lid", "sol2": "Eat the lid", "label": 0}), "Question: Open a jar\nAnswer:", " Twist the lid"),
        ("siqa", serde_json::json!({"context": "Kim won.", "question": "How does Kim feel?", "answerA": "happy", "answerB": "sad", "answerC": "bored", "label": "1"}), "Question: Kim won. How does Kim feel?\nAnswer:", " happy"),
        ("winogrande", serde_json::json!({"sentence": "The cup fell off the table because _ was tilted.", "option1": "the cup", "option2": "the table", "answer": "2"}), "The cup fell off the table because", " the cup was tilted."),
    ];
    let f = tiny(tmp.path(), OutType::Q4_0);
    for (task, row, context, first) in rows {
        let (input, output) = (tmp.path().join(format!("{task}-in.jsonl")), tmp.path().join(format!("{task}.jsonl")));
        std::fs::write(&input, format!("{row}\n")).unwrap();
        python(&["scripts/lm_eval_to_jsonl.py", "--task", task, input.to_str().unwrap(), output.to_str().unwrap()]);
        let item: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&output).unwrap().trim()).unwrap();
        assert_eq!(item["context"], *context, "{task}");
        assert_eq!(item["choices"][0], *first, "{task}");
        assert_eq!(item["label"], u64::from(*task == "winogrande"), "{task}");
        let r = json_of(&["choice", "-m", f.to_str().unwrap(), "--items", output.to_str().unwrap(), "--levels", "2"]);
        assert_eq!(r["items"], 1, "{task}");
    }
}
