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
/// activations; the key/value cache of those layers stays here. One client at a time; the next
/// waits until the first disconnects.
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
    if !host.is_loopback() {
        dlm::errln!("warning: listening on {host}:{}: ggml-rpc has no authentication or encryption; anyone who can reach this port can use this machine's memory and compute. Use only on a trusted network.", cli.port);
    }
    let cache = if cli.cache { Some(cache_dir(cli.cache_dir)?) } else { None };
    let served = if devices.is_empty() { format!("cpu ({threads} threads)") } else { devices.iter().map(|d| format!("{} ({})", d.name, d.description)).collect::<Vec<_>>().join(", ") };
    dlm::errln!("dlm-rpc-server: serving {served} on {host}:{} (RPC protocol {}.{}.{}{})", cli.port, dlm::backend::ggml::rpc::PROTOCOL.0, dlm::backend::ggml::rpc::PROTOCOL.1, dlm::backend::ggml::rpc::PROTOCOL.2, cache.as_ref().map_or(String::new(), |c| format!(", tensor cache {}", c.display())));
    dlm::backend::ggml::rpc::serve(&format!("{host}:{}", cli.port), cache.as_deref(), threads, &devices)?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    dlm::cli::install();
    dlm::cli::exit(run(cli))
}
