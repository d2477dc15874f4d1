//! Ports for servers the tests start (included by path where needed).
#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};

/// A port nothing listens on right now, and one that nothing else in this process will be given
/// or take on its own before a server binds it. A port from the kernel (bind to port 0) is not
/// that: once released, the kernel may hand it to the next `bind(0)` (another test's fake peer)
/// or use it as a connection's local port, and a `dlm-rpc-server` started on it a moment later
/// then fails to bind while the test talks to whatever took it. So: ports below the kernel's
/// ephemeral range (which `bind(0)` and `connect` never choose), each handed out once per
/// process, starting at an offset drawn from the process id.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|w| w.parse::<u64>().ok()))
        .unwrap_or(32768);
    // [10000, low) when the range starts high enough; else above it (a rare setup, racy again).
    let (first, span) = if low > 12000 { (10000, low - 10000) } else { (61000, 4000) };
    let start = u64::from(std::process::id()) * 97 % span;
    loop {
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(k < span, "no free port left in {first}..{}", first + span);
        let port = (first + (start + k) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
