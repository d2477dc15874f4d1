"""dlm from Python: diffusion language models (DiffuLLaMA, LLaDA, Dream, DiffuGPT) from GGUF files.

    import dlm
    m = dlm.Model("diffullama-q4.gguf", threads=4)
    g = m.generate("Today is a wonderful day,", n_predict=64, seed=1)
    print(g.text)
    for state in m.stream("copy 6859:", n_predict=8, seed=1):
        print(state.step, state.text)          # masked positions drawn as "_"

Every keyword argument is the `dlm-run` flag of the same name (`top_p` is `--top-p`) with the
same meaning, default and checks, so a generation with a seed equals `dlm-run`'s with that seed.
Bad arguments raise ValueError with the one-line message dlm-run would print. Passes run with
the GIL released; a Model serves one call at a time (others wait), so threads may share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union, overload

import os

import numpy as np

# Vulkan drivers probe for a Wayland display when wgpu makes its instance (backend="auto" looks
# for a GPU); without XDG_RUNTIME_DIR (headless machines, containers) libwayland prints an
# "error:" line although nothing is wrong. A path that does not exist makes the probe quiet, as
# the dlm binaries do.
if "XDG_RUNTIME_DIR" not in os.environ and "WAYLAND_DISPLAY" not in os.environ:
    os.environ["XDG_RUNTIME_DIR"] = "/nonexistent/dlm-headless"

from . import _dlm  # noqa: E402

__all__ = ["Model", "Generation", "State", "Stream", "Likelihood", "version"]


def version() -> str:
    """This build's version and the linked ggml's."""
    return _dlm.version()


def _flags(settings: Dict[str, object]) -> List[str]:
    """Keyword arguments as dlm-run flags: `top_p=0.9` -> `--top-p=0.9`; True -> the bare flag;
    lists -> comma-separated (`stop` repeats the flag: stop strings may hold commas)."""
    out: List[str] = []
    for key, value in settings.items():
        if value is None or value is False:
            continue
        if key == "temperature":
            key = "temp"
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif key == "stop":
            for s in [value] if isinstance(value, str) else value:
                out.append(f"{flag}={s}")
        elif isinstance(value, (list, tuple)):
            out.append(f"{flag}={','.join(str(v) for v in value)}")
        else:
            out.append(f"{flag}={value}")
    return out


@dataclass(frozen=True)
class Generation:
    """A finished generation: the text after the prompt (cut at a stop string), its token ids,
    the prompt's ids as laid out on the canvas (BOS first), forward passes run, the seed used, the
    stop string that ended it (or None), and milliseconds per pass."""

    text: str
    tokens: List[int]
    prompt_tokens: List[int]
    steps: int
    seed: int
    stop: Optional[str]
    forward_ms: List[float]


@dataclass(frozen=True)
class State:
    """The generated span after a step: its text with masked positions drawn as the mask string,
    its token ids (masked positions hold the mask id), which positions are still masked, and how
    many positions this step committed."""

    step: int
    text: str
    tokens: List[int]
    masked: List[bool]
    committed: int


@dataclass(frozen=True)
class Likelihood:
    """`eval_forward` score (mean cross-entropy of masked tokens over levels; lower is more
    likely), the ELBO bound (nats per token), their standard errors over draws (None with one
    draw), and the number of scored tokens."""

    score: float
    score_se: Optional[float]
    elbo: float
    elbo_se: Optional[float]
    n_scored: int


class Stream:
    """The states of one generation, one per step, as they happen (the generation runs on a
    thread of its own; leaving the loop early stops it at the next step)."""

    def __init__(self, native: "_dlm.Stream") -> None:
        self._native = native

    def __iter__(self) -> Iterator[State]:
        for d in self._native:
            yield State(**d)

    def result(self) -> Generation:
        """The finished generation (runs the rest of it if the states were not all read)."""
        return Generation(**self._native.result())


class Model:
    """A GGUF model loaded for generation and scoring.

    Keyword arguments are dlm-run's model flags: backend ("auto", "cpu", "wgpu", "cuda",
    "metal", "vulkan"), threads, device, n_gpu_layers, flash_attn ("on"/"off"), mask_id, shift,
    rpc (a list of "HOST:PORT"), tensor_split, device_candidates ("on"/"off"/"auto"),
    no_check_tensors.
    """

    def __init__(self, path: str, **flags: object) -> None:
        self._native = _dlm.Model(str(path), _flags(flags))
        self._info = self._native.info()

    @property
    def info(self) -> Dict[str, object]:
        """architecture, n_vocab, n_ctx_train, n_embd, n_layer, mask_id, shift_logits, backend, path."""
        return dict(self._info)

    @property
    def n_vocab(self) -> int:
        return int(self._info["n_vocab"])  # type: ignore[arg-type]

    @overload
    def generate(self, prompt: str, **settings: object) -> Generation: ...
    @overload
    def generate(self, prompt: Sequence[str], **settings: object) -> List[Generation]: ...

    def generate(self, prompt: Union[str, Sequence[str]], **settings: object) -> Union[Generation, List[Generation]]:
        """Generates after `prompt` (a list: one generation each, denoised together in batches;
        each equals its own run with the same seed). Settings are dlm-run's generation flags:
        n_predict, steps, unmask, block_length, threshold, temp (or temperature), top_k, top_p,
        seed, cache, cfg_scale, diffusion_eps, diffusion_alg_temp, diffusion_add_gumbel_noise,
        suffix, stop (a string or a list), ctx_size. Without a seed each call draws one (see
        `Generation.seed`)."""
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            return []
        if any(not isinstance(p, str) for p in prompts):
            raise TypeError("prompt must be a string or a list of strings")
        outs = [Generation(**d) for d in self._native.generate(prompts, _flags(settings))]
        return outs[0] if single else outs

    def stream(self, prompt: str, *, mask: str = "_", **settings: object) -> Stream:
        """The states of a generation for `prompt`, one per step (settings as `generate`);
        masked positions are drawn as `mask`. `Stream.result()` gives the finished generation."""
        return Stream(self._native.stream(str(prompt), _flags(dict(settings, mask=mask))))

    def tokenize(self, text: str, *, bos: bool = True) -> List[int]:
        """Token ids of `text`; with `bos` laid out as a prompt (BOS first when the model adds one)."""
        return list(self._native.tokenize(str(text), bool(bos)))

    def detokenize(self, ids: Sequence[int]) -> str:
        return str(self._native.detokenize([int(i) for i in ids]))

    def logits(self, tokens: Union[str, Sequence[int]]) -> np.ndarray:
        """Logits of every position of `tokens` (a string is tokenized as a prompt) in one
        bidirectional pass: float32 array of shape (len(tokens), n_vocab)."""
        ids = self.tokenize(tokens) if isinstance(tokens, str) else [int(t) for t in tokens]
        raw = self._native.logits(ids)
        return np.frombuffer(raw, dtype="<f4").reshape(len(ids), self.n_vocab)

    def likelihood(self, context: str, continuation: str, *, suffix: str = "", levels: int = 32, draws: int = 8, seed: int = 0) -> Likelihood:
        """The DiffuLLaMA paper's score of `continuation` after `context` (dlm-score likelihood)."""
        return Likelihood(**self._native.likelihood(context, continuation, suffix, levels, draws, seed))

    def kl_base(self, text: str, path: str, *, ctx: Optional[int] = None, levels: int = 8, draws: int = 1, seed: int = 0) -> Dict[str, object]:
        """Writes the base file of the KL workflow (dlm-score perplexity --kl-divergence-base):
        `text` in windows of `ctx` tokens (default min(512, context)) scored by this model, every
        masked row's distribution kept at `path`. Returns {windows, elbo, elbo_se, score, score_se}."""
        import json

        return json.loads(self._native.kl_base(str(text), str(path), ctx, levels, draws, seed))

    def kl(self, base: str) -> Dict[str, object]:
        """KL divergence of this model's distributions from a base file's (written by `kl_base`
        or dlm-score), as dlm-score perplexity --kl-divergence reports it: mean_kld, percentiles,
        same_top1, score and elbo of both, rows, windows."""
        import json

        return json.loads(self._native.kl(str(base)))

    def choose(self, context: str, choices: Sequence[str], *, suffix: str = "", levels: int = 32, draws: int = 1, seed: int = 0) -> Tuple[int, List[Likelihood]]:
        """Scores each choice after `context` and returns the index of the lowest score (the most
        likely) with every score (dlm-score choice, one item)."""
        pred, scores = self._native.choose(context, list(choices), suffix, levels, draws, seed)
        return int(pred), [Likelihood(**s) for s in scores]
