"""The slice of each results file that the tests recompute, so that no committed figure can go stale.

A sweep takes minutes to hours, but its first few training steps take seconds and are a prefix of the very run
that made the figures: the same seed, data, model and schedule. Any change to the code behind the numbers (a
task generator, the model, the update rule, the training loop) changes those first losses. Each experiment
therefore stores such a prefix in its results file (``slice``), and :func:`check` recomputes it.

    niah, babilong   the first 5 steps of the first model, and its answer loss on 8 test examples after them
    mqar             the same, for the first configuration of the sweep
    ablations        the same for the first ablation's passkey model, and its first 3 language-model steps
    depth            the first 3 language-model steps of the first memory depth
    stream           the state size of each model after 2,048 tokens, and that streamed logits equal one call
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from ..models.lm import build_model
from ..training.config import TrainConfig
from ..training.run_log import read_metrics
from ..training.trainer import train as train_lm
from .runner import Sweep, compute_slice
from .stream import stream_slice

LM_STEPS = 3


def language_slice(variant: str, model: dict, seed: int, steps: int) -> list[float]:
    """The training losses of the first ``LM_STEPS`` steps of ``titans_edu.train`` with the run's schedule
    (``steps`` total): the cosine depends on the whole length, so the prefix is computed with it."""
    with tempfile.TemporaryDirectory() as folder:
        cfg = TrainConfig(variant=variant, model=dict(model), seed=seed, max_steps=steps, out_dir=folder,
                          progress=False, sample_tokens=0, plot=False, log_every=1, eval_every=LM_STEPS,
                          eval_batches=1, ckpt_every=LM_STEPS)
        stop = _StopAfter(LM_STEPS)
        try:
            train_lm(cfg, build=stop.build)
        except _Stopped:
            pass
        return [r["loss"] for r in read_metrics(Path(folder) / "metrics.jsonl") if "loss" in r][:LM_STEPS]


class _Stopped(Exception):
    pass


class _StopAfter:
    """A ``build_model`` whose model stops the run at the first training call after ``steps`` steps."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def build(self, *args, **kwargs):
        model = build_model(*args, **kwargs)
        calls = [0]

        def hook(module, inputs):
            if module.training:
                calls[0] += 1
                if calls[0] > self.steps:
                    raise _Stopped

        model.register_forward_pre_hook(hook)
        return model


def compute(experiment: str, config: dict) -> dict:
    """The slice of a results file of ``experiment`` with this ``config``."""
    if experiment in ("niah", "babilong"):
        fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()}
        return compute_slice(Sweep(**fields))
    if experiment == "mqar":
        sweep = Sweep(task="mqar", task_options={"n_pairs": config["pairs"][0]}, variants=("lmm",),
                      seeds=(config["seeds"][0],), train_length=config["length"], steps=config["steps"],
                      preset=config["preset"],
                      model={"dim": config["dims"][0], "memory_depth": config["memory_depths"][0]})
        return compute_slice(sweep)
    if experiment == "ablations":
        name, overrides = next(iter(config["ablations"].items()))
        seed = config["seeds"][0]
        sweep = Sweep(task=config["task"], task_options=config["task_options"], variants=("lmm",), seeds=(seed,),
                      train_length=config["task_length"], steps=config["task_steps"], preset=config["preset"],
                      model=overrides)
        return {**compute_slice(sweep), "ablation": name,
                "lm_losses": language_slice("lmm", overrides, seed, config["lm_steps"])}
    if experiment == "depth":
        depth, seed = config["memory_depths"][0], config["seeds"][0]
        return {"memory_depth": depth, "seed": seed,
                "lm_losses": language_slice("lmm", {"memory_depth": depth}, seed, config["lm_steps"])}
    if experiment == "stream":
        return stream_slice(config["variants"])
    raise ValueError(f"no slice is defined for {experiment!r} results")


def check(data: dict, rel: float = 1e-3) -> list[str]:
    """Recompute the slice of a results file; returns the differences (empty when it reproduces)."""
    saved = data.get("slice")
    if saved is None:
        return ["the results file holds no slice"]
    now = compute(data["experiment"], data["config"])
    return _differences(saved, now, rel, "slice")


def _differences(saved, now, rel: float, where: str) -> list[str]:
    if isinstance(saved, dict):
        if not isinstance(now, dict) or set(saved) != set(now):
            return [f"{where}: keys {sorted(saved) if isinstance(saved, dict) else saved} != {now}"]
        return [d for k in saved for d in _differences(saved[k], now[k], rel, f"{where}.{k}")]
    if isinstance(saved, list):
        if not isinstance(now, list) or len(saved) != len(now):
            return [f"{where}: {saved} != {now}"]
        return [d for i, (a, b) in enumerate(zip(saved, now)) for d in _differences(a, b, rel, f"{where}[{i}]")]
    if isinstance(saved, float) and not isinstance(saved, bool):
        ok = math.isclose(saved, now, rel_tol=rel, abs_tol=1e-6)
        return [] if ok else [f"{where}: {saved} saved, {now} now"]
    return [] if saved == now else [f"{where}: {saved!r} saved, {now!r} now"]
