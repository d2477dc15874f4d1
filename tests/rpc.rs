//! ggml's RPC backend through `dlm-rpc-server` processes on loopback: logits equal the local
//! run's bit for bit where the kernels are the same ones (f16, q8_0; q4_0 with the local copy
//! unrepacked), within a stated bound where they are not (q4_0 repacked for AVX2 here, plain on
//! the server); weights cross once, then only activations; a server killed mid-generation, a
//! refused or wrong address, a silent peer and another protocol version each end in one line and
//! exit code 2.

mod common;
#[path = "common/ports.rs"]
mod ports;
#[path = "common/rpc.rs"]
mod rpc;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{checkpoint, convert};
use dlm::model::Pass;
use dlm::{LoadOptions, Model};
use dlm_convert::OutType;
use rpc::{free_port, Relay, RpcServer};

fn load(path: &Path, rpc: &[&str], split: &[f32], ngl: Option<usize>, repack: bool) -> Model {
    let opts = LoadOptions { threads: 2, repack, rpc: rpc.iter().map(|s| s.to_string()).collect(), tensor_split: split.to_vec(), n_gpu_layers: ngl, ..Default::default() };
    Model::load(path, &opts).unwrap()
}

/// The small random checkpoint (tests/make_checkpoint.py) in a temporary folder.
fn random_checkpoint() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    checkpoint(&hf, &[]);
    (tmp, hf)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every layer on one of two servers, one layer remote and one local, and the greedy row
/// reduction on a remote device: the same logits as the CPU run.
#[test]
fn logits_through_two_rpc_servers_equal_the_local_run() {
    let (_tmp, hf) = random_checkpoint();
    let (a, b) = (RpcServer::start(1), RpcServer::start(1));
    let both = [a.endpoint.as_str(), b.endpoint.as_str()];
    for kind in [OutType::F16, OutType::Q8_0, OutType::Q4_0] {
        let path = convert(&hf, kind);
        let tokens: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 500).chain([811; 8]).collect();
        let local = load(&path, &[], &[], None, false).forward(&tokens).unwrap();
        for (split, ngl, what) in [(&[1.0, 1.0][..], None, "a layer on each server"), (&[1.0][..], Some(1), "layer 1 on a server, layer 0 and the LM head here")] {
            let mut m = load(&path, &both, split, ngl, false);
            assert_eq!(m.backend(), dlm::Backend::Rpc);
            let got = m.forward(&tokens).unwrap();
            assert_eq!(bits(&got), bits(&local), "{kind:?}, {what}: logits differ from the local run");
            // A second pass reuses the graph and the remote buffers.
            assert_eq!(bits(&m.forward(&tokens).unwrap()), bits(&local), "{kind:?}, {what}: second pass");
            let rows: Vec<usize> = (24..32).collect();
            let stats = m.forward_rows_stats(&tokens, Pass::Full, &rows).unwrap();
            let here = load(&path, &[], &[], None, false).forward_rows_stats(&tokens, Pass::Full, &rows).unwrap();
            assert_eq!(format!("{stats:?}"), format!("{here:?}"), "{kind:?}, {what}: row reductions differ");
        }
        if kind == OutType::Q4_0 {
            // Here q4_0 matmuls run on AVX2's repacked kernels, on the server on the plain ones:
            // other summation orders, so rounding-level differences.
            let repacked = load(&path, &[], &[], None, true).forward(&tokens).unwrap();
            let remote = load(&path, &both, &[1.0, 1.0], None, true).forward(&tokens).unwrap();
            let worst = repacked.iter().zip(&remote).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            let scale = repacked.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(worst <= 1e-2 * scale.max(1.0), "q4_0 repacked here vs plain there: {worst} (logits up to {scale})");
        }
    }
}

/// Weights go to the servers once, at load; a pass moves activations only (and a greedy pass
/// with the row reduction on the device brings back 20 bytes per row, not the vocabulary).
#[test]
fn after_the_load_only_activations_cross() {
    let (_tmp, hf) = random_checkpoint();
    let path = convert(&hf, OutType::F16);
    // Every tensor but the embedding table (a row lookup, kept on the host) goes to the server.
    let g = dlm::Gguf::open(&path).unwrap();
    let weight_bytes: u64 = g.tensors().iter().filter(|t| t.name != "token_embd.weight").map(|t| t.size).sum();
    drop(g);
    let server = RpcServer::start(1);
    let relay = Relay::start(&server.endpoint);
    let mut m = load(&path, &[&relay.endpoint], &[], None, true);
    let tokens: Vec<u32> = (0..32).map(|i| (i * 11 + 3) % 500).collect();
    // Uploads need no answer, so only a pass (which waits for its result behind them on the
    // same connection) makes sure the relay has counted them.
    m.forward(&tokens).unwrap();
    let first = relay.bytes();
    assert!(first >= weight_bytes && first < weight_bytes + weight_bytes / 10 + (4 << 20), "{first} bytes for the load and first pass, {weight_bytes} bytes of weights");
    let before = relay.bytes();
    m.forward(&tokens).unwrap();
    let second = relay.bytes() - before;
    let logits = 4 * 32 * m.params().n_vocab as u64;
    assert!(second >= logits && second < logits + weight_bytes / 20, "second pass moved {second} bytes ({logits} of logits, {weight_bytes} of weights); first {first}");
    let before = relay.bytes();
    let rows: Vec<usize> = (16..32).collect();
    m.forward_rows_stats(&tokens, Pass::Full, &rows).unwrap();
    let reduced = relay.bytes() - before;
    assert!(reduced < logits / 4, "a reduced pass moved {reduced} bytes, the logits alone are {logits}");
}

/// A server started with `-c` keeps what it was sent by hash (tensors over 10 MB: here the
/// 16 MB f16 LM head) on disk: the next load of the same model sends the hash instead, and the
/// logits are the same.
#[test]
fn a_caching_server_is_sent_large_weights_once() {
    let (tmp, hf) = random_checkpoint();
    let path = convert(&hf, OutType::F16);
    let g = dlm::Gguf::open(&path).unwrap();
    let large: u64 = g.tensors().iter().filter(|t| t.name != "token_embd.weight" && t.size > 10 << 20).map(|t| t.size).sum();
    assert!(large > 0, "the test model has no tensor over ggml-rpc's 10 MB hash threshold");
    drop(g);
    let cache = tmp.path().join("rpc-cache");
    let server = RpcServer::start_with(1, &["-c", "--cache-dir", cache.to_str().unwrap()]);
    let tokens: Vec<u32> = (0..16).map(|i| (i * 13 + 1) % 500).collect();
    let mut sent = Vec::new();
    let mut logits = Vec::new();
    for _ in 0..2 {
        let relay = Relay::start(&server.endpoint);
        let mut m = load(&path, &[&relay.endpoint], &[], None, true);
        logits.push(bits(&m.forward(&tokens).unwrap()));
        sent.push(relay.bytes());
    }
    assert!(std::fs::read_dir(&cache).unwrap().count() > 0, "nothing cached in {}", cache.display());
    assert!(sent[0] - sent[1] > large * 9 / 10, "first load {} bytes, second {} bytes, {large} bytes of large tensors", sent[0], sent[1]);
    assert_eq!(logits[0], logits[1]);
}

fn dlm_run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dlm-run")).args(args).stdin(Stdio::null()).output().unwrap()
}

/// One line on stderr, starting `error:`, containing each of `words`; exit code 2.
fn one_error_line(out: &std::process::Output, words: &[&str], what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("warning:")).collect();
    assert_eq!(lines.len(), 1, "{what}: {err}");
    assert!(lines[0].starts_with("error:"), "{what}: {err}");
    for w in words {
        assert!(lines[0].contains(w), "{what}: `{w}` not in {err}");
    }
}

/// A listener that answers the protocol's requests as `answer(cmd)` says: the answer's payload,
/// or None to hang up.
fn scripted_server(answer: fn(u8) -> Option<Vec<u8>>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("127.0.0.1:{}", l.local_addr().unwrap().port());
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            loop {
                let mut head = [0u8; 9];
                if s.read_exact(&mut head).is_err() {
                    break;
                }
                let mut payload = vec![0u8; u64::from_le_bytes(head[1..].try_into().unwrap()) as usize];
                if s.read_exact(&mut payload).is_err() {
                    break;
                }
                let Some(rsp) = answer(head[0]) else { break };
                let _ = s.write_all(&(rsp.len() as u64).to_le_bytes());
                let _ = s.write_all(&rsp);
            }
        }
    });
    endpoint
}

/// The greeting of a server of this protocol version.
fn hello() -> Vec<u8> {
    let mut r = vec![7, 0, 0, 0];
    r.extend_from_slice(&[0; 24]);
    r
}

#[test]
fn bad_endpoints_are_one_line_each() {
    let (_tmp, hf) = random_checkpoint();
    let path = convert(&hf, OutType::Q8_0);
    let m = path.to_str().unwrap();
    let refused = format!("127.0.0.1:{}", free_port());
    let old = scripted_server(|cmd| {
        (cmd == 14).then(|| {
            let mut r = hello();
            r[0] = 6;
            r
        })
    });
    let short = scripted_server(|_| Some(vec![3, 0, 0, 0]));
    let closes = scripted_server(|_| None);
    let silent = scripted_server(|_| {
        std::thread::sleep(Duration::from_secs(30));
        None
    });
    let many = scripted_server(|cmd| match cmd {
        14 => Some(hello()),
        15 => Some(u32::MAX.to_le_bytes().to_vec()),
        _ => None,
    });
    let unaligned = scripted_server(|cmd| match cmd {
        14 => Some(hello()),
        15 => Some(1u32.to_le_bytes().to_vec()),
        1 => Some(0u64.to_le_bytes().to_vec()),
        _ => None,
    });
    let tiny = scripted_server(|cmd| match cmd {
        14 => Some(hello()),
        15 => Some(1u32.to_le_bytes().to_vec()),
        1 => Some(32u64.to_le_bytes().to_vec()),
        2 => Some(0u64.to_le_bytes().to_vec()),
        _ => None,
    });
    let server = RpcServer::start(1);
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (refused.clone(), vec![&refused, "connection refused"], "nothing listening"),
        ("no-such-host.invalid:50052".into(), vec!["no-such-host.invalid", "cannot resolve"], "unknown host"),
        ("localhost".into(), vec!["localhost", "HOST:PORT", "no port"], "no port"),
        ("127.0.0.1:99999".into(), vec!["port"], "port out of range"),
        ("[::1]:50052".into(), vec!["IPv4"], "IPv6"),
        (",,".into(), vec!["empty entry"], "empty entries"),
        (old.clone(), vec![&old, "protocol 6.0.0", "7.0.0"], "another major version"),
        (short.clone(), vec![&short, "4 bytes"], "an older greeting"),
        (closes.clone(), vec![&closes, "closed the connection"], "a peer that hangs up"),
        (many.clone(), vec![&many, "4294967295 devices"], "4 billion devices"),
        (unaligned.clone(), vec![&unaligned, "alignment of 0"], "alignment 0 (ggml would divide by it)"),
        (tiny.clone(), vec![&tiny, "at most 0 bytes"], "buffers of 0 bytes"),
        (format!("{},{}", server.endpoint, server.endpoint), vec!["the same server"], "one server twice"),
        (format!("{},{}", server.endpoint, server.endpoint.replace("127.0.0.1", "localhost")), vec!["the same server"], "one server under two names"),
        (format!("{},{}", server.endpoint, server.endpoint.replace("127.0.0.1", "0.0.0.0")), vec!["the same server"], "one server as 0.0.0.0"),
    ];
    for (endpoint, words, what) in &cases {
        one_error_line(&dlm_run(&["-m", m, "-p", "copy 1:", "-n", "4", "--rpc", endpoint]), words, what);
    }
    // A peer that passes the checks, then stops answering (ggml-rpc's own connection waits
    // without a timeout): --rpc-timeout ends the run.
    let freezes = scripted_server(|cmd| match cmd {
        14 => Some(hello()),
        15 => Some(1u32.to_le_bytes().to_vec()),
        1 => Some(32u64.to_le_bytes().to_vec()),
        2 => Some(u64::MAX.to_le_bytes().to_vec()),
        _ => {
            std::thread::sleep(Duration::from_secs(60));
            None
        }
    });
    let t0 = Instant::now();
    one_error_line(&dlm_run(&["-m", m, "-p", "copy 1:", "-n", "4", "--rpc", &freezes, "--rpc-timeout", "2"]), &["no answer", "2 s", "--rpc-timeout"], "a server that stops answering");
    assert!(t0.elapsed() < Duration::from_secs(15), "a frozen server held the run {:?}", t0.elapsed());
    // A peer that accepts and never answers: the greeting times out, the run does not hang.
    let t0 = Instant::now();
    one_error_line(&dlm_run(&["-m", m, "-p", "copy 1:", "-n", "4", "--rpc", &silent]), &[&silent, "no answer"], "a silent peer");
    assert!(t0.elapsed() < Duration::from_secs(20), "a silent peer held the run {:?}", t0.elapsed());
    for (args, words) in [
        (vec!["--rpc", &server.endpoint, "-ts", "1,1"], vec!["--tensor-split", "2 values", "1 devices"]),
        (vec!["--rpc", &server.endpoint, "-ts", "0"], vec!["--tensor-split", "every share is 0"]),
        (vec!["--rpc", &server.endpoint, "-ts", "nan"], vec!["--tensor-split", "NaN"]),
        (vec!["--rpc", &server.endpoint, "--backend", "wgpu"], vec!["--rpc", "wgpu"]),
        (vec!["--backend", "cpu", "-ts", "1"], vec!["--tensor-split", "no devices"]),
        (vec!["--rpc", &server.endpoint, "-ngl", "0"], vec!["--rpc", "-ngl 0"]),
    ] {
        let mut all = vec!["-m", m, "-p", "copy 1:", "-n", "4"];
        all.extend(args.iter().copied());
        one_error_line(&dlm_run(&all), &words, &format!("{args:?}"));
    }
    // The server is still fine after all that: a run through it answers as the local one does.
    let local = dlm_run(&["-m", m, "-p", "copy 1:", "-n", "4", "-s", "3", "--backend", "cpu"]);
    let remote = dlm_run(&["-m", m, "-p", "copy 1:", "-n", "4", "-s", "3", "--rpc", &server.endpoint]);
    assert!(local.status.success() && remote.status.success(), "{}", String::from_utf8_lossy(&remote.stderr));
    assert_eq!(String::from_utf8_lossy(&local.stdout), String::from_utf8_lossy(&remote.stdout));
    // A partial offload to the server needs no local GPU.
    let partial = dlm_run(&["-m", m, "-p", "copy 1:", "-n", "4", "-s", "3", "--rpc", &server.endpoint, "-ngl", "1"]);
    assert!(partial.status.success(), "{}", String::from_utf8_lossy(&partial.stderr));
    assert_eq!(String::from_utf8_lossy(&local.stdout), String::from_utf8_lossy(&partial.stdout));
}

/// A server killed in the middle of a long generation: one line, exit code 2, within seconds.
#[test]
fn a_server_killed_mid_generation_ends_the_run_with_one_line() {
    let (_tmp, hf) = random_checkpoint();
    let path = convert(&hf, OutType::Q8_0);
    let (a, mut b) = (RpcServer::start(1), RpcServer::start(1));
    let rpc = format!("{},{}", a.endpoint, b.endpoint);
    let mut child = Command::new(env!("CARGO_BIN_EXE_dlm-run"))
        .args(["-m", path.to_str().unwrap(), "-p", "copy 1:", "-c", "512", "-n", "500", "--steps", "500", "--unmask", "random", "-v", "--rpc", &rpc, "-ts", "1,1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "the run ended before its first step: {seen}");
        seen.push_str(&line);
        if line.starts_with("step 2:") {
            break;
        }
    }
    let t0 = Instant::now();
    b.kill();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?} to notice", t0.elapsed());
    assert_eq!(status.code(), Some(2), "{rest}");
    let lines: Vec<&str> = rest.lines().filter(|l| !l.starts_with("step ")).collect();
    assert_eq!(lines.len(), 1, "{rest}");
    assert!(lines[0].starts_with("error: lost an RPC server"), "{rest}");
}

/// A client whose request makes ggml stop on a failed check ends only its own connection: the
/// server serves the next client (and a dlm run through it) as before.
#[test]
fn a_bad_request_does_not_take_the_server_down() {
    let (_tmp, hf) = random_checkpoint();
    let path = convert(&hf, OutType::Q8_0);
    let server = RpcServer::start(1);
    let port = server.endpoint.rsplit(':').next().unwrap();
    let bad = Command::new("python3").arg(common::root().join("tests/rpc_bad_client.py")).arg(port).output().unwrap();
    assert!(bad.status.success(), "{}", String::from_utf8_lossy(&bad.stderr));
    let t0 = Instant::now();
    while dlm::backend::ggml::rpc::probe(&server.endpoint).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "the server did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    let tokens: Vec<u32> = (0..16).map(|i| (i * 13 + 1) % 500).collect();
    let local = load(&path, &[], &[], None, false).forward(&tokens).unwrap();
    let remote = load(&path, &[&server.endpoint], &[], None, false).forward(&tokens).unwrap();
    assert_eq!(bits(&remote), bits(&local));
}

/// A cached tensor cut short (a server killed while writing it) is found and removed when
/// dlm-rpc-server starts, instead of being sent into the model as its weights.
#[test]
fn a_damaged_tensor_cache_is_cleaned_at_start() {
    let (tmp, hf) = random_checkpoint();
    let path = convert(&hf, OutType::F16);
    let cache = tmp.path().join("cache");
    let tokens: Vec<u32> = (0..16).map(|i| (i * 13 + 1) % 500).collect();
    let local = load(&path, &[], &[], None, true).forward(&tokens).unwrap();
    {
        let server = RpcServer::start_with(1, &["-c", "--cache-dir", cache.to_str().unwrap()]);
        load(&path, &[&server.endpoint], &[], None, true).forward(&tokens).unwrap();
    }
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!files.is_empty());
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(f).unwrap().set_len(len / 2).unwrap();
    }
    let server = RpcServer::start_with(1, &["-c", "--cache-dir", cache.to_str().unwrap()]);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0, "damaged files left in the cache");
    let remote = load(&path, &[&server.endpoint], &[], None, true).forward(&tokens).unwrap();
    assert_eq!(bits(&remote), bits(&local));
    // A folder named like a cached tensor: the server refuses to start, in one line.
    std::fs::create_dir_all(cache.join("0123456789abcdef")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dlm-rpc-server")).args(["-p", &free_port().to_string(), "-c", "--cache-dir", cache.to_str().unwrap()]).output().unwrap();
    one_error_line(&out, &["0123456789abcdef", "not a regular file"], "a folder in the cache");
}

/// dlm-rpc-server's own bad flags.
#[test]
fn rpc_server_flags_are_checked() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    for (args, words) in [
        (vec!["-H", "::1"], vec!["-H", "IPv4"]),
        (vec!["-H", "example.org"], vec!["-H", "IPv4"]),
        (vec!["-p", &port], vec!["cannot listen", &port]),
        (vec!["-p", "0"], vec!["-p 0"]),
        (vec!["-d", "CUDA7"], vec!["-d CUDA7", "no such device"]),
        (vec!["-t", "0"], vec!["-t/--threads must be at least 1"]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_dlm-rpc-server")).args(&args).stdin(Stdio::null()).output().unwrap();
        one_error_line(&out, &words, &format!("dlm-rpc-server {args:?}"));
    }
}
