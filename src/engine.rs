//! Continuous batching: canvases that join and leave between forward passes, each with its own
//! parameters, unmasking rule and seeded schedule.
//!
//! Every pass runs all sequences that have work through one [`Forward::forward_batch`] (one read
//! of the weights for all of them), then each samples and commits on its own schedule, exactly
//! as [`crate::generate::generate`] does for it alone. A sequence added between passes joins at
//! the next one; a finished one leaves. `generate` and `generate_batch` are this engine with a
//! fixed set of sequences; `dlm-server` keeps one engine on a thread and feeds it requests.
//!
//! Results do not depend on the company a sequence keeps when the model's batched logits equal
//! its single-sequence logits bit for bit (attention runs per sequence; ggml's quantized
//! matmuls give every column the same arithmetic whatever their number: `tests/batch.rs`).
//! A sequence alone in a pass takes the single-sequence path, so a batch of one is `generate`.
//! Fast-dLLM's caches are per model, so at most one sequence with a [`Cache`] other than
//! [`Cache::None`] runs at a time, in its own call next to the batch.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::generate::{check_finite, guide, non_finite, Blind, Cache, Forward, GenParams, Generation, Pass, Seq};
use crate::sample::{RowStats, Scores, Unmasker};

/// Names a sequence of an [`Engine`] (given out by [`Engine::add`], from 0, never reused).
pub type SeqId = u64;

struct Slot<'r> {
    id: SeqId,
    seq: Seq,
    p: GenParams,
    rule: Box<dyn Unmasker + 'r>,
}

/// What one call of [`Engine::step`] did.
#[derive(Debug, Default)]
pub struct Stepped {
    /// The sequences that took part in the pass, with how many positions each committed
    /// (empty when no pass was needed: every sequence's step committed nothing, or finished).
    pub ran: Vec<(SeqId, usize)>,
    /// Seconds in the model (both calls when a cached sequence ran beside the batch).
    pub forward_seconds: f64,
    /// Sequences whose canvas is now complete; they have left the engine.
    pub finished: Vec<(SeqId, Generation)>,
    /// Sequences whose pass failed (the model's error, or non-finite logits), with the error;
    /// they have left the engine. The others went on.
    pub failed: Vec<(SeqId, Error)>,
}

/// A sequence as it stands, for progress reports and streaming.
#[derive(Debug)]
pub struct View<'a> {
    pub canvas: &'a [u32],
    pub masked: &'a [bool],
    /// The generated span of the canvas.
    pub span: std::ops::Range<usize>,
    /// Forward passes this sequence took part in.
    pub steps: usize,
    /// The block being denoised.
    pub block: usize,
}

/// The set of sequences being denoised together. `'r` bounds the unmasking rules it holds.
#[derive(Default)]
pub struct Engine<'r> {
    slots: Vec<Slot<'r>>,
    next: SeqId,
}

impl<'r> Engine<'r> {
    pub fn new() -> Engine<'r> {
        Engine { slots: Vec::new(), next: 0 }
    }

    /// Adds the canvas `prefix + [MASK] * p.n_gen + suffix`; it joins the next pass. Refused:
    /// invalid parameters, and a second sequence with a key/value cache while one runs
    /// ([`Engine::has_cached`]).
    pub fn add(&mut self, prefix: &[u32], suffix: &[u32], p: GenParams, rule: Box<dyn Unmasker + 'r>) -> Result<SeqId> {
        p.check()?;
        if p.cache != Cache::None && self.has_cached() {
            return Err(Error::Invalid("a sequence with a key/value cache is already running (the cache is per model): add this one when it has finished".into()));
        }
        let seq = Seq::new(prefix, suffix, &p, p.seed)?;
        let id = self.next;
        self.next += 1;
        self.slots.push(Slot { id, seq, p, rule });
        Ok(id)
    }

    /// Whether a sequence with a key/value cache is in the engine.
    pub fn has_cached(&self) -> bool {
        self.slots.iter().any(|s| s.p.cache != Cache::None)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.slots.iter().map(|s| s.id)
    }

    pub fn view(&self, id: SeqId) -> Option<View<'_>> {
        let s = self.slots.iter().find(|s| s.id == id)?;
        Some(View { canvas: &s.seq.canvas, masked: &s.seq.masked, span: s.seq.start..s.seq.end, steps: s.seq.forward_seconds.len(), block: s.seq.b })
    }

    /// Takes a sequence out before it has finished (a cancelled request): its canvas as it stands.
    pub fn remove(&mut self, id: SeqId) -> Option<Generation> {
        let i = self.slots.iter().position(|s| s.id == id)?;
        let s = self.slots.remove(i);
        Some(s.seq.result(&s.p))
    }

    /// Runs one forward pass for every sequence whose step needs one, and commits. Sequences
    /// whose step commits nothing take it without the pass. Returns `None` when the engine is
    /// empty. A failed pass ends only the sequences it was for (the cached sequence runs in a
    /// call of its own), and non-finite logits only the sequence they belong to: they leave
    /// with their error in [`Stepped::failed`] (their schedules moved on without the pass).
    pub fn step(&mut self, model: &mut dyn Forward) -> Result<Option<Stepped>> {
        if self.slots.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.pass(model)))
    }

    fn pass(&mut self, model: &mut dyn Forward) -> Stepped {
        let mut out = Stepped::default();
        // Each sequence's masked positions, or the ones its rule chose before the logits.
        let work: Vec<(usize, Vec<usize>, bool)> = loop {
            let mut work = Vec::new();
            let mut left = false;
            for (i, s) in self.slots.iter_mut().enumerate() {
                let positions = s.seq.positions();
                if positions.is_empty() {
                    continue;
                }
                left = true;
                match s.seq.blind(&positions, s.rule.as_mut()) {
                    Blind::Skipped => {}
                    Blind::Chosen(chosen) => work.push((i, chosen, true)),
                    Blind::Needs => work.push((i, positions, false)),
                }
            }
            if !work.is_empty() || !left {
                break work;
            }
        };
        let n_vocab = model.n_vocab();
        let (cached, batched): (Vec<_>, Vec<_>) = work.into_iter().partition(|(i, _, _)| self.slots[*i].p.cache != Cache::None);
        for group in [cached, batched] {
            if group.is_empty() {
                continue;
            }
            let t0 = Instant::now();
            // Greedy sequences without guidance and with the LM head on their own rows take
            // the backend's row statistics when the model offers them (the logits stay there).
            let reduce = model.device_candidates()
                && group.iter().all(|(i, _, _)| {
                    let p = &self.slots[*i].p;
                    p.sampler.temp <= 0.0 && p.cfg_scale == 0.0 && !p.full_lm_head
                });
            let result = if reduce { self.forward_stats(model, &group).map(Rows::Stats) } else { self.forward(model, &group).map(Rows::Logits) };
            let rows = match result {
                Ok(r) => r,
                Err(e) => {
                    // The first sequence gets the error itself (its variant intact), the others
                    // its message.
                    let ids: Vec<SeqId> = group.iter().map(|(i, _, _)| self.slots[*i].id).collect();
                    for &id in &ids[1..] {
                        out.failed.push((id, Error::Invalid(e.to_string())));
                    }
                    out.failed.insert(out.failed.len() - (ids.len() - 1), (ids[0], e));
                    continue;
                }
            };
            let dt = t0.elapsed().as_secs_f64();
            out.forward_seconds += dt;
            let mut offset = 0;
            for (k, (i, positions, chosen)) in group.iter().enumerate() {
                let slot = &mut self.slots[*i];
                let (seq, p) = (&mut slot.seq, &slot.p);
                let cands = match &rows {
                    Rows::Logits(logits) => {
                        let shift = usize::from(p.shift_logits);
                        let mine = &logits.rows[offset..offset + logits.lens[k]];
                        offset += logits.lens[k];
                        if let Err(e) = check_finite(mine, seq.forward_seconds.len()) {
                            out.failed.push((slot.id, e));
                            continue;
                        }
                        // Positions the rule chose blind need only their tokens.
                        let scores = if *chosen { Scores::NONE } else { slot.rule.scores() };
                        let first = logits.first[k];
                        seq.candidates(p, positions, mine, n_vocab, scores, |k| match first {
                            Some(f) => positions[k] - shift - f,
                            None => k,
                        })
                    }
                    Rows::Stats(stats) => {
                        let mine = &stats[offset..offset + positions.len()];
                        offset += positions.len();
                        if mine.iter().any(|r| !r.is_finite()) {
                            out.failed.push((slot.id, non_finite(seq.forward_seconds.len())));
                            continue;
                        }
                        mine.iter().map(RowStats::candidate).collect()
                    }
                };
                seq.forward_seconds.push(dt);
                let committed = if *chosen {
                    seq.apply(p, positions, &cands, &(0..positions.len()).collect::<Vec<_>>())
                } else {
                    seq.commit(p, positions, &cands, slot.rule.as_mut())
                };
                out.ran.push((slot.id, committed));
            }
        }
        self.slots.retain(|s| !out.failed.iter().any(|(id, _)| *id == s.id));
        // Complete canvases leave (also those whose last steps committed nothing).
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots[i].seq.positions().is_empty() {
                let s = self.slots.remove(i);
                out.finished.push((s.id, s.seq.finish(&s.p)));
            } else {
                i += 1;
            }
        }
        out
    }

    /// The row statistics of one group of greedy, unguided sequences with the LM head on their
    /// sampled rows (the cached one alone, or the batch), sequence after sequence.
    fn forward_stats(&mut self, model: &mut dyn Forward, group: &[(usize, Vec<usize>, bool)]) -> Result<Vec<RowStats>> {
        let rows: Vec<Vec<usize>> = group.iter().map(|(i, pos, _)| pos.iter().map(|&q| q - usize::from(self.slots[*i].p.shift_logits)).collect()).collect();
        let row_refs: Vec<&[usize]> = rows.iter().map(Vec::as_slice).collect();
        if let [(i, _, _)] = group {
            let slot = &mut self.slots[*i];
            let pass = slot.seq.pass(&slot.p);
            return model.forward_stats(&[&slot.seq.canvas], pass, &row_refs);
        }
        let tokens: Vec<&[u32]> = group.iter().map(|(i, _, _)| self.slots[*i].seq.canvas.as_slice()).collect();
        model.forward_stats(&tokens, Pass::Full, &row_refs)
    }

    /// The logits of one group of sequences (the cached one alone, or the batch), guided where
    /// asked: per sequence, its rows in order, and where its row 0 sits on the canvas when the
    /// rows are every computed position (`full_lm_head`).
    fn forward(&mut self, model: &mut dyn Forward, group: &[(usize, Vec<usize>, bool)]) -> Result<Logits> {
        let n_vocab = model.n_vocab();
        let rows: Vec<Vec<usize>> = group
            .iter()
            .map(|(i, pos, _)| {
                let s = &self.slots[*i];
                if s.p.full_lm_head { (0..s.seq.canvas.len()).collect() } else { pos.iter().map(|&q| q - usize::from(s.p.shift_logits)).collect() }
            })
            .collect();
        if let [(i, _, _)] = group {
            // Alone: the single-sequence path, as `generate` has always run it.
            let slot = &mut self.slots[*i];
            let (seq, p) = (&mut slot.seq, &slot.p);
            if p.cfg_scale == 0.0 {
                let pass = seq.pass(p);
                let (rows_v, first) = if p.full_lm_head {
                    (model.forward_rows(&seq.canvas, pass, None)?, Some(pass.start()))
                } else {
                    (model.forward_rows(&seq.canvas, pass, Some(&rows[0]))?, None)
                };
                let len = rows_v.len();
                return Ok(Logits { rows: rows_v, lens: vec![len], first: vec![first] });
            }
        }
        // With guidance each sequence brings its prompt-masked canvas too, right after it.
        let uncond: Vec<Option<Vec<u32>>> = group.iter().map(|(i, _, _)| {
            let s = &self.slots[*i];
            (s.p.cfg_scale > 0.0).then(|| s.seq.unconditional(s.p.mask_id))
        }).collect();
        let mut tokens: Vec<&[u32]> = Vec::new();
        let mut row_refs: Vec<&[usize]> = Vec::new();
        for (((i, _, _), r), u) in group.iter().zip(&rows).zip(&uncond) {
            tokens.push(&self.slots[*i].seq.canvas);
            row_refs.push(r);
            if let Some(u) = u {
                tokens.push(u);
                row_refs.push(r);
            }
        }
        let mut all = model.forward_batch(&tokens, &row_refs)?;
        // Guide in place, then drop the unconditional rows.
        let (mut out, mut lens, mut first, mut at) = (Vec::with_capacity(all.len()), Vec::new(), Vec::new(), 0);
        for (((i, _, _), r), u) in group.iter().zip(&rows).zip(&uncond) {
            let n = r.len() * n_vocab;
            if u.is_some() {
                let (cond, un) = all[at..at + 2 * n].split_at_mut(n);
                guide(cond, un, self.slots[*i].p.cfg_scale);
            }
            out.extend_from_slice(&all[at..at + n]);
            at += if u.is_some() { 2 * n } else { n };
            lens.push(n);
            first.push(self.slots[*i].p.full_lm_head.then_some(0));
        }
        all.clear();
        Ok(Logits { rows: out, lens, first })
    }
}

/// What a group's pass brought back.
enum Rows {
    Logits(Logits),
    /// Each sequence's sampled positions' statistics, in order, sequence after sequence.
    Stats(Vec<RowStats>),
}

/// Logits of a group, sequence after sequence.
struct Logits {
    rows: Vec<f32>,
    /// Floats per sequence.
    lens: Vec<usize>,
    /// Canvas row of each sequence's first logits row, when its rows are every computed
    /// position (`full_lm_head`); `None`: its rows are its sampled positions, in order.
    first: Vec<Option<usize>>,
}
