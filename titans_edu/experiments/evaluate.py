"""Exact match of any trained checkpoint on your own long-context test: a JSONL file of inputs and targets.

    python -m titans_edu.experiments eval --checkpoint runs/mac-tiny --data my_test.jsonl

Each line is ``{"input": "...", "target": "..."}``. The model reads the input and must continue it with the target,
token for token, under greedy decoding. That is scored as RULER and BABILong score: exact match. It is computed in
one pass per line: the answer is right exactly when every target token is the most likely one given the input and
the target tokens before it (if one is not, greedy decoding goes wrong there).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models.lm import TitansLM, build_model
from ..training.checkpoint import CheckpointError, load_checkpoint
from ..training.tokenizer import Tokenizer, load_tokenizer
from .runner import predictions


def read_jsonl(path: str | Path) -> list[dict[str, str]]:
    """The lines of ``path``, each checked to hold a string ``input`` and a non-empty string ``target``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data {path} does not exist; give a .jsonl file with one "
                                '{"input": "...", "target": "..."} object per line')
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {n}: not valid JSON ({err.msg})") from err
        if not (isinstance(row, dict) and isinstance(row.get("input"), str) and isinstance(row.get("target"), str)):
            raise ValueError(f'{path}, line {n}: expected {{"input": string, "target": string}}, got {line[:80]!r}')
        if not row["target"]:
            raise ValueError(f"{path}, line {n}: the target is empty, so there is nothing to score")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no lines to score")
    return rows


def load_model(checkpoint: str | Path, device: str) -> tuple[TitansLM, Tokenizer, dict]:
    """The model of a ``titans_edu.train`` run folder (its newest checkpoint) or checkpoint file, and its tokenizer."""
    path = Path(checkpoint)
    state = load_checkpoint(path / "ckpt" if (path / "ckpt").is_dir() else path)
    try:
        cfg = state["config"]
        model = build_model(cfg["variant"], cfg["size"], **cfg.get("model", {}))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{checkpoint} does not hold a model that titans_edu.train wrote ({err})") from err
    tokenizer = load_tokenizer(cfg.get("tokenizer"))
    return model.to(device).eval(), tokenizer, cfg


@torch.no_grad()
def score(model: TitansLM, tokenizer: Tokenizer, rows: list[dict[str, str]], device: str, call: int = 1024) -> list[bool]:
    verdicts = []
    for row in rows:
        prompt, target = tokenizer.encode(row["input"]), tokenizer.encode(row["target"])
        if not prompt:
            raise ValueError("an input is empty; the model needs at least one token to read")
        if max(prompt + target) >= model.config.vocab_size:
            raise ValueError(f"a token id is beyond the model's vocabulary of {model.config.vocab_size}")
        tokens = torch.tensor([prompt + target], device=device)
        pred = predictions(model, tokens, call)[0, len(prompt) - 1 :]
        verdicts.append(bool(torch.equal(pred, tokens[0, len(prompt) :])))
    return verdicts


def run(args, path: Path, command: str) -> int:
    from .results import ResultsFile

    rows = read_jsonl(args.data)[: args.limit]
    model, tokenizer, cfg = load_model(args.checkpoint, args.device)
    verdicts = score(model, tokenizer, rows, args.device)
    name = f"eval-{Path(args.data).stem}"
    out = Path(args.out) if args.out else path.with_name(f"{name}.json")
    config = {"checkpoint": str(args.checkpoint), "data": str(args.data), "lines": len(rows),
              "variant": cfg["variant"], "size": cfg["size"]}
    results = ResultsFile(out, "eval", config, command, args.device)
    for i, ok in enumerate(verdicts):
        results.cells[f"line={i + 1}"] = {"exact_match": float(ok)}
    accuracy = sum(verdicts) / len(verdicts)
    results.data["exact_match"] = accuracy
    results.save()
    print(f"{cfg['variant']} {cfg['size']} on {args.data}: exact match {accuracy:.3f} ({sum(verdicts)} of "
          f"{len(verdicts)})\nwritten to {out}")
    return 0
