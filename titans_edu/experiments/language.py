"""Language modelling pieces the ablation and depth experiments share: train an LMM on the embedded corpus with
the package's trainer, and score held-out text with more and more context in front of it (notebook 13)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.lm import TitansLM, build_model
from ..training.checkpoint import load_checkpoint
from ..training.config import TrainConfig
from ..training.data import embedded_corpus
from ..training.run_log import read_metrics
from ..training.trainer import train

SPAN = 512


def train_language_model(folder: Path, variant: str, model: dict, seed: int, steps: int, device: str) -> dict:
    """``titans_edu.train`` on the embedded corpus (the tiny recipe, ``steps`` steps) into ``folder``; returns
    the held-out loss and the training time. A folder that already holds the finished run is read, not retrained."""
    started = (folder / "ckpt").is_dir() and any((folder / "ckpt").glob("step_*.pt"))
    if started and load_checkpoint(folder / "ckpt")["step"] == steps:
        val = [r["val_loss"] for r in read_metrics(folder / "metrics.jsonl") if "val_loss" in r]
        return {"val_loss": val[-1], "seconds": None, "reused": True}
    cfg = TrainConfig(variant=variant, model=dict(model), seed=seed, max_steps=steps, out_dir=str(folder),
                      device=device, progress=False, sample_tokens=0, plot=False, resume="latest" if started else "")
    start = time.perf_counter()
    summary = train(cfg)
    return {"val_loss": summary["val_loss"], "seconds": time.perf_counter() - start, "reused": False}


def load_trained(folder: Path, context: int | None = None, device: str = "cpu") -> TitansLM:
    state = load_checkpoint(folder / "ckpt")
    cfg = state["config"]
    overrides = dict(cfg.get("model", {}))
    if context is not None:
        overrides["context"] = context
    model = build_model(cfg["variant"], cfg["size"], **overrides)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def held_out_ends(contexts: list[int]) -> tuple[bytes, list[int]]:
    """The corpus as the trainer reads it, and three span ends in its held-out last 5% with room for the longest
    context in front."""
    data = embedded_corpus().encode("utf-8")
    held_out = len(data) // 20
    room = max(contexts) + SPAN
    ends = [len(data) - i * (held_out - room) // 2 for i in range(3)]
    if held_out < room:
        raise ValueError(f"the held-out text ({held_out} bytes) is shorter than the longest context plus a span "
                         f"({room})")
    return data, ends


@torch.no_grad()
def context_losses(model: TitansLM, contexts: list[int], call: int = 1024, device: str = "cpu") -> list[float]:
    """Loss (nats per byte) on the same held-out 512-byte spans with each amount of context in front, averaged
    over three spans; the text is read in calls of ``call`` bytes with the state carried."""
    data, ends = held_out_ends(contexts)
    out = []
    for ctx in contexts:
        losses = []
        for end in ends:
            seq = torch.tensor(list(data[end - ctx - SPAN : end]), dtype=torch.long, device=device)[None]
            state, logits = None, []
            for lo in range(0, seq.shape[1] - 1, call):
                piece, state = model(seq[:, lo : min(lo + call, seq.shape[1] - 1)], state)
                logits.append(piece)
            logits = torch.cat(logits, dim=1)
            losses.append(F.cross_entropy(logits[0, -SPAN:].float(), seq[0, -SPAN:]).item())
        out.append(statistics.fmean(losses))
    return out
