//! `GET /metrics`: counters, gauges and histograms in Prometheus' text format (version 0.0.4),
//! as llama.cpp's server exposes them, under the `dlm_` prefix.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// A histogram with fixed upper bounds (`le`), cumulative when written.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut acc = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            acc += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {acc}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}", self.count, self.sum, self.count);
    }
}

const SECONDS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
const SEQUENCES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

struct Histograms {
    request: Histogram,
    queue: Histogram,
    pass: Histogram,
    occupancy: Histogram,
}

/// Everything `/metrics` reports; shared by the handlers and the engine thread.
pub struct Metrics {
    /// Requests answered, by endpoint and status code.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    generated_tokens: AtomicU64,
    prompt_tokens: AtomicU64,
    passes: AtomicU64,
    pub cancelled: AtomicU64,
    /// Jobs submitted and not yet in the batch.
    pub queued: AtomicUsize,
    /// Sequences in the batch.
    pub active: AtomicUsize,
    /// Set on a second signal (or when the grace period ends): the engine drops everything.
    pub cancel_all: AtomicBool,
    hist: Mutex<Histograms>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            generated_tokens: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            cancel_all: AtomicBool::new(false),
            hist: Mutex::new(Histograms { request: Histogram::new(SECONDS), queue: Histogram::new(SECONDS), pass: Histogram::new(SECONDS), occupancy: Histogram::new(SEQUENCES) }),
        }
    }

    fn hist(&self, f: impl FnOnce(&mut Histograms)) {
        if let Ok(mut h) = self.hist.lock() {
            f(&mut h);
        }
    }

    pub fn request(&self, endpoint: &str, status: u16, seconds: f64, generation: bool) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((endpoint.to_owned(), status)).or_default() += 1;
        }
        if generation && status == 200 {
            self.hist(|h| h.request.observe(seconds));
        }
    }

    pub fn prompt(&self, tokens: usize) {
        self.prompt_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
    }

    pub fn generated(&self, tokens: usize) {
        self.generated_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
    }

    pub fn pass(&self, sequences: usize, seconds: f64) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.hist(|h| {
            h.pass.observe(seconds);
            h.occupancy.observe(sequences as f64);
        });
    }

    pub fn queue_wait(&self, seconds: f64) {
        self.hist(|h| h.queue.observe(seconds));
    }

    /// The text `/metrics` answers.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let _ = writeln!(out, "# HELP dlm_requests_total HTTP requests answered, by endpoint and status code.\n# TYPE dlm_requests_total counter");
        if let Ok(r) = self.requests.lock() {
            for ((endpoint, code), n) in r.iter() {
                let _ = writeln!(out, "dlm_requests_total{{endpoint=\"{}\",code=\"{code}\"}} {n}", escape(endpoint));
            }
        }
        counter(&mut out, "dlm_prompt_tokens_total", "Prompt and suffix tokens of admitted generation requests.", self.prompt_tokens.load(Ordering::Relaxed));
        counter(&mut out, "dlm_generated_tokens_total", "Tokens of generated text returned.", self.generated_tokens.load(Ordering::Relaxed));
        counter(&mut out, "dlm_steps_total", "Forward passes (denoising steps) run, each over the whole batch.", self.passes.load(Ordering::Relaxed));
        counter(&mut out, "dlm_sequences_cancelled_total", "Sequences dropped because their client went away or the server stopped.", self.cancelled.load(Ordering::Relaxed));
        gauge(&mut out, "dlm_queue_length", "Sequences waiting for a place in the batch.", self.queued.load(Ordering::Relaxed));
        gauge(&mut out, "dlm_active_sequences", "Sequences in the batch being denoised.", self.active.load(Ordering::Relaxed));
        if let Ok(h) = self.hist.lock() {
            h.occupancy.write(&mut out, "dlm_batch_sequences", "Sequences per forward pass (batch occupancy).");
            h.pass.write(&mut out, "dlm_step_seconds", "Seconds per forward pass.");
            h.queue.write(&mut out, "dlm_queue_seconds", "Seconds a sequence waited before joining the batch.");
            h.request.write(&mut out, "dlm_request_seconds", "Seconds from arrival to the last byte of successful generation requests.");
        }
        out
    }
}

/// A label value as Prometheus' text format quotes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
