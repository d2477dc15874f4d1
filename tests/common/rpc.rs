//! `dlm-rpc-server` processes on loopback for the RPC tests and bench, and a TCP relay that
//! counts the bytes between a client and a server.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::ports::free_port;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `dlm-rpc-server` serving this machine's CPU on 127.0.0.1, killed on drop.
pub struct RpcServer {
    child: Child,
    pub endpoint: String,
}

impl RpcServer {
    /// Starts one with `threads` threads and waits until it answers the RPC greeting.
    pub fn start(threads: usize) -> RpcServer {
        Self::start_with(threads, &[])
    }

    /// [`RpcServer::start`] with more flags (`-c --cache-dir DIR`).
    pub fn start_with(threads: usize, extra: &[&str]) -> RpcServer {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_dlm-rpc-server"))
            .args(["-p", &port.to_string(), "-t", &threads.to_string(), "-d", "cpu"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dlm-rpc-server starts");
        let server = RpcServer { child, endpoint: format!("127.0.0.1:{port}") };
        let t0 = Instant::now();
        while dlm::backend::ggml::rpc::probe(&server.endpoint).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(20), "dlm-rpc-server on {} did not answer within 20 s", server.endpoint);
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut server = server;
        assert!(matches!(server.child.try_wait(), Ok(None)), "dlm-rpc-server on {} exited: something else answers there", server.endpoint);
        server
    }

    /// Ends the server at once (SIGKILL), as a crash or a lost machine would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Relays connections from its own loopback port to `target`, counting the bytes each way.
pub struct Relay {
    pub endpoint: String,
    /// Client to server, server to client.
    pub up: Arc<AtomicU64>,
    pub down: Arc<AtomicU64>,
}

impl Relay {
    pub fn start(target: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (u, d, target) = (up.clone(), down.clone(), target.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), u.clone());
                pipe(server, client, d.clone());
            }
        });
        Relay { endpoint, up, down }
    }

    /// Bytes relayed so far, both ways.
    pub fn bytes(&self) -> u64 {
        self.up.load(Ordering::SeqCst) + self.down.load(Ordering::SeqCst)
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, count: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    count.fetch_add(n as u64, Ordering::SeqCst);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
