//! Continuous batching: canvases that join and leave between forward passes, each with its own
//! parameters, unmasking rule and seeded schedule.
//!
//! Every pass runs all sequences that have work through one [`Forward::forward_seqs`] (one read
//! of the weights for all of them; another call each for greedy and for sampled sequences whose
//! rows the backend reduces), then each samples and commits on its own schedule, exactly
//! as [`crate::generate::generate`] does for it alone. A sequence added between passes joins at
//! the next one; a finished one leaves. `generate` and `generate_batch` are this engine with a
//! fixed set of sequences; `dlm-server` keeps one engine on a thread and feeds it requests.
//!
//! Results do not depend on the company a sequence keeps when the model's batched logits equal
//! its single-sequence logits bit for bit (attention runs per sequence; ggml's quantized
//! matmuls give every column the same arithmetic whatever their number: `tests/batch.rs`).
//! A sequence alone in a pass takes the single-sequence path, so a batch of one is `generate`.
//! A sequence with a Fast-dLLM [`Cache`] has a key/value cache of its own in the model (named
//! by [`crate::generate::new_cache_id`], freed when it leaves), so cached sequences batch like
//! any others: each computes what its own pass says, in the same forward pass.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::generate::{check_finite, guide, non_finite, Blind, CacheId, Forward, GenParams, Generation, Pass, Seq, SeqPass};
use crate::graph::Reduce;
use crate::sample::{Candidate, RowStats, Scores, Unmasker};

/// Candidates per row a sampled step brings back from the backend (top-k + 1 when a sequence's
/// top-k asks for more): enough for the nucleus of a confident row, 532 bytes per row.
pub const DEVICE_CANDIDATES: usize = 64;

/// Sampled sequences with a top-k of this or more take their logits rather than candidates.
pub const MAX_TOP_K: usize = 1024;

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
    /// Seconds in the model (the logits and row-statistics calls, and any retries one sequence
    /// at a time after a failed call).
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
/// Key/value caches of sequences that left are freed in the model at the next
/// [`Engine::step`] or [`Engine::free_caches`] (the engine holds no model between calls): an
/// engine dropped with cached sequences in it leaves their caches in the model until the model
/// goes, so remove them and call [`Engine::free_caches`] first.
#[derive(Default)]
pub struct Engine<'r> {
    slots: Vec<Slot<'r>>,
    next: SeqId,
    /// Caches of sequences that left, not yet freed in the model.
    released: Vec<CacheId>,
}

impl<'r> Engine<'r> {
    pub fn new() -> Engine<'r> {
        Engine { slots: Vec::new(), next: 0, released: Vec::new() }
    }

    /// Adds the canvas `prefix + [MASK] * p.n_gen + suffix`; it joins the next pass. Refused:
    /// invalid parameters.
    pub fn add(&mut self, prefix: &[u32], suffix: &[u32], p: GenParams, rule: Box<dyn Unmasker + 'r>) -> Result<SeqId> {
        p.check()?;
        let seq = Seq::new(prefix, suffix, &p, p.seed)?;
        let id = self.next;
        self.next += 1;
        self.slots.push(Slot { id, seq, p, rule });
        Ok(id)
    }

    /// Frees in `model` the key/value caches of sequences that have left (finished, failed or
    /// removed). [`Engine::step`] does this first; call it when done with an engine whose last
    /// sequences were removed.
    pub fn free_caches(&mut self, model: &mut dyn Forward) {
        for id in self.released.drain(..) {
            model.free_cache(id);
        }
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
        self.released.extend(s.seq.cache);
        Some(s.seq.result(&s.p))
    }

    /// Runs one forward pass for every sequence whose step needs one, and commits. Sequences
    /// whose step commits nothing take it without the pass. Returns `None` when the engine is
    /// empty. A failed pass of several sequences is run again one sequence at a time, so that
    /// only the sequences that fail alone leave, and non-finite logits end only the sequence
    /// they belong to: they leave with their error in [`Stepped::failed`] (their schedules moved
    /// on without the pass). Caches of sequences that left are freed first and last.
    pub fn step(&mut self, model: &mut dyn Forward) -> Result<Option<Stepped>> {
        self.free_caches(model);
        if self.slots.is_empty() {
            return Ok(None);
        }
        let out = self.pass(model);
        self.free_caches(model);
        Ok(Some(out))
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
        // What each sequence's pass computes, decided once (a storing pass marks its block
        // stored), so that a retry computes the same.
        let work: Vec<Work> = work
            .into_iter()
            .map(|(i, positions, chosen)| {
                let slot = &mut self.slots[i];
                let pass = slot.seq.pass(&slot.p);
                Work { i, positions, chosen, pass }
            })
            .collect();
        // Sequences without guidance and with the LM head on their own rows take the backend's
        // reduction when the model offers one (the logits stay there): greedy ones its row
        // statistics, sampled ones its candidates. The others take their logits. Each kind is
        // one forward pass, cached sequences or not.
        // Sampled sequences join the logits group when there is one anyway (one pass, one read
        // of the weights, rather than two), and so do those whose top-k asks for more
        // candidates than a row should bring back.
        let offered = model.device_candidates();
        let (mut stats, mut cands, mut logits) = (Vec::new(), Vec::new(), Vec::new());
        for w in work {
            let p = &self.slots[w.i].p;
            let plain = offered && p.cfg_scale == 0.0 && !p.full_lm_head;
            if plain && p.sampler.temp <= 0.0 {
                stats.push(w);
            } else if plain && p.sampler.draws_from_candidates() && p.sampler.top_k < MAX_TOP_K {
                cands.push(w);
            } else {
                logits.push(w);
            }
        }
        if !logits.is_empty() {
            logits.append(&mut cands);
            logits.sort_by_key(|w| w.i);
        }
        let k = cands.iter().map(|w| self.slots[w.i].p.sampler.top_k).filter(|&k| k > 0).map(|k| k + 1).fold(DEVICE_CANDIDATES, usize::max);
        for (group, reduce) in [(stats, Reduce::Stats), (cands, Reduce::Candidates { k }), (logits, Reduce::Logits)] {
            if group.is_empty() {
                continue;
            }
            let t0 = Instant::now();
            // A failed pass of several sequences is tried again one sequence at a time, so that
            // only the sequences that fail alone leave (a pass recomputes what it computed: the
            // same keys and values go into the same caches).
            let runs: Vec<(Vec<Work>, Result<Rows>)> = match self.run(model, &group, reduce) {
                Err(_) if group.len() > 1 => group
                    .into_iter()
                    .map(|w| {
                        let r = self.run(model, std::slice::from_ref(&w), reduce);
                        (vec![w], r)
                    })
                    .collect(),
                r => vec![(group, r)],
            };
            let dt = t0.elapsed().as_secs_f64();
            out.forward_seconds += dt;
            for (group, result) in runs {
                let mut rows = match result {
                    Ok(r) => r,
                    Err(e) => {
                        // Alone (or the only one): the sequence gets the error itself.
                        out.failed.push((self.slots[group[0].i].id, e));
                        continue;
                    }
                };
                let mut offset = 0;
                for (k, w) in group.iter().enumerate() {
                    let slot = &mut self.slots[w.i];
                    let (seq, p) = (&mut slot.seq, &slot.p);
                    let positions = &w.positions;
                    let cands = match &mut rows {
                        Rows::Logits(logits) => {
                            let shift = usize::from(p.shift_logits);
                            let mine = &logits.rows[offset..offset + logits.lens[k]];
                            offset += logits.lens[k];
                            if let Err(e) = check_finite(mine, seq.forward_seconds.len()) {
                                out.failed.push((slot.id, e));
                                continue;
                            }
                            // Positions the rule chose blind need only their tokens.
                            let scores = if w.chosen { Scores::NONE } else { slot.rule.scores() };
                            let first = logits.first[k];
                            seq.candidates(p, positions, mine, n_vocab, scores, |k| match first {
                                Some(f) => positions[k] - shift - f,
                                None => k,
                            })
                        }
                        Rows::Stats(stats) => {
                            let Some(mine) = stats.get(offset..offset + positions.len()) else {
                                out.failed.push((slot.id, Error::Invalid(format!("the model returned {} row statistics for a pass that needs more", stats.len()))));
                                continue;
                            };
                            offset += positions.len();
                            if mine.iter().any(|r| !r.is_finite()) {
                                out.failed.push((slot.id, non_finite(seq.forward_seconds.len())));
                                continue;
                            }
                            mine.iter().map(RowStats::candidate).collect()
                        }
                        Rows::Candidates(per_seq) => match std::mem::replace(&mut per_seq[k], Ok(Vec::new())) {
                            Ok(c) => c,
                            Err(e) => {
                                out.failed.push((slot.id, e));
                                continue;
                            }
                        },
                    };
                    seq.forward_seconds.push(dt);
                    let committed = if w.chosen {
                        seq.apply(p, positions, &cands, &(0..positions.len()).collect::<Vec<_>>())
                    } else {
                        seq.commit(p, positions, &cands, slot.rule.as_mut())
                    };
                    out.ran.push((slot.id, committed));
                }
            }
        }
        let released = &mut self.released;
        self.slots.retain(|s| {
            let failed = out.failed.iter().any(|(id, _)| *id == s.id);
            if failed {
                released.extend(s.seq.cache);
            }
            !failed
        });
        // Complete canvases leave (also those whose last steps committed nothing).
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots[i].seq.positions().is_empty() {
                let s = self.slots.remove(i);
                self.released.extend(s.seq.cache);
                out.finished.push((s.id, s.seq.finish(&s.p)));
            } else {
                i += 1;
            }
        }
        out
    }

    /// One forward pass for the sequences of `group`: their row statistics (`reduce`: greedy,
    /// unguided sequences with the LM head on their sampled rows), their candidates sampled
    /// (sampled sequences alike), or their logits, guided where asked, sequence after sequence.
    fn run(&self, model: &mut dyn Forward, group: &[Work], reduce: Reduce) -> Result<Rows> {
        let n_vocab = model.n_vocab();
        // Each sequence's logits rows: the rows before its sampled positions, or every computed
        // position (`full_lm_head`).
        let rows: Vec<Option<Vec<usize>>> = group
            .iter()
            .map(|w| {
                let s = &self.slots[w.i];
                (!s.p.full_lm_head).then(|| w.positions.iter().map(|&q| q - usize::from(s.p.shift_logits)).collect())
            })
            .collect();
        if reduce != Reduce::Logits {
            let items: Vec<SeqPass<'_>> = group.iter().zip(&rows).map(|(w, r)| SeqPass { tokens: self.slots[w.i].seq.tokens(), pass: w.pass, rows: r.as_deref() }).collect();
            return match reduce {
                Reduce::Candidates { k } => self.sample_candidates(model, group, &items, k).map(Rows::Candidates),
                _ => model.forward_stats(&items).map(Rows::Stats),
            };
        }
        // With guidance each sequence brings its prompt-masked canvas too, right after it.
        let uncond: Vec<Option<Vec<u32>>> = group
            .iter()
            .map(|w| {
                let s = &self.slots[w.i];
                (s.p.cfg_scale > 0.0).then(|| s.seq.unconditional(s.p.mask_id))
            })
            .collect();
        let mut items: Vec<SeqPass<'_>> = Vec::new();
        for ((w, r), u) in group.iter().zip(&rows).zip(&uncond) {
            items.push(SeqPass { tokens: self.slots[w.i].seq.tokens(), pass: w.pass, rows: r.as_deref() });
            if let Some(u) = u {
                items.push(SeqPass { tokens: u, pass: Pass::Full, rows: r.as_deref() });
            }
        }
        let mut all = model.forward_seqs(&items)?;
        // Guide in place, then drop the unconditional rows.
        let (mut out, mut lens, mut first, mut at) = (Vec::with_capacity(all.len()), Vec::new(), Vec::new(), 0);
        for ((w, r), u) in group.iter().zip(&rows).zip(&uncond) {
            let computed = match w.pass {
                Pass::Reuse { start, end, .. } => end - start,
                _ => self.slots[w.i].seq.tokens().len(),
            };
            let n = r.as_ref().map_or(computed, Vec::len) * n_vocab;
            if at + n * (1 + usize::from(u.is_some())) > all.len() {
                return Err(Error::Invalid(format!("the model returned {} logits for a pass that needs more", all.len())));
            }
            if u.is_some() {
                let (cond, un) = all[at..at + 2 * n].split_at_mut(n);
                guide(cond, un, self.slots[w.i].p.cfg_scale);
            }
            out.extend_from_slice(&all[at..at + n]);
            at += if u.is_some() { 2 * n } else { n };
            lens.push(n);
            first.push(r.is_none().then(|| w.pass.start()));
        }
        all.clear();
        Ok(Rows::Logits(Logits { rows: out, lens, first }))
    }
}

impl Engine<'_> {
    /// The candidates of the sequences of `group` (passes `items`) for a sampled step: drawn
    /// from the `k` candidates per row the backend returns where that draw is certain
    /// ([`crate::sample::TokenSampler::sample_candidates`]), from the row's logits, read back
    /// from the backend, where it is not. Per sequence: its candidates, or why it fails.
    fn sample_candidates(&self, model: &mut dyn Forward, group: &[Work], items: &[SeqPass<'_>], k: usize) -> Result<Vec<Result<Vec<Candidate>>>> {
        use rayon::prelude::*;
        let n_vocab = model.n_vocab();
        let inv_temp: Vec<f32> = group.iter().map(|w| 1.0 / self.slots[w.i].p.sampler.temp).collect();
        let rows = model.forward_candidates(items, &inv_temp, k)?;
        // (sequence, row of the pass) of every sampled position, in order.
        let mut at = Vec::new();
        for (j, w) in group.iter().enumerate() {
            at.extend((0..w.positions.len()).map(|q| (j, q)));
        }
        if rows.len() != at.len() {
            return Err(Error::Invalid(format!("the model returned {} row candidates for a pass that needs {}", rows.len(), at.len())));
        }
        // Per sequence: its sampler, the scores its rule reads, its canvas and positions.
        let of: Vec<_> = group
            .iter()
            .map(|w| {
                let s = &self.slots[w.i];
                (s.p.sampler, if w.chosen { Scores::NONE } else { s.rule.scores() }, &s.seq, &w.positions)
            })
            .collect();
        let mut drawn: Vec<Option<Candidate>> = rows
            .par_iter()
            .zip(&at)
            .map(|(c, &(j, q))| {
                let (sampler, scores, seq, positions) = of[j];
                sampler.sample_candidates(c, n_vocab, &mut seq.position_rng(positions[q]), scores)
            })
            .collect();
        // The rows the candidates cannot serve: their logits, sampled as the host always does.
        let missing: Vec<usize> = (0..drawn.len()).filter(|&r| drawn[r].is_none()).collect();
        let mut failed: Vec<Option<Error>> = group.iter().map(|_| None).collect();
        if !missing.is_empty() {
            let logits = model.read_kept_rows(&missing)?;
            if logits.len() != missing.len() * n_vocab {
                return Err(Error::Invalid(format!("the model returned {} logits for {} kept rows", logits.len(), missing.len())));
            }
            for (row, &r) in logits.chunks_exact(n_vocab).zip(&missing) {
                let (j, q) = at[r];
                let (sampler, scores, seq, positions) = of[j];
                if let Err(e) = check_finite(row, seq.forward_seconds.len()) {
                    failed[j].get_or_insert(e);
                    continue;
                }
                drawn[r] = Some(sampler.sample_scores(row, &mut seq.position_rng(positions[q]), scores));
            }
        }
        let mut drawn = drawn.into_iter();
        Ok(group
            .iter()
            .zip(failed)
            .map(|(w, f)| {
                let mine: Vec<Option<Candidate>> = drawn.by_ref().take(w.positions.len()).collect();
                match f {
                    Some(e) => Err(e),
                    None => Ok(mine.into_iter().map(|c| c.expect("every row drawn")).collect()),
                }
            })
            .collect())
    }
}

/// One sequence's part of a pass: its slot, the positions it samples (all its masked ones, or
/// those its rule chose blind: `chosen`), and what the pass computes for it.
struct Work {
    i: usize,
    positions: Vec<usize>,
    chosen: bool,
    pass: Pass,
}

/// What a group's pass brought back.
enum Rows {
    Logits(Logits),
    /// Each sequence's sampled positions' statistics, in order, sequence after sequence.
    Stats(Vec<RowStats>),
    /// Each sequence's candidates (sampled steps), or why it fails.
    Candidates(Vec<Result<Vec<Candidate>>>),
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
