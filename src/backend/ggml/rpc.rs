//! ggml's RPC backend (`ggml/src/ggml-rpc` of the vendored llama.cpp, built with
//! `GGML_RPC=ON`): devices of other machines, served by `dlm-rpc-server` (or llama.cpp's
//! `rpc-server`), used like local GPUs. `llama-cpp-sys-2` binds only `llama.h` and `gguf.h`, so
//! the two functions of `ggml-rpc.h` we call are declared here.
//!
//! ggml-rpc aborts the process on anything it does not expect from the network (a refused
//! connection, another protocol version, a dropped connection), trusts what a server answers,
//! and waits without a timeout. Before ggml ever connects, [`connect`] checks each endpoint
//! itself: it parses it, connects with a timeout, makes the protocol's greeting and asks the
//! device count and each device's alignment and largest buffer (values ggml divides by or
//! allocates for), so a wrong address, a refused connection, a silent peer, a server of
//! another version and one with nonsensical devices are each one clear error. After that,
//! ggml-rpc opens connections of its own as it needs them (a new one whenever every user of
//! the last has gone): a server lost then ends in ggml's abort, which
//! [`super::init_logging`]'s abort callback turns into one line and exit code 2, and a server
//! that stops answering is caught by a [`Watchdog`] around every load and pass.
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
/// How long [`connect`] waits for a connection and for each answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// `RPC_CMD_GET_ALIGNMENT`, `RPC_CMD_GET_MAX_SIZE`, `RPC_CMD_DEVICE_COUNT`.
const CMD_GET_ALIGNMENT: u8 = 1;
const CMD_GET_MAX_SIZE: u8 = 2;
const CMD_DEVICE_COUNT: u8 = 15;
/// At most this many devices over all servers: ggml's scheduler takes 16 backends, the CPU's
/// included.
pub const MAX_DEVICES: usize = 15;

/// Set once RPC devices are in use: a ggml abort is then most likely what a server answered
/// (ggml trusts it), not a bug of dlm's.
pub(crate) static IN_USE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The exit status of a serving process that ggml stopped on a client's request (its
/// supervisor, `dlm-rpc-server`, starts a new one).
pub const EXIT_BAD_REQUEST: i32 = 3;

/// Set while this process serves RPC clients ([`serve`]): a ggml abort is then a client's
/// request that ggml refused.
pub(crate) static SERVING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `HOST:PORT` as ggml-rpc reads it: the host up to the first `:` (a name or an IPv4 address;
/// ggml-rpc connects over IPv4 only), a port 1–65535.
pub fn parse_endpoint(endpoint: &str) -> Result<(String, u16)> {
    let bad = |why: &str| Error::Invalid(format!("--rpc `{}`: {why}; expected HOST:PORT, e.g. 192.168.1.7:50052", crate::gguf::shown_name(endpoint)));
    if endpoint.is_empty() {
        return Err(Error::Invalid("--rpc: an empty entry (two commas in a row, or one at an end?); expected HOST:PORT,HOST:PORT".into()));
    }
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

/// What a server answered to the greeting and the questions after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: (u8, u8, u8),
    /// The address connected to (an unspecified address as the loopback it reaches).
    pub addr: SocketAddr,
    pub devices: usize,
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
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                format!("no connection within {} s (the machine is unreachable, or the server's one waiting place is taken: it serves one client at a time)", PROBE_TIMEOUT.as_secs())
            }
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
    // One request and its answer of exactly `want` bytes.
    let mut ask = |cmd: u8, payload: &[u8], want: usize, what: &str| -> Result<Vec<u8>> {
        let mut req = Vec::with_capacity(1 + 8 + payload.len());
        req.push(cmd);
        req.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        req.extend_from_slice(payload);
        s.write_all(&req).map_err(io)?;
        let mut size = [0u8; 8];
        s.read_exact(&mut size).map_err(io)?;
        let size = u64::from_le_bytes(size);
        if size != want as u64 {
            return Err(Error::Invalid(format!("--rpc {at}: the server answered {what} with {size} bytes, this ggml-rpc expects {want} (another protocol version, or not an RPC server)")));
        }
        let mut rsp = vec![0u8; want];
        s.read_exact(&mut rsp).map_err(io)?;
        Ok(rsp)
    };
    let rsp = ask(CMD_HELLO, &[0u8; CAPS], 4 + CAPS, "the greeting")?;
    let version = (rsp[0], rsp[1], rsp[2]);
    if version.0 != PROTOCOL.0 || version.1 > PROTOCOL.1 {
        return Err(Error::Invalid(format!(
            "--rpc {at}: the server speaks RPC protocol {}.{}.{}, this build {}.{}.{} (run a dlm-rpc-server or rpc-server built from the same ggml)",
            version.0, version.1, version.2, PROTOCOL.0, PROTOCOL.1, PROTOCOL.2
        )));
    }
    let devices = u32::from_le_bytes(ask(CMD_DEVICE_COUNT, &[], 4, "the device count")?.try_into().expect("4 bytes")) as usize;
    if devices == 0 || devices > MAX_DEVICES {
        return Err(Error::Invalid(format!("--rpc {at}: the server says it has {devices} devices (1 to {MAX_DEVICES} can be used)")));
    }
    for d in 0..devices as u32 {
        let u64_of = |b: Vec<u8>| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let align = u64_of(ask(CMD_GET_ALIGNMENT, &d.to_le_bytes(), 8, "the alignment question")?);
        if !align.is_power_of_two() || align > 1 << 20 {
            return Err(Error::Invalid(format!("--rpc {at}: device {d} has a buffer alignment of {align} bytes (a power of two up to 1 MiB expected): a broken or hostile server")));
        }
        let max = u64_of(ask(CMD_GET_MAX_SIZE, &d.to_le_bytes(), 8, "the buffer size question")?);
        if max < align {
            return Err(Error::Invalid(format!("--rpc {at}: device {d} takes buffers of at most {max} bytes: a broken or hostile server")));
        }
    }
    let addr = if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    Ok(Hello { version, addr, devices })
}

/// The devices of the RPC servers at `endpoints`, in order: every endpoint is [`probe`]d first
/// (two names of one server are refused: ggml-rpc would wait on itself), then registered with
/// ggml-rpc, which connects as it needs to.
pub fn connect(endpoints: &[String], timeout: Duration) -> Result<Vec<GgmlDevice>> {
    super::init_logging();
    let mut seen: Vec<(SocketAddr, &str)> = Vec::new();
    let mut devices = 0;
    for e in endpoints {
        let hello = probe(e)?;
        if let Some((_, first)) = seen.iter().find(|(a, _)| *a == hello.addr) {
            return Err(Error::Invalid(format!("--rpc {}: the same server as {} ({}): name each server once", crate::gguf::shown_name(e), crate::gguf::shown_name(first), hello.addr)));
        }
        seen.push((hello.addr, e));
        devices += hello.devices;
    }
    if devices > MAX_DEVICES {
        return Err(Error::Invalid(format!("--rpc: the servers have {devices} devices in all; a model runs on at most {MAX_DEVICES} besides this machine's CPU")));
    }
    IN_USE.store(true, std::sync::atomic::Ordering::SeqCst);
    let _watch = Watchdog::arm("connecting", timeout);
    let mut out = Vec::new();
    for e in endpoints {
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
    SERVING.store(true, std::sync::atomic::Ordering::SeqCst);
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

/// Ends the process with one line and exit code 2 when a load or pass through RPC servers
/// has not finished within its limit (`--rpc-timeout`): ggml-rpc waits on its sockets without
/// one, so a server that stops answering (frozen, its machine gone from the network without
/// closing the connection, busy with another client) would otherwise hold the run forever.
pub struct Watchdog {
    id: u64,
}

struct Watched {
    id: u64,
    deadline: std::time::Instant,
    what: &'static str,
    limit: Duration,
}

static WATCHED: std::sync::Mutex<Vec<Watched>> = std::sync::Mutex::new(Vec::new());

impl Watchdog {
    /// Watches until dropped: `what` says what was waited for (in the error line).
    pub fn arm(what: &'static str, limit: Duration) -> Watchdog {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        static THREAD: std::sync::Once = std::sync::Once::new();
        THREAD.call_once(|| {
            let _ = std::thread::Builder::new().name("dlm-rpc-watchdog".into()).spawn(|| loop {
                std::thread::sleep(Duration::from_millis(200));
                let late = WATCHED.lock().ok().and_then(|w| w.iter().find(|x| std::time::Instant::now() > x.deadline).map(|x| (x.what, x.limit)));
                if let Some((what, limit)) = late {
                    crate::cli::error_line(&format!(
                        "error: no answer from the RPC servers (--rpc) for {} s while {what}: a server stopped responding, its machine became unreachable, or it is busy with another client (--rpc-timeout sets the limit)",
                        limit.as_secs()
                    ));
                    crate::cli::remove_temp_files();
                    crate::cli::exit_now(crate::cli::EXIT_ERROR as i32);
                }
            });
        });
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut w) = WATCHED.lock() {
            w.push(Watched { id, deadline: std::time::Instant::now() + limit, what, limit });
        }
        Watchdog { id }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Ok(mut w) = WATCHED.lock() {
            w.retain(|x| x.id != self.id);
        }
    }
}

/// Checks the tensor cache of `dlm-rpc-server -c` before serving from it: ggml-rpc names each
/// file by the FNV-1a hash of its bytes and trusts it when read, so a file cut short (a server
/// killed while writing it, a full disk) would be sent into a model as its weights. Files whose
/// bytes do not hash to their name are removed; returns (files kept, files removed). Anything
/// else named like a cache entry (a folder, a link) is an error: ggml-rpc would crash on it.
pub fn check_cache(dir: &std::path::Path) -> Result<(usize, usize)> {
    let (mut kept, mut removed) = (0, 0);
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
        let name = entry.file_name();
        let Some(hash) = name.to_str().filter(|n| n.len() == 16).and_then(|n| u64::from_str_radix(n, 16).ok()) else { continue };
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(Error::Invalid(format!("{}: named like a cached tensor but not a regular file: move it out of the cache folder", path.display())));
        }
        let mut f = std::fs::File::open(&path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let mut h: u64 = 0xcbf29ce484222325;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                h ^= b as u64;
                h = h.wrapping_mul(0x100000001b3);
            }
        }
        if h == hash {
            kept += 1;
        } else {
            std::fs::remove_file(&path).map_err(|e| Error::Invalid(format!("{}: damaged, and cannot be removed: {e}", path.display())))?;
            removed += 1;
        }
    }
    Ok((kept, removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_as_ggml_reads_them() {
        assert_eq!(parse_endpoint("127.0.0.1:50052").unwrap(), ("127.0.0.1".into(), 50052));
        assert_eq!(parse_endpoint("gpu-box:1").unwrap(), ("gpu-box".into(), 1));
        for bad in ["", ",", "host", ":50052", "host:", "host:0", "host:65536", "host:-1", "host:5x", "[::1]:50052", "a b:1", "host:1:2"] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?}");
        }
    }
}
