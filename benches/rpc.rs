//! ggml's RPC backend: milliseconds per denoising step of the "DiffuLLaMA-1B shape" (22 layers,
//! hidden 2048, q4_0, vocabulary 32000) with its layers split over two `dlm-rpc-server`
//! processes on this machine (11 layers each, the LM head on the second), against the same
//! model run here, in the same run; and the bytes each step moves over the sockets (counted
//! by a relay in front of each server), load and first pass apart.
//!
//! Both servers and the local run get every core: the servers compute one after the other
//! (server 1's layers, then server 2's), never at once. The servers run q4_0 on ggml's plain
//! kernels (weights sent in the file's layout); here q4_0 is repacked for AVX2 by default, so
//! the local run is measured both ways, the unrepacked one being the same kernels.
//!
//!     cargo bench --bench rpc            # 32 and 256 positions per step
//!     cargo bench --bench rpc -- 256     # one canvas size

#[allow(dead_code)]
mod common;
#[path = "../tests/common/ports.rs"]
mod ports;
#[path = "../tests/common/rpc.rs"]
mod rpc;

use common::{diffullama_1b_sharp, gguf, median, selected, threads, time};
use dlm::model::Pass;
use dlm::{LoadOptions, Model};
use dlm_convert::OutType;
use rpc::{Relay, RpcServer};

fn steps(m: &mut Model, tokens: &[u32], reps: usize) -> f64 {
    m.forward_rows(tokens, Pass::Full, Some(&(tokens.len() / 2..tokens.len()).collect::<Vec<_>>())).unwrap();
    median((0..reps).map(|_| time(|| m.forward_rows(tokens, Pass::Full, Some(&(tokens.len() / 2..tokens.len()).collect::<Vec<_>>())).unwrap()).0).collect())
}

fn main() {
    let path = gguf(&diffullama_1b_sharp(), OutType::Q4_0);
    let t = threads();
    let (a, b) = (RpcServer::start(t), RpcServer::start(t));
    let (ra, rb) = (Relay::start(&a.endpoint), Relay::start(&b.endpoint));
    let opts = |repack: bool| LoadOptions { threads: t, repack, ..Default::default() };
    let (load_s, mut remote) = time(|| Model::load(&path, &LoadOptions { rpc: vec![ra.endpoint.clone(), rb.endpoint.clone()], tensor_split: vec![1.0, 1.0], ..opts(true) }).unwrap());
    let mut here = Model::load(&path, &opts(true)).unwrap();
    let mut plain = Model::load(&path, &opts(false)).unwrap();
    let file = std::fs::metadata(&path).unwrap().len();
    println!("1B-shape q4_0 ({:.0} MB), {t} threads everywhere; RPC: 2 dlm-rpc-server on 127.0.0.1, 11 layers each; load {load_s:.1} s", file as f64 / 1e6);
    println!("{:>9} | {:>12} | {:>14} | {:>16} | {:>10} | {:>14} | {:>17}", "positions", "RPC ms/step", "here ms/step", "here, unrepacked", "RPC / here", "RPC / unrepacked", "bytes/step (RPC)");
    let mut loaded = false;
    for n in [32usize, 256] {
        if !selected(&n.to_string()) {
            continue;
        }
        let tokens: Vec<u32> = (0..n as u32).map(|i| if i < n as u32 / 2 { (i * 37 + 5) % 32000 } else { dlm::keys::DIFFULLAMA_MASK_ID }).collect();
        // The first pass after the load carries the weights (uploads need no answer, so they
        // are counted once a pass has waited behind them).
        remote.forward_rows(&tokens, Pass::Full, Some(&[n - 1])).unwrap();
        if !loaded {
            let g = dlm::Gguf::open(&path).unwrap();
            let weights: u64 = g.tensors().iter().filter(|t| t.name != "token_embd.weight").map(|t| t.size).sum();
            println!("load + first pass: {:.1} MB over the sockets ({:.1} MB of weights outside the embedding table)", (ra.bytes() + rb.bytes()) as f64 / 1e6, weights as f64 / 1e6);
            loaded = true;
        }
        let reps = if n <= 32 { 5 } else { 3 };
        let b0 = ra.bytes() + rb.bytes();
        let r = steps(&mut remote, &tokens, reps);
        let per = (ra.bytes() + rb.bytes() - b0) as f64 / (reps + 1) as f64;
        let h = steps(&mut here, &tokens, reps);
        let p = steps(&mut plain, &tokens, reps);
        println!("{n:>9} | {:>12.1} | {:>14.1} | {:>16.1} | {:>9.2}× | {:>15.2}× | {:>14.2} MB", r * 1e3, h * 1e3, p * 1e3, r / h, r / p, per / 1e6);
    }
}
