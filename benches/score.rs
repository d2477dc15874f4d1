//! Cost of scoring: multiple-choice items of the held-out set (models/tasks/choice.jsonl, 4
//! choices each) scored by `dlm::score::choose`, every masked copy of an item batched into
//! shared passes, against llama.cpp's `llama_decode` doing one decode per masked copy (what a
//! peer without batching does), same run, same GGUF, same masks. Both must pick the same
//! choices (checked).
//!
//! Models: the trained tiny DiffuLLaMA (4 layers, hidden 256) and the random "DiffuLLaMA-1B
//! shape" of the sampling bench (22 layers, hidden 2048), both q4_0.
//!
//!     cargo bench --bench score      # ~6 min on 2 cores (the 1B checkpoint is made once)

mod common;

use std::path::Path;

use common::{diffullama_1b_sharp, gguf, root, threads, time, tiny_q4};
use dlm::backend::ggml::{LlamaCpp, LlamaCppOptions};
use dlm::score::{self, BatchForward, Item, ScoreParams};
use dlm::{Gguf, LoadOptions, Model, Tokenizer};
use dlm_convert::OutType;

/// The first `n` items of every task (the file holds 100 per task, in task order).
fn items(tok: &Tokenizer, per_task: usize) -> Vec<Item> {
    let text = std::fs::read_to_string(root().join("models/tasks/choice.jsonl")).unwrap();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if i % 100 >= per_task {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let context = v["context"].as_str().unwrap();
        let ctx = tok.encode(context).unwrap();
        let n = v["n"].as_u64().unwrap() as usize;
        let choices = v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let mut t = tok.encode(&format!("{context}{}", c.as_str().unwrap())).unwrap()[ctx.len()..].to_vec();
                t.resize(n, 2);
                t
            })
            .collect();
        let suffix = v.get("suffix").map_or(Vec::new(), |s| tok.encode(s.as_str().unwrap()).unwrap()[1..].to_vec());
        out.push(Item { context: ctx, choices, suffix, label: v["label"].as_u64().unwrap() as usize });
    }
    out
}

fn run<F: BatchForward>(fwd: &mut F, items: &[Item], p: &ScoreParams) -> (f64, score::Cost, Vec<usize>, usize) {
    let ids: Vec<u64> = (0..items.len() as u64).collect();
    let (secs, (res, cost)) = time(|| score::choose(fwd, items, &ids, p).unwrap());
    let right = res.iter().zip(items).filter(|(r, it)| r.pred == it.label).count();
    (secs, cost, res.iter().map(|r| r.pred).collect(), right)
}

/// `trained`: the two must pick the same choices (random weights leave near-ties that rounding
/// may flip; there the agreement is printed).
fn case(name: &str, file: &Path, per_task: usize, levels: usize, trained: bool) {
    let threads = threads();
    let tok = Tokenizer::from_gguf(&Gguf::open(file).unwrap()).unwrap();
    let items = items(&tok, per_task);
    let p = ScoreParams { levels, draws: 1, seed: 0, mask_id: 811, shift: true, max_seqs: 32, max_tokens: 4096 };
    let mut model = Model::load(file, &LoadOptions { threads, backend: dlm::Backend::Cpu, ..Default::default() }).unwrap();
    let mut peer = LlamaCpp::load(file, &LlamaCppOptions::new(threads, 128)).unwrap();
    // Warm both (first-touch page faults, graph building).
    run(&mut model, &items[..1], &p);
    run(&mut peer, &items[..1], &p);
    let (s_peer, c_peer, pred_peer, right) = run(&mut peer, &items, &p);
    let (s_dlm, c_dlm, pred_dlm, _) = run(&mut model, &items, &p);
    let same = pred_dlm.iter().zip(&pred_peer).filter(|(a, b)| a == b).count();
    if trained {
        assert_eq!(pred_dlm, pred_peer, "{name}: dlm and llama.cpp pick different choices");
    }
    println!(
        "| {name} | {} | {levels} | {} | {} | {:.2} | {} | {:.2} | {:.2} | {:.1} % | {same} |",
        items.len(),
        c_dlm.copies,
        c_dlm.passes,
        s_dlm,
        c_peer.copies,
        s_peer,
        s_peer / s_dlm,
        100.0 * right as f64 / items.len() as f64
    );
}

fn main() {
    println!("scoring multiple-choice items, {} threads, q4_0, CPU", threads());
    println!();
    println!("| model | items | levels | masked copies | dlm passes | dlm s | llama.cpp decodes | llama.cpp s | speed-up | accuracy | same picks |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    if common::selected("tiny") {
        let f = tiny_q4();
        case("trained tiny", &f, 10, 8, true);
        case("trained tiny", &f, 10, 32, true);
    }
    if common::selected("1b") {
        case("1B shape (random)", &gguf(&diffullama_1b_sharp(), OutType::Q4_0), 1, 8, false);
    }
}
