"""The trainer end to end on CPU: loss falls, resume is exact, failures stop cleanly (titans_edu.training.trainer)."""

import json
import math
import re

import pytest
import torch

from titans_edu.training import checkpoint as ckpt
from titans_edu.models.lm import build_model
from titans_edu.training.run_log import read_metrics
from titans_edu.training.trainer import TrainingError, learning_rate, main, train
from titans_edu.training.config import TrainConfig, config_from_args

# A MAC small enough for many short runs: 2 segments of 16 tokens per window, 2 memory chunks per segment.
SMALL = ["--model.dim=32", "--model.depth=1", "--model.segment=16", "--model.window=16", "--model.chunk_size=8",
         "--context=32", "--micro_batch=4", "--threads=1", "--progress=false", "--sample_tokens=0", "--plot=false",
         "--log_every=1", "--warmup_steps=2"]


def run(folder, *flags, build=build_model):
    return main([f"--out_dir={folder}", *SMALL, *flags], build=build)


def losses(folder):
    return {int(r["step"]): (r["loss"], r["grad_norm"]) for r in read_metrics(folder / "metrics.jsonl") if "loss" in r}


class Crash(RuntimeError):
    pass


def faulty(after: int, error: Exception):
    """A build_model whose model raises ``error`` on the training forward pass number ``after + 1``."""
    def build(*args, **kwargs):
        model = build_model(*args, **kwargs)
        calls = [0]

        def hook(module, inputs):
            if module.training:
                calls[0] += 1
                if calls[0] > after:
                    raise error

        model.register_forward_pre_hook(hook)
        return model

    return build


def test_a_few_steps_reduce_the_loss(tmp_path):
    assert run(tmp_path, "--max_steps=30", "--eval_every=30", "--lr=3e-3", "--sample_tokens=20", "--plot") == 0
    trajectory = [loss for loss, _ in losses(tmp_path).values()]
    assert len(trajectory) == 30 and trajectory[0] > math.log(256) - 0.3  # starts near uniform over bytes
    assert sum(trajectory[-5:]) / 5 < trajectory[0] - 1.0
    rows = read_metrics(tmp_path / "metrics.jsonl")
    val = [r for r in rows if "val_loss" in r][-1]
    assert val["val_loss"] < trajectory[0] - 1.0 and val["val_bpb"] == pytest.approx(val["val_loss"] / math.log(2))
    assert (tmp_path / "loss.png").stat().st_size > 5000
    assert "--- step 30 ---\nThe " in (tmp_path / "samples.txt").read_text()
    saved = ckpt.load_checkpoint(tmp_path / "ckpt")
    assert saved["step"] == 30 and saved["config"]["variant"] == "mac"


def test_resume_continues_bitwise_identically(tmp_path):
    flags = ["--max_steps=8", "--eval_every=4", "--eval_batches=1"]
    assert run(tmp_path / "whole", *flags) == 0
    with pytest.raises(Crash):  # the machine goes down during step 7, after the checkpoint of step 4
        run(tmp_path / "cut", *flags, build=faulty(after=6, error=Crash()))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "cut" / "ckpt")] == ["step_00000004.pt"]
    assert run(tmp_path / "cut", *flags, "--resume") == 0
    whole, cut = losses(tmp_path / "whole"), losses(tmp_path / "cut")
    assert list(whole) == list(cut) == list(range(1, 9))
    assert whole == cut  # every loss and gradient norm, exactly
    a, b = (ckpt.load_checkpoint(p / "ckpt")["model"] for p in (tmp_path / "whole", tmp_path / "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_carried_state_trains_on_streams_and_resumes_exactly(tmp_path):
    flags = ["--max_steps=12", "--eval_every=6", "--eval_batches=1", "--carry_state=3"]
    assert run(tmp_path / "fresh", *flags[:-1], "--carry_state=1") == 0
    assert run(tmp_path / "whole", *flags) == 0
    fresh, whole = losses(tmp_path / "fresh"), losses(tmp_path / "whole")
    assert fresh[1] != whole[1]  # other windows: rows of a stream read consecutive text
    with pytest.raises(Crash):  # down during step 10, after the checkpoint of step 6, inside a stream
        run(tmp_path / "cut", *flags, build=faulty(after=9, error=Crash()))
    assert run(tmp_path / "cut", *flags, "--resume") == 0
    assert losses(tmp_path / "cut") == whole  # every loss and gradient norm, exactly


def test_a_carried_state_reaches_the_next_window_without_its_history(tmp_path):
    seen = []

    def build(*args, **kwargs):
        model = build_model(*args, **kwargs)
        original = model.forward

        def forward(tokens, state=None):
            if model.training:
                seen.append(state)
            return original(tokens, state)

        model.forward = forward
        return model

    assert run(tmp_path, "--max_steps=4", "--eval_every=4", "--eval_batches=1", "--carry_state=2", build=build) == 0
    assert [s is None for s in seen] == [True, False, True, False]  # a stream of two windows, twice
    carried = seen[1].layers[0].memory.weights[0]
    assert not carried.requires_grad and carried.grad_fn is None  # detached: no backprop into the last window


def test_resume_refuses_a_different_run(tmp_path):
    assert run(tmp_path, "--max_steps=2", "--eval_every=2", "--eval_batches=1") == 0
    assert run(tmp_path, "--max_steps=4", "--eval_every=2", "--eval_batches=1", "--seed=5", "--resume") == 1


def test_an_existing_run_is_never_overwritten(tmp_path, capsys, monkeypatch):
    assert run(tmp_path, "--max_steps=1", "--eval_every=1", "--eval_batches=1") == 0
    before = (tmp_path / "ckpt" / "step_00000001.pt").read_bytes()
    assert run(tmp_path, "--max_steps=1", "--eval_every=1", "--eval_batches=1") == 1
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "ckpt" / "step_00000001.pt").read_bytes() == before
    # without --out_dir a new run goes next to the old one
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "mac-tiny").mkdir(parents=True)
    (tmp_path / "runs" / "mac-tiny" / "keep.txt").write_text("an earlier run")
    assert main([*SMALL, "--max_steps=1", "--eval_every=1", "--eval_batches=1"]) == 0
    assert (tmp_path / "runs" / "mac-tiny-2" / "ckpt" / "step_00000001.pt").exists()
    assert (tmp_path / "runs" / "mac-tiny" / "keep.txt").read_text() == "an earlier run"


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    def nan_after_three_steps(*args, **kwargs):
        model = build_model(*args, **kwargs)
        calls = [0]

        def poison(module, inputs, output):
            calls[0] += module.training
            return (output[0] * float("nan"), output[1]) if calls[0] > 3 else output

        model.register_forward_hook(poison)
        return model

    assert run(tmp_path, "--max_steps=6", "--eval_every=2", "--eval_batches=1", build=nan_after_three_steps) == 1
    err = capsys.readouterr().err
    assert re.search(r"loss became nan .*at step 4\..*step_00000002.pt", err)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "ckpt")] == ["step_00000002.pt"]
    assert ckpt.load_checkpoint(tmp_path / "ckpt")["step"] == 2


def test_out_of_memory_is_reported_with_what_to_change(tmp_path):
    build = faulty(after=1, error=torch.OutOfMemoryError("CUDA out of memory (simulated)"))
    with pytest.raises(TrainingError, match="out of memory at step 2.*--micro_batch.*activation_checkpointing"):
        train(config_from_args([f"--out_dir={tmp_path}", *SMALL, "--max_steps=3"]), build=build)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--size=34m"], "unknown size '34m'.*Did you mean '340m'"),
        (["--variant=titan"], "unknown variant"),
        (["--lr=-1"], "lr must be > 0"),
        (["--learning_rate=1e-3"], "unknown option.*--learning_rate"),
        (["--data=/no/such/corpus"], "does not exist"),
        (["--context=100000"], "needs context \\+ 1"),
        (["--batch_tokens=1000"], "not a multiple of micro_batch"),
        (["--model.colour=blue"], "unknown config field"),
        (["--resume"], "no checkpoint"),
    ],
)
def test_bad_settings_exit_with_a_clear_message(tmp_path, capsys, flags, message):
    assert run(tmp_path / "run", "--max_steps=1", *flags) == 1
    assert re.search(message, capsys.readouterr().err, re.S)


def test_config_file_and_csv_metrics(tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"variant": "lmm", "max_steps": 2, "eval_every": 2, "eval_batches": 1,
                                  "metrics": "csv", "model": {"dim": 32, "depth": 1, "chunk_size": 8}}))
    cfg = config_from_args([f"--config={config}", "--max_steps=3"])  # the command line wins over the file
    assert (cfg.variant, cfg.max_steps, cfg.model["dim"], cfg.metrics) == ("lmm", 3, 32, "csv")
    flags = [f for f in SMALL if not f.startswith("--model.")]
    assert main([f"--config={config}", f"--out_dir={tmp_path / 'run'}", *flags, "--tensorboard"]) == 0
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [int(r["step"]) for r in rows if "loss" in r] == [1, 2]
    assert [int(r["step"]) for r in rows if "val_loss" in r] == [2]
    try:
        import tensorboard  # noqa: F401
    except ImportError:  # optional: without it the run goes on and says why there is no TensorBoard log
        assert "pip install tensorboard" in capsys.readouterr().out
    else:
        assert list((tmp_path / "run" / "tb").iterdir())


def test_learning_rate_warms_up_then_follows_a_cosine_to_the_floor():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    lrs = [learning_rate(s, cfg) for s in range(111)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warmup
    assert lrs[60] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # halfway down the cosine
    assert lrs[110] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_activation_checkpointing_changes_memory_not_results(tmp_path):
    flags = ["--max_steps=2", "--eval_every=2", "--eval_batches=1"]
    assert run(tmp_path / "plain", *flags) == 0
    assert run(tmp_path / "ckpt", *flags, "--activation_checkpointing") == 0
    for (a, ga), (b, gb) in zip(losses(tmp_path / "plain").values(), losses(tmp_path / "ckpt").values()):
        assert a == pytest.approx(b, rel=1e-6) and ga == pytest.approx(gb, rel=1e-5)


@pytest.mark.parametrize("size", ["170m", "340m", "400m", "760m"])
def test_full_size_presets_follow_the_paper_recipe(size):
    from titans_edu.models.config import NOMINAL_PARAMS, ModelConfig
    from titans_edu.training.config import PAPER_BATCH_TOKENS, plan_accumulation

    cfg = TrainConfig(size=size).with_recipe()
    context = ModelConfig.preset("mac", size).context
    assert (cfg.lr, cfg.weight_decay, context, cfg.batch_tokens) == (4e-4, 0.1, 4096, 2**19)  # §5: 0.5M tokens
    budget = 30e9 if size == "760m" else 15e9  # §5: 15B tokens, 30B for the largest
    assert cfg.max_steps * PAPER_BATCH_TOKENS == pytest.approx(budget, rel=1e-3)
    for world in (1, 2, 4, 8):  # the global batch is kept on any usual number of GPUs
        accum = plan_accumulation(cfg.batch_tokens, cfg.micro_batch, context, world)
        assert accum * cfg.micro_batch * context * world == 2**19
    with torch.device("meta"):  # count the parameters without allocating them
        model = build_model("mac", size)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(NOMINAL_PARAMS[size], rel=0.1)


def test_a_run_is_float32_whatever_the_callers_default_dtype(tmp_path):
    flags = ["--max_steps=3", "--eval_every=3", "--eval_batches=1"]
    assert run(tmp_path / "f32", *flags) == 0
    torch.set_default_dtype(torch.float64)  # as the notebooks' setup() leaves it
    try:
        assert run(tmp_path / "f64", *flags) == 0
        assert torch.get_default_dtype() == torch.float64  # the caller's default is given back
    finally:
        torch.set_default_dtype(torch.float32)
    assert losses(tmp_path / "f32") == losses(tmp_path / "f64")
    weights = ckpt.load_checkpoint(tmp_path / "f64" / "ckpt")["model"]
    assert {w.dtype for w in weights.values() if w.is_floating_point()} == {torch.float32}
