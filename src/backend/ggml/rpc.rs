//! ggml's RPC backend (`ggml/src/ggml-rpc` of the vendored llama.cpp, built with
//! `GGML_RPC=ON`): devices of other machines, served by `dlm-rpc-server` (or llama.cpp's
//! `rpc-server`), used like local GPUs. `llama-cpp-sys-2` binds only `llama.h` and `gguf.h`, so
//! the two functions of `ggml-rpc.h` we call are declared here.
//!
//! ggml-rpc aborts the process on anything it does not expect from the network (a refused
//! connection, another protocol version, a dropped connection). Before ggml ever connects,
//! [`connect`] checks each endpoint itself: it parses it, connects with a timeout and makes
//! the protocol's greeting, so a wrong address, a refused connection, a silent peer and a
//! server of another version are each one clear error. A server lost later, mid-pass, still
//! ends in ggml's abort, which [`super::init_logging`]'s abort callback turns into one line
//! and exit code 2.
//!
//! The protocol has no authentication and no encryption: whoever can reach a server can make
//! it allocate memory and run graphs (README: "Several machines").

use std::ffi::{c_char, CString};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use llama_cpp_sys_2 as sys;

use super::device::{describe, GgmlDevice, Source};
use crate::error::{Error, Result};

extern "C" {
    fn ggml_backend_rpc_add_server(endpoint: *const c_char) -> sys::ggml_backend_reg_t;
    fn ggml_backend_rpc_start_server(endpoint: *const c_char, cache_dir: *const c_char, n_threads: usize, n_devices: usize, devices: *mut sys::ggml_backend_dev_t);
}

/// The protocol version this ggml speaks (`RPC_PROTO_*_VERSION` in `ggml-rpc.h`): a server must
/// have the same major version and a minor version no newer.
pub const PROTOCOL: (u8, u8, u8) = (7, 0, 0);
/// `RPC_CMD_HELLO`, fixed at 14 in every version of the protocol.
const CMD_HELLO: u8 = 14;
/// `RPC_CONN_CAPS_SIZE`: the transport capabilities each side sends in the greeting.
const CAPS: usize = 24;
/// How long [`connect`] waits for a connection and for the greeting's answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// `HOST:PORT` as ggml-rpc reads it: the host up to the first `:` (a name or an IPv4 address;
/// ggml-rpc connects over IPv4 only), a port 1–65535.
pub fn parse_endpoint(endpoint: &str) -> Result<(String, u16)> {
    let bad = |why: &str| Error::Invalid(format!("--rpc `{}`: {why}; expected HOST:PORT, e.g. 192.168.1.7:50052", crate::gguf::shown_name(endpoint)));
    let (host, port) = endpoint.split_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.contains(|c: char| c.is_whitespace() || c.is_control() || c == '[' || c == ']' || c == ':' || c == '/') {
        return Err(bad("not a host name or IPv4 address (ggml-rpc connects over IPv4 only)"));
    }
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number 1-65535"))?;
    if port == 0 {
        return Err(bad("port 0"));
    }
    Ok((host.to_string(), port))
}

/// What a server answered to the greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: (u8, u8, u8),
}

/// Connects to `endpoint` (with [`PROBE_TIMEOUT`]), sends the protocol's greeting and reads the
/// answer, then closes: what ggml-rpc would abort on is an error here instead. The server
/// serves one client at a time, so the connection is closed before ggml makes its own.
pub fn probe(endpoint: &str) -> Result<Hello> {
    let (host, port) = parse_endpoint(endpoint)?;
    let at = crate::gguf::shown_name(endpoint);
    let addrs: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| Error::Invalid(format!("--rpc {at}: cannot resolve `{}`: {e}", crate::gguf::shown_name(&host))))?
        .filter(SocketAddr::is_ipv4)
        .collect();
    let addr = *addrs.first().ok_or_else(|| Error::Invalid(format!("--rpc {at}: `{}` has no IPv4 address (ggml-rpc connects over IPv4 only)", crate::gguf::shown_name(&host))))?;
    let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused (is dlm-rpc-server running there, on that port?)".to_string(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => format!("no connection within {} s", PROBE_TIMEOUT.as_secs()),
            _ => e.to_string(),
        };
        Error::Invalid(format!("--rpc {at}: {why}"))
    })?;
    let io = |e: std::io::Error| {
        let why = match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                format!("no answer to the RPC greeting within {} s (not an RPC server, or one busy with another client: it serves one at a time)", PROBE_TIMEOUT.as_secs())
            }
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => "the server closed the connection during the RPC greeting (not an RPC server of this protocol?)".into(),
            _ => format!("RPC greeting failed: {e}"),
        };
        Error::Invalid(format!("--rpc {at}: {why}"))
    };
    s.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(PROBE_TIMEOUT)).map_err(io)?;
    let mut req = Vec::with_capacity(1 + 8 + CAPS);
    req.push(CMD_HELLO);
    req.extend_from_slice(&(CAPS as u64).to_le_bytes());
    req.extend_from_slice(&[0u8; CAPS]);
    s.write_all(&req).map_err(io)?;
    let mut size = [0u8; 8];
    s.read_exact(&mut size).map_err(io)?;
    let size = u64::from_le_bytes(size);
    if size != 4 + CAPS as u64 {
        return Err(Error::Invalid(format!("--rpc {at}: the server answered the greeting with {size} bytes, this ggml-rpc expects {} (another protocol version, or not an RPC server)", 4 + CAPS)));
    }
    let mut rsp = [0u8; 4 + CAPS];
    s.read_exact(&mut rsp).map_err(io)?;
    let version = (rsp[0], rsp[1], rsp[2]);
    if version.0 != PROTOCOL.0 || version.1 > PROTOCOL.1 {
        return Err(Error::Invalid(format!(
            "--rpc {at}: the server speaks RPC protocol {}.{}.{}, this build {}.{}.{} (run a dlm-rpc-server or rpc-server built from the same ggml)",
            version.0, version.1, version.2, PROTOCOL.0, PROTOCOL.1, PROTOCOL.2
        )));
    }
    Ok(Hello { version })
}

/// The devices of the RPC servers at `endpoints`, in order: each endpoint is [`probe`]d first,
/// then registered with ggml-rpc (which connects and keeps the connection for the process).
pub fn connect(endpoints: &[String]) -> Result<Vec<GgmlDevice>> {
    super::init_logging();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for e in endpoints {
        if !seen.insert(e.as_str()) {
            return Err(Error::Invalid(format!("--rpc {}: named twice", crate::gguf::shown_name(e))));
        }
        probe(e)?;
        let endpoint = CString::new(e.as_str()).map_err(|_| Error::Invalid("--rpc: an endpoint with a NUL byte".into()))?;
        // SAFETY: a NUL-terminated endpoint that parses as HOST:PORT and answered the greeting
        // with this protocol (checked above), so ggml-rpc's connection and handshake succeed
        // unless the server went away in between (then ggml aborts, which the abort callback
        // turns into one line). The registry it returns is static.
        let reg = unsafe { ggml_backend_rpc_add_server(endpoint.as_ptr()) };
        if reg.is_null() {
            return Err(Error::Invalid(format!("--rpc {}: the server has no devices", crate::gguf::shown_name(e))));
        }
        // SAFETY: a live, static registry.
        let n = unsafe { sys::ggml_backend_reg_dev_count(reg) };
        for index in 0..n {
            // SAFETY: `index` is below the registry's device count.
            let dev = unsafe { sys::ggml_backend_reg_dev_get(reg, index) };
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: a live device and two out-pointers to locals.
            unsafe { sys::ggml_backend_dev_memory(dev, &mut free, &mut total) };
            out.push(describe(dev, Source::Rpc { endpoint: endpoint.clone(), index }, free, total));
        }
    }
    Ok(out)
}

/// The handle of device `index` of the server `endpoint` (already [`connect`]ed: ggml-rpc
/// answers from its map without connecting again).
pub(crate) fn device_handle(endpoint: &CString, index: usize) -> sys::ggml_backend_dev_t {
    // SAFETY: `endpoint` was registered by `connect`, so this returns the same static registry.
    let reg = unsafe { ggml_backend_rpc_add_server(endpoint.as_ptr()) };
    // SAFETY: `index` was below that registry's device count when the device was described.
    unsafe { sys::ggml_backend_reg_dev_get(reg, index) }
}

/// Serves `devices` (ggml devices of this machine; the CPU when empty) at `endpoint` until the
/// process ends: ggml-rpc's own server loop, one client at a time. `cache_dir`: where tensors
/// sent by hash are kept between clients (`-c`).
pub fn serve(endpoint: &str, cache_dir: Option<&std::path::Path>, threads: usize, devices: &[GgmlDevice]) -> Result<()> {
    super::init_logging();
    parse_endpoint(endpoint)?;
    let ep = CString::new(endpoint).map_err(|_| Error::Invalid("endpoint with a NUL byte".into()))?;
    let cache = match cache_dir {
        Some(d) => Some(CString::new(d.to_string_lossy().as_bytes()).map_err(|_| Error::Invalid("cache folder with a NUL byte".into()))?),
        None => None,
    };
    let mut handles: Vec<sys::ggml_backend_dev_t> = devices.iter().map(super::device::handle).collect();
    if handles.is_empty() {
        // SAFETY: the registry is static; the CPU device always exists.
        let cpu = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
        if cpu.is_null() {
            return Err(Error::Ggml("ggml has no CPU device".into()));
        }
        handles.push(cpu);
    }
    // SAFETY: NUL-terminated strings that outlive the call (it returns only when the server
    // fails to start or its socket fails), and `handles.len()` live static device handles.
    unsafe { ggml_backend_rpc_start_server(ep.as_ptr(), cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()), threads.max(1), handles.len(), handles.as_mut_ptr()) };
    Err(Error::Invalid(format!("RPC server at {}: could not listen or stopped accepting connections (see the line above)", crate::gguf::shown_name(endpoint))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_as_ggml_reads_them() {
        assert_eq!(parse_endpoint("127.0.0.1:50052").unwrap(), ("127.0.0.1".into(), 50052));
        assert_eq!(parse_endpoint("gpu-box:1").unwrap(), ("gpu-box".into(), 1));
        for bad in ["", "host", ":50052", "host:", "host:0", "host:65536", "host:-1", "host:5x", "[::1]:50052", "a b:1", "host:1:2"] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?}");
        }
    }
}
