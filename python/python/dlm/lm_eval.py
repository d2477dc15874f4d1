"""dlm as an lm-evaluation-harness model, registered under the name `dlm`.

    python -m dlm.lm_eval --model dlm --model_args path=model.gguf,levels=32 --tasks piqa

takes every argument `lm_eval` takes (it registers the model, then runs lm_eval's own command
line); from Python, `import dlm.lm_eval` registers it for `lm_eval.simple_evaluate(model="dlm",
model_args="path=...")`. (lm_eval finds models only among its own modules or ones imported
before it runs, so plain `lm_eval --model dlm` cannot see it.)

A diffusion LM has no left-to-right likelihood, so:

- `loglikelihood` is minus the DiffuLLaMA paper's `eval_forward` score (mean cross-entropy of the
  masked continuation tokens over `levels` masking levels, `draws` repetitions): higher is more
  likely, and the ranking of choices is exactly `dlm-score choice`'s (each request is masked with
  the seed of its document, `dlm-score choice` seeds an item by its line). `is_greedy` is always
  False (there is no greedy continuation to compare with).
- `loglikelihood_rolling` is minus the ELBO bound on the document's negative log-likelihood
  (nats), in windows of the model's context: a bound, so perplexities from it are upper bounds.
- `generate_until` generates `max_gen_toks` (default `n_predict`) tokens with the sampler and the
  model_args' generation settings (any dlm-run flag: steps, unmask, temp, block_length, ...),
  cut at the first of `until`.

model_args: path (required), levels (32), draws (1), seed (0), n_predict (128), and dlm-run's
model flags (threads, backend, device, n_gpu_layers, ...) and generation flags.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from . import Model

_MODEL_FLAGS = {"threads", "backend", "device", "n_gpu_layers", "flash_attn", "mask_id", "shift", "rpc", "tensor_split", "device_candidates", "no_check_tensors"}


@register_model("dlm")
class DlmLM(LM):
    def __init__(self, path: str, levels: int = 32, draws: int = 1, seed: int = 0, n_predict: int = 128, batch_size: Any = None, max_batch_size: Any = None, device: Any = None, **settings: Any) -> None:
        super().__init__()
        model_flags = {k: v for k, v in settings.items() if k in _MODEL_FLAGS}
        self._gen = {k: v for k, v in settings.items() if k not in _MODEL_FLAGS}
        self.model = Model(path, **model_flags)
        self.levels, self.draws, self.seed, self.n_predict = int(levels), int(draws), int(seed), int(n_predict)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: Optional[Dict[str, Any]] = None) -> "DlmLM":
        args: Dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in arg_string.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"model_args: `{part}` is not key=value")
            args[key.strip()] = _value(value.strip())
        for k, v in (additional_config or {}).items():
            if v is not None:
                args.setdefault(k, v)
        return cls(**args)

    @property
    def tokenizer_name(self) -> str:
        return str(self.model.info["path"])

    def loglikelihood(self, requests: List[Any], disable_tqdm: bool = False) -> List[Tuple[float, bool]]:
        pairs = [(req.args[0], req.args[1]) for req in requests]
        ids = [int(req.doc_id) if req.doc_id is not None else i for i, req in enumerate(requests)]
        scores = self.model._native.likelihoods(pairs, ids, self.levels, self.draws, self.seed)
        return [(-float(s["score"]), False) for s in scores]

    def loglikelihood_rolling(self, requests: List[Any], disable_tqdm: bool = False) -> List[float]:
        out = []
        for req in requests:
            nats, _ = self.model._native.rolling(req.args[0], self.levels, self.draws, self.seed)
            out.append(-float(nats))
        return out

    def generate_until(self, requests: List[Any], disable_tqdm: bool = False) -> List[str]:
        out = []
        for req in requests:
            context, kwargs = req.args[0], dict(req.args[1] or {})
            until = kwargs.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            n = int(kwargs.pop("max_gen_toks", self.n_predict))
            settings = dict(self._gen)
            if "temperature" in kwargs and "temp" not in settings:
                settings["temp"] = float(kwargs["temperature"])
            if not kwargs.get("do_sample", True) and "temp" not in self._gen:
                settings["temp"] = 0
            settings.setdefault("seed", self.seed)
            g = self.model.generate(context, n_predict=n, stop=list(until), **settings)
            out.append(g.text)
        return out


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
