//! `dlm-rpc-server`: serves this machine's ggml devices (its GPUs, or its CPU) to `dlm-run
//! --rpc HOST:PORT` on another machine, through ggml's RPC backend. llama.cpp's `rpc-server`
//! under dlm's name and flags, so no llama.cpp checkout is needed; either serves either.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Parser;

/// Serve this machine's CPU or GPUs to dlm on another machine (ggml's RPC backend).
///
/// A client (`dlm-run --rpc HOST:PORT`, dlm-eval, dlm-score, dlm-server, or llama.cpp with
/// --rpc) sends the weights of the layers this server runs once per load, then each pass's
/// activations; the key/value cache of those layers stays here. One client at a time: while one
/// is connected, another's connection waits unanswered (dlm clients give up after 5 s).
///
/// The serving runs in a child process: a request that makes ggml stop (a malformed or hostile
/// one) ends that process and its client's connection, and a new one serves the next client.
///
/// SECURITY: the protocol has no authentication and no encryption. Anyone who can reach the
/// port can make this process allocate memory and run computations. It listens on 127.0.0.1
/// unless -H says otherwise; bind another address only on a network you trust (a private
/// network, an SSH tunnel, a VPN).
#[derive(Parser, Debug)]
#[command(name = "dlm-rpc-server", version, after_help = "Examples:
  dlm-rpc-server                      # this machine's GPUs (else its CPU) on 127.0.0.1:50052
  dlm-rpc-server -H 10.0.0.7 -p 50052 -c
  # on the client:
  dlm-run -m model.gguf --rpc 10.0.0.7:50052 -p 'Today is a wonderful day,' -n 64")]
struct Cli {
    /// Address to listen on: an IPv4 address of this machine (ggml-rpc listens on IPv4 only)
    #[arg(short = 'H', long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on
    #[arg(short, long, default_value_t = 50052)]
    port: u16,
    /// CPU threads for the CPU device [default: all cores]
    #[arg(short, long)]
    threads: Option<usize>,
    /// Devices to serve, by ggml name as --list-devices shows them (e.g. CUDA0,CUDA1), or `cpu`
    /// [default: every GPU of this build, else the CPU]
    #[arg(short, long, value_delimiter = ',', value_name = "NAME,...")]
    device: Vec<String>,
    /// Keep tensors the client sends by hash (large weights) on disk, so the next client with
    /// the same model does not send them again
    #[arg(short, long)]
    cache: bool,
    /// Where -c keeps tensors [default: $DLM_CACHE_DIR/rpc, else $XDG_CACHE_HOME/dlm/rpc, else
    /// ~/.cache/dlm/rpc]
    #[arg(long, value_name = "DIR", requires = "cache")]
    cache_dir: Option<PathBuf>,
    /// List the devices this server could serve, then exit
    #[arg(long)]
    list_devices: bool,
}

fn cache_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(d) => d,
        None => match (std::env::var_os("DLM_CACHE_DIR"), std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
            (Some(d), _, _) if !d.is_empty() => PathBuf::from(d).join("rpc"),
            (_, Some(x), _) if !x.is_empty() => PathBuf::from(x).join("dlm").join("rpc"),
            (_, _, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".cache").join("dlm").join("rpc"),
            _ => bail!("-c: no cache folder: set --cache-dir, DLM_CACHE_DIR or HOME"),
        },
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("-c: cannot create the cache folder {}", dir.display()))?;
    if !dir.is_dir() {
        bail!("-c: {} is not a folder", dir.display());
    }
    // ggml-rpc joins file names onto the folder as text.
    let mut text = dir.to_str().with_context(|| format!("-c: the cache folder {} is not valid UTF-8", dir.display()))?.to_string();
    if !text.ends_with('/') {
        text.push('/');
    }
    Ok(PathBuf::from(text))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let gpus = dlm::backend::ggml::gpu_devices();
    let threads = dlm::cli::threads(cli.threads).map_err(anyhow::Error::msg)?;
    if cli.list_devices {
        dlm::outln!("cpu: ggml CPU backend ({threads} threads)")?;
        for d in &gpus {
            dlm::outln!("{}: {} | {} | {} MiB free of {} MiB", d.name, d.api.to_lowercase(), d.description, d.memory_free >> 20, d.memory_total >> 20)?;
        }
        return Ok(());
    }
    let devices: Vec<dlm::backend::ggml::GgmlDevice> = if cli.device.is_empty() {
        gpus.iter().filter(|d| !d.is_software()).cloned().collect()
    } else if cli.device.len() == 1 && cli.device[0].eq_ignore_ascii_case("cpu") {
        Vec::new()
    } else {
        let mut out = Vec::new();
        for name in &cli.device {
            let d = gpus.iter().find(|d| d.name.eq_ignore_ascii_case(name)).with_context(|| {
                let known: Vec<&str> = gpus.iter().map(|d| d.name.as_str()).collect();
                format!("-d {}: no such device (this build has: cpu{}{}; `cpu` alone serves the CPU)", dlm::gguf::shown_name(name), if known.is_empty() { "" } else { ", " }, known.join(", "))
            })?;
            out.push(d.clone());
        }
        out
    };
    let host: Ipv4Addr = cli.host.parse().with_context(|| format!("-H {}: not an IPv4 address (ggml-rpc listens on IPv4 only; 0.0.0.0 for every interface)", dlm::gguf::shown_name(&cli.host)))?;
    if cli.port == 0 {
        bail!("-p 0: a fixed port is needed (clients name it in --rpc)");
    }
    // Bind once here for a clear error (ggml's server prints only "Failed to create server
    // socket"); the listener is closed at once and ggml binds the same address with SO_REUSEADDR.
    drop(TcpListener::bind((host, cli.port)).with_context(|| format!("cannot listen on {host}:{}", cli.port))?);
    let child = std::env::var_os(CHILD_ENV).is_some();
    if !host.is_loopback() && !child {
        dlm::errln!("warning: listening on {host}:{}: ggml-rpc has no authentication or encryption; anyone who can reach this port can use this machine's memory and compute. Use only on a trusted network.", cli.port);
    }
    let cache = if cli.cache { Some(cache_dir(cli.cache_dir)?) } else { None };
    if let Some(dir) = cache.as_ref().filter(|_| !child) {
        let (kept, removed) = dlm::backend::ggml::rpc::check_cache(dir)?;
        if removed > 0 {
            dlm::errln!("warning: removed {removed} damaged file(s) from the tensor cache {} (cut short by an interrupted write?); {kept} kept", dir.display());
        }
    }
    let served = if devices.is_empty() { format!("cpu ({threads} threads)") } else { devices.iter().map(|d| format!("{} ({})", d.name, d.description)).collect::<Vec<_>>().join(", ") };
    if !child {
        dlm::errln!("dlm-rpc-server: serving {served} on {host}:{} (RPC protocol {}.{}.{}{})", cli.port, dlm::backend::ggml::rpc::PROTOCOL.0, dlm::backend::ggml::rpc::PROTOCOL.1, dlm::backend::ggml::rpc::PROTOCOL.2, cache.as_ref().map_or(String::new(), |c| format!(", tensor cache {}", c.display())));
    }
    if child {
        child_dies_with_parent();
        dlm::backend::ggml::rpc::serve(&format!("{host}:{}", cli.port), cache.as_deref(), threads, &devices)?;
        return Ok(());
    }
    supervise()
}

/// Set in the environment of the serving child process.
const CHILD_ENV: &str = "DLM_RPC_SERVER_CHILD";

/// Runs this program again as the serving child, and again whenever it stops on its own after
/// having served (ggml ended it on a bad request): one client's request cannot take the server
/// down. A child that fails at once (cannot listen) ends the server with its status.
fn supervise() -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this program to start the serving process")?;
    let child_pid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let pid = child_pid.clone();
    dlm::cli::on_interrupt(move || {
        let p = pid.load(std::sync::atomic::Ordering::SeqCst);
        if p != 0 {
            let _ = std::process::Command::new("kill").arg(p.to_string()).status();
        }
    });
    loop {
        let started = std::time::Instant::now();
        let mut child = std::process::Command::new(&exe).args(std::env::args_os().skip(1)).env(CHILD_ENV, "1").spawn().context("starting the serving process")?;
        child_pid.store(child.id(), std::sync::atomic::Ordering::SeqCst);
        let status = child.wait().context("waiting for the serving process")?;
        child_pid.store(0, std::sync::atomic::Ordering::SeqCst);
        // A request ggml refused ends the serving process with its own status: serve again.
        // Anything else is restarted only after a while of serving (no tight loop on a fault).
        let refused = status.code() == Some(dlm::backend::ggml::rpc::EXIT_BAD_REQUEST);
        if !refused && started.elapsed() < std::time::Duration::from_secs(2) {
            std::process::exit(status.code().unwrap_or(dlm::cli::EXIT_ERROR as i32));
        }
        dlm::errln!("dlm-rpc-server: the serving process stopped ({status}); serving again");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The serving child ends when its supervisor does (killed, or interrupted), not only when
/// told to: a server left listening with nobody to restart or stop it would hold the port.
fn child_dies_with_parent() {
    #[cfg(target_os = "linux")]
    {
        #[allow(unsafe_code)]
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this process's parent-death signal.
        let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
        let _ = r;
        // The parent may have died before the call: then nobody would send the signal.
        #[allow(unsafe_code)]
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } == 1 {
            std::process::exit(0);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    dlm::cli::install();
    dlm::cli::exit(run(cli))
}
