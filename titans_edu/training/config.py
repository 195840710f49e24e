"""Training configuration: the paper's recipe as defaults, overridden from a config file or the command line.

The recipe of the paper (§5) is AdamW with lr 4e-4, weight decay 0.1, cosine decay and batches of
0.5M tokens at context 4K. The full-size presets use exactly that. Where the paper is silent, the values
below are our choices (CHOICE) and are options:

    warmup          linear over the first ``warmup_steps`` (CHOICE: 1,000 steps at full size)
    cosine floor    the cosine decays to ``min_lr_ratio * lr`` (CHOICE: 0.1)
    betas           AdamW (0.9, 0.95) (CHOICE: common for language models of this size)
    clipping        global gradient norm clipped at 1.0 (CHOICE)
    steps           tokens / batch: 15B tokens for 170M-400M and 30B for 760M (§5), i.e. 28,610 and 57,220
                    steps of 2^19 tokens

At full size the recipe recomputes each block's activations in the backward pass (CHOICE: on; notebook 11
counts the memory: without it, one 4K-token sequence of the 760M MAC keeps about 70 GiB of activations in
float32), and uses micro-batches that accumulate to 2^19 tokens on 1 to 8 GPUs.

The ``tiny`` preset is the CPU demo: the same recipe at a size that trains in minutes on two cores, with a
larger learning rate (CHOICE: 2e-3; small models tolerate it and learn visibly in 300 steps), streams of 10
consecutive windows with the model's state carried from one to the next (CHOICE, ``carry_state``: truncated
backprop through time, so that the memory is trained on states that have read ten times the context, and keeps
its skill when it reads past the training length; a stream also ends at every checkpoint, so a resumed run is
still exact; at full size the context is 4K and every window starts fresh)
and one CPU thread (CHOICE: its matrices are so small that a second thread gains little, and where the cores are shared
with other programs, threads that wait on each other can make a step many times slower).

Any field is set on the command line as ``--field=value``; model options as ``--model.key=value`` (passed
to ``build_model``); a JSON or TOML file with ``--config=path`` gives the same keys (``model`` as a table).
Every value is read as the type its field declares (an integer, a finite number, a bool written true/false,
1/0 or yes/no, or ``none`` where the field may be None), and an option must be written in full: a value or a
name that does not fit raises a ``ValueError`` that names the option, the value and what was expected.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from ..models.config import SIZES, VARIANTS, ModelConfig, check_types, describe_kind, field_kind
PAPER_BATCH_TOKENS = 2**19  # "0.5M tokens" (§5)

# Defaults that depend on the size: everything the recipe leaves as None is filled from here.
RECIPES: dict[str, dict[str, Any]] = {
    "tiny": dict(lr=2e-3, max_steps=300, warmup_steps=30, micro_batch=8, batch_tokens=None, eval_every=50,
                 eval_batches=4, threads=1, activation_checkpointing=False, carry_state=10),
    "170m": dict(lr=4e-4, max_steps=28_610, warmup_steps=1_000, carry_state=1, micro_batch=16, batch_tokens=PAPER_BATCH_TOKENS,
                 eval_every=500, eval_batches=4, activation_checkpointing=True),
    "340m": dict(lr=4e-4, max_steps=28_610, warmup_steps=1_000, carry_state=1, micro_batch=8, batch_tokens=PAPER_BATCH_TOKENS,
                 eval_every=500, eval_batches=4, activation_checkpointing=True),
    "400m": dict(lr=4e-4, max_steps=28_610, warmup_steps=1_000, carry_state=1, micro_batch=8, batch_tokens=PAPER_BATCH_TOKENS,
                 eval_every=500, eval_batches=4, activation_checkpointing=True),
    "760m": dict(lr=4e-4, max_steps=57_220, warmup_steps=1_000, carry_state=1, micro_batch=4, batch_tokens=PAPER_BATCH_TOKENS,
                 eval_every=500, eval_batches=4, activation_checkpointing=True),
}
FSDP_SIZES = ("400m", "760m")  # fsdp="auto" shards these when there is more than one process (CHOICE)


@dataclass
class TrainConfig:
    """One training run. ``None`` means "the preset's default" (see :data:`RECIPES` and the model's config)."""

    # what to train
    variant: str = "mac"
    size: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # overrides for build_model, e.g. {"dim": 64}
    # data
    data: str = "embedded"  # "embedded", a text file or folder, or a token folder from titans_edu.prepare
    tokenizer: str | None = None  # "bytes" or a tokenizer.json; None: what a token folder names, else bytes
    val_fraction: float = 0.05  # share of a text source held out for evaluation
    # recipe (paper §5)
    lr: float | None = None
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 turns clipping off
    warmup_steps: int | None = None
    max_steps: int | None = None
    context: int | None = None  # tokens per training window; None: the model's context
    carry_state: int | None = None  # windows each row reads in a row, its state carried between them; 1: none
    micro_batch: int | None = None  # sequences per forward pass and process
    batch_tokens: int | None = None  # tokens per optimizer step; reached by gradient accumulation
    # hardware
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    dtype: str = "auto"  # "auto" (bfloat16 autocast on cuda, float32 on cpu), "float32", "bfloat16"
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool | None = None  # recompute each block in the backward pass to save memory
    fsdp: str = "auto"  # "auto" (shard the larger presets across processes), "on", "off"
    threads: int | None = None  # torch CPU threads; fixed so that a resumed run is bitwise identical
    seed: int = 0
    # run, logging, checkpoints
    out_dir: str | None = None  # None: runs/<variant>-<size> (or -2, -3, ... if that already holds a run)
    resume: str = ""  # "latest" (the newest checkpoint in out_dir) or a checkpoint file; "" starts fresh
    keep_last: int = 3
    ckpt_every: int | None = None  # None: at every eval
    max_param_norm: float | None = None  # stop, without saving, when the weights' global L2 norm exceeds this
    eval_every: int | None = None
    eval_batches: int | None = None
    log_every: int = 10
    sample_tokens: int = 200  # tokens generated at each eval and at the end (0: none)
    sample_prompt: str = "The "
    temperature: float = 0.8
    metrics: str = "jsonl"  # "jsonl" or "csv"
    tensorboard: bool = False  # also log to TensorBoard, if it is installed
    progress: bool = True  # the tqdm progress bar
    plot: bool = True  # write loss.png at each eval and at the end

    def __post_init__(self) -> None:
        check_types(self)
        _choose("variant", self.variant, VARIANTS)
        _choose("size", self.size, SIZES)
        _choose("dtype", self.dtype, ("auto", "float32", "bfloat16"))
        _choose("fsdp", self.fsdp, ("auto", "on", "off"))
        _choose("metrics", self.metrics, ("jsonl", "csv"))
        if not isinstance(self.model, dict):
            raise ValueError(f"model must be a dict of build_model overrides, got {type(self.model).__name__}")
        if not DEVICE.fullmatch(self.device):
            raise ValueError(f"unknown device {self.device!r}: expected auto, cpu, cuda, cuda:N (the GPU with index "
                             f"N) or mps")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63) (NumPy's generators take no negative seeds), "
                             f"got {self.seed}; e.g. --seed=1")
        for name in ("lr", "max_steps", "context", "carry_state", "micro_batch", "batch_tokens", "keep_last",
                     "ckpt_every", "eval_every", "eval_batches", "log_every", "threads", "max_param_norm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name in ("weight_decay", "grad_clip", "sample_tokens", "warmup_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        for name in ("min_lr_ratio", "beta1", "beta2"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def with_recipe(self) -> "TrainConfig":
        """A copy with every ``None`` recipe field filled from the size's row of :data:`RECIPES`."""
        filled = {k: v for k, v in RECIPES[self.size].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **filled)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")  # the values of --device


def _choose(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        near = difflib.get_close_matches(str(value).lower(), allowed, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown {name} {value!r}: expected one of {', '.join(allowed)}.{hint}")


def plan_accumulation(batch_tokens: int | None, micro_batch: int, context: int, world: int) -> int:
    """Micro-batches each process accumulates per optimizer step so that a step sees ``batch_tokens`` tokens.

    ``batch_tokens = micro_batch * context * world * accum``; ``None`` means one micro-batch per process.
    """
    if batch_tokens is None:
        return 1
    per_pass = micro_batch * context * world
    if batch_tokens % per_pass:
        raise ValueError(
            f"batch_tokens={batch_tokens} is not a multiple of micro_batch * context * processes = "
            f"{micro_batch} * {context} * {world} = {per_pass}. Choose micro_batch or batch_tokens so that it "
            f"divides (e.g. --batch_tokens={max(1, round(batch_tokens / per_pass)) * per_pass})."
        )
    return batch_tokens // per_pass


# --- reading a config from a file and the command line ---


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The keys of a ``.json`` or ``.toml`` config file (a ``ValueError`` names the file if it cannot be read)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    if path.suffix not in (".json", ".toml"):
        raise ValueError(f"config file {str(path)!r} must end in .json or .toml")
    try:
        if path.suffix == ".json":
            values = json.loads(path.read_text())
        else:
            import tomllib  # Python 3.11+

            values = tomllib.loads(path.read_text())
    except ValueError as err:  # the JSON and TOML decode errors, and text that is not UTF-8, are ValueErrors
        raise ValueError(f"config file {str(path)!r} is not valid {path.suffix[1:].upper()}: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"config file {str(path)!r} must hold a table of keys, got a {type(values).__name__}")
    return values


TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")  # how a bool is written on the command line


def _field_type(name: str) -> tuple[type, bool]:
    """``(type, may be None)`` of a :class:`TrainConfig` field, e.g. ``max_steps -> (int, True)``."""
    return field_kind(get_type_hints(TrainConfig)[name])


def coerce_option(option: str, value: Any, kind: type | None, optional: bool = False, example: Any = None) -> Any:
    """``value`` (text from the command line, or a value from a config file) as a value of ``kind``.

    Text is read as the type asks: an integer (``"5e5"`` too, as it is whole), a finite number, a bool written
    true/false, 1/0 or yes/no, or ``none`` where the field may be None. An int stands for a float, a whole float
    for an int. Anything else raises a ``ValueError`` that names ``option``, the value and the type expected.
    """
    if kind is None:
        return value
    given = value
    if isinstance(value, str) and kind is not str:
        value = _read_text_as(value, kind, optional)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif kind is int and isinstance(value, float) and value.is_integer():  # --batch_tokens=5e5
        value = int(value)
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if ok and (kind is not float or math.isfinite(value)):
        return value
    if kind is bool:
        expected, fix = "true or false (also 1/0, yes/no)", f"{option}=true or {option}=false"
    else:
        expected, fix = describe_kind(kind, optional), None if example is None else f"{option}={example}"
    raise ValueError(f"{option}: expected {expected}, got {_shown(given)}" + (f"; e.g. {fix}" if fix else ""))


def _read_text_as(text: str, kind: type, optional: bool) -> Any:
    """Text as ``kind`` if it reads as one; otherwise the text itself (the caller then says what was expected)."""
    lowered = text.strip().lower()
    if optional and lowered in ("none", "null"):
        return None
    if kind is bool:
        return True if lowered in TRUE else False if lowered in FALSE else text
    try:
        number = float(lowered.replace("_", ""))
    except ValueError:
        return text
    if kind is int:
        try:
            return int(lowered.replace("_", ""))  # exact for any size, where a float would round
        except ValueError:
            return int(number) if number.is_integer() else number
    return number


def _shown(value: Any) -> str:
    """A value as an error message shows it: text in quotes, other types with their type's name."""
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def _coerce(name: str, value: Any, where: str = "") -> Any:
    """A :class:`TrainConfig` field's value, from the command line (``where=""``) or a config file."""
    kind, optional = _field_type(name)
    option = f"--{name}" if not where else f"{name!r} in {where}"
    return coerce_option(option, value, kind, optional, _example(name))


def _example(name: str) -> Any:
    """A valid value of a field, for error messages: its default, else the tiny preset's."""
    value = getattr(TrainConfig(), name)
    return RECIPES["tiny"].get(name) if value is None else value


def model_overrides(values: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``--model.KEY=VALUE`` overrides (or a config file's ``model`` table), each coerced to the type of its
    :class:`~titans_edu.models.config.ModelConfig` field; an unknown key raises a ``ValueError``."""
    hints = get_type_hints(ModelConfig)
    valid = sorted(f.name for f in fields(ModelConfig) if f.name not in ("variant", "size"))
    defaults = ModelConfig()
    coerced = {}
    for key, value in values.items():
        option = f"--model.{key}" if not where else f"model.{key} in {where}"
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean --model.{near[0]}?" if near else ""
            extra = f" ({key} is its own option: --{key})" if key in ("variant", "size") else ""
            raise ValueError(f"unknown config field {key!r} in {option}{extra}; valid fields are {valid}.{hint}")
        kind, optional = field_kind(hints[key])
        coerced[key] = coerce_option(option, value, kind, optional, getattr(defaults, key))
    return coerced


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from ``--config=file`` and ``--field=value`` / ``--model.key=value`` flags."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    known = [f.name for f in fields(TrainConfig)]
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m titans_edu.train",
        allow_abbrev=False,  # --max_step=3 is an unknown option, not --max_steps
        description="Train a Titans variant (or a baseline). With no arguments: the tiny MAC on the embedded "
        "corpus, on the GPU if there is one.",
        epilog="Model options: --model.KEY=VALUE is passed to build_model (e.g. --model.dim=64).",
    )
    parser.add_argument("--config", help="a .json or .toml file of the same keys")
    for f in fields(TrainConfig):
        if f.name == "model":
            continue
        default = getattr(defaults, f.name)
        if f.name == "resume":
            parser.add_argument("--resume", nargs="?", const="latest", default=None,
                                help="continue from the newest checkpoint in out_dir, or from the given file")
        elif _field_type(f.name)[0] is bool:  # --compile, --compile=true, --compile=false
            parser.add_argument(f"--{f.name}", nargs="?", const="true", default=None, help=f"(default: {default})")
        else:
            parser.add_argument(f"--{f.name}", type=str, default=None, help=f"(default: {default})")

    model_args = [a for a in argv if a.startswith("--model.")]
    args, unknown = parser.parse_known_args([a for a in argv if not a.startswith("--model.")])
    if unknown:
        flag = unknown[0].split("=")[0].lstrip("-")
        near = difflib.get_close_matches(flag, known, n=1)
        hint = f" Did you mean --{near[0]}?" if near else " See --help for the options."
        raise ValueError(f"unknown option {unknown[0]!r}.{hint}")

    values: dict[str, Any] = {}
    if args.config:
        values = read_config_file(args.config)
        bad = [k for k in values if k not in known]
        if bad:
            raise ValueError(f"unknown keys {bad} in {args.config}; the keys are the options of --help")
    where = repr(str(args.config)) if args.config else ""
    model = values.pop("model", {})
    if not isinstance(model, dict):
        raise ValueError(f"'model' in {where} must be a table of ModelConfig fields, got {model!r}")
    model = model_overrides(model, where)
    values = {name: _coerce(name, value, where) for name, value in values.items()}
    for name in known:
        text = getattr(args, name, None)
        if text is not None:  # the command line wins over the file
            values[name] = _coerce(name, text)
    flags = {}
    for arg in model_args:
        key, eq, text = arg[len("--model."):].partition("=")
        if not eq or not key:
            raise ValueError(f"model options are written --model.KEY=VALUE, got {arg!r}")
        flags[key] = text
    model.update(model_overrides(flags))
    return TrainConfig(model=model, **values)

