"""What the trainer and the Python API do with broken weights, damaged run folders and bad inputs.

Nothing already written is lost: a checkpoint is written only when its weights are sound, the newest sound one
is never deleted, and a run that stops names the checkpoint to continue from. Every bad input gets a message
that says what was expected, what was given and how to fix it.
"""

from __future__ import annotations

import json
import os
import random
import re

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from titans_edu.memory.layer import MemoryConfig, NeuralMemory
from titans_edu.models.config import VARIANTS, ModelConfig
from titans_edu.models.generate import generate, sample
from titans_edu.models.lm import build_model
from titans_edu.training import checkpoint as ckpt
from titans_edu.training.config import TrainConfig, config_from_args
from titans_edu.training.run_log import read_metrics
from titans_edu.training.trainer import main

# A MAC small enough for many short runs (as in test_train.py), and the evals and checkpoints of a short run.
SMALL = ["--model.dim=32", "--model.depth=1", "--model.segment=16", "--model.window=16", "--model.chunk_size=8",
         "--context=32", "--micro_batch=2", "--threads=1", "--progress=false", "--sample_tokens=0", "--plot=false",
         "--log_every=1", "--warmup_steps=0", "--eval_batches=1"]


def run(folder, *flags) -> int:
    return main([f"--out_dir={folder}", *SMALL, *flags])


def names(folder) -> list[str]:
    return [p.name for p in ckpt.list_checkpoints(folder / "ckpt")]


def largest_weight(path) -> float:
    state = ckpt.load_checkpoint(path)["model"]
    return max(float(v.abs().max()) for v in state.values() if v.is_floating_point())


class after_optimizer_step:
    """Change the weights right after optimizer step number ``step``, as a step that diverges would."""

    def __init__(self, step: int, change) -> None:
        self.step, self.change, self.count = step, change, 0

    def __enter__(self):
        def hook(optimizer, args, kwargs):
            self.count += 1
            if self.count == self.step:
                with torch.no_grad():
                    self.change(optimizer.param_groups[0]["params"][0])

        self.handle = register_optimizer_step_post_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# --- 1. a checkpoint is written only when its weights are sound ---


def test_weights_that_give_a_nan_loss_are_never_saved_as_good(tmp_path, capsys):
    # lr=1e6 makes the weights huge but finite after step 1; the next forward pass is nan
    assert run(tmp_path, "--max_steps=50", "--ckpt_every=1", "--eval_every=2", "--lr=1e6") == 1
    err = capsys.readouterr().err
    assert re.search(r"weights after step 1 give a loss of nan .*Stopped without saving.*nothing to resume", err)
    assert names(tmp_path) == []
    assert run(tmp_path, "--max_steps=50", "--ckpt_every=1", "--eval_every=2", "--lr=1e-3", "--resume") == 1
    assert "no checkpoint" in capsys.readouterr().err


def test_a_step_that_makes_the_weights_nan_keeps_the_last_good_checkpoint(tmp_path, capsys):
    with after_optimizer_step(3, lambda p: p.view(-1)[0].fill_(float("nan"))):
        assert run(tmp_path, "--max_steps=6", "--ckpt_every=1", "--eval_every=6", "--keep_last=1") == 1
    err = capsys.readouterr().err
    assert re.search(r"weights after step 3 are not sound: \S+ has 1 non-finite value.*last good checkpoint is "
                     r"\S*step_00000002.pt", err)
    assert names(tmp_path) == ["step_00000002.pt"]  # kept, although --keep_last=1
    assert largest_weight(tmp_path / "ckpt" / "step_00000002.pt") < 10
    assert run(tmp_path, "--max_steps=4", "--ckpt_every=1", "--eval_every=6", "--keep_last=1", "--resume") == 0
    assert names(tmp_path) == ["step_00000004.pt"]


def test_an_optional_norm_bound_refuses_weights_that_blew_up(tmp_path, capsys):
    with after_optimizer_step(2, lambda p: p.mul_(1e6)):
        assert run(tmp_path, "--max_steps=4", "--ckpt_every=1", "--eval_every=4", "--max_param_norm=1e3") == 1
    err = capsys.readouterr().err
    assert re.search(r"weights after step 2 are not sound: the parameters' global L2 norm is \S+, above "
                     r"--max_param_norm=1000.*last good checkpoint is \S*step_00000001.pt", err)
    assert names(tmp_path) == ["step_00000001.pt"]


def test_a_nan_step_right_after_a_checkpoint_names_the_one_before_it(tmp_path, capsys):
    def nan_at_step_4(*args, **kwargs):
        model = build_model(*args, **kwargs)
        calls = [0]

        def poison(module, inputs, output):
            calls[0] += module.training
            return (output[0] * float("nan"), output[1]) if calls[0] == 4 else output

        model.register_forward_hook(poison)
        return model

    flags = [f"--out_dir={tmp_path}", *SMALL, "--max_steps=6", "--ckpt_every=1", "--eval_every=6"]
    assert main(flags, build=nan_at_step_4) == 1
    err = capsys.readouterr().err
    # step_3 holds the weights step 4 started from: resuming from it replays the same batch on the same weights
    assert re.search(r"loss became nan .*at step 4\..*newest checkpoint, \S*step_00000003.pt, holds the weights "
                     r"step 4 started from.*last good checkpoint before it is \S*step_00000002.pt", err)


def test_resume_refuses_a_checkpoint_with_non_finite_weights(tmp_path, capsys):
    assert run(tmp_path, "--max_steps=2", "--eval_every=1") == 0
    path = tmp_path / "ckpt" / "step_00000002.pt"
    state = ckpt.load_checkpoint(path)
    next(iter(state["model"].values())).view(-1)[0] = float("inf")  # written by something else than the trainer
    torch.save(state, path)
    assert run(tmp_path, "--max_steps=3", "--eval_every=1", "--resume") == 1
    err = capsys.readouterr().err
    assert re.search(r"step_00000002.pt' holds weights that are not sound \(\S+ has 1 non-finite value.*Resume from "
                     r"an older one: --resume=\S*step_00000001.pt", err)


# --- 2. --resume without --out_dir continues the newest run ---


def test_resume_without_out_dir_continues_the_run_with_the_newest_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # runs/mac-tiny, then runs/mac-tiny-2
        assert main([*SMALL, "--max_steps=2", "--eval_every=2"]) == 0
    first, second = (tmp_path / "runs" / name / "ckpt" / "step_00000002.pt" for name in ("mac-tiny", "mac-tiny-2"))
    os.utime(first, (1e9, 1e9))  # the first run's checkpoint is the older one...
    capsys.readouterr()
    assert main([*SMALL, "--max_steps=3", "--eval_every=3", "--resume"]) == 0
    assert names(tmp_path / "runs" / "mac-tiny-2") == ["step_00000002.pt", "step_00000003.pt"]
    assert re.search(r"--resume: continuing runs/mac-tiny-2, the newest run", capsys.readouterr().out)
    os.utime(second, (1e9, 1e9))  # ...and by the time, not the name: now the first run is the newest
    os.utime(tmp_path / "runs" / "mac-tiny-2" / "ckpt" / "step_00000003.pt", (1e9, 1e9))
    assert main([*SMALL, "--max_steps=3", "--eval_every=3", "--resume"]) == 0
    assert names(tmp_path / "runs" / "mac-tiny") == ["step_00000002.pt", "step_00000003.pt"]
    assert "continuing runs/mac-tiny," in capsys.readouterr().out


def test_resume_of_a_named_file_or_run_folder_continues_that_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("elsewhere", "--max_steps=2", "--eval_every=2") == 0
    flags = [*SMALL, "--max_steps=3", "--eval_every=3"]
    assert main([*flags, "--resume=elsewhere/ckpt/step_00000002.pt"]) == 0  # no --out_dir: the file's own run
    assert names(tmp_path / "elsewhere") == ["step_00000002.pt", "step_00000003.pt"]
    assert not (tmp_path / "runs").exists()
    assert main([*flags[:-2], "--max_steps=4", "--eval_every=4", "--resume=elsewhere"]) == 0  # a run folder
    assert names(tmp_path / "elsewhere")[-1] == "step_00000004.pt"
    (tmp_path / "loose.pt").write_bytes((tmp_path / "elsewhere" / "ckpt" / "step_00000004.pt").read_bytes())
    (tmp_path / "runs" / "mac-tiny").mkdir(parents=True)
    (tmp_path / "runs" / "mac-tiny" / "keep.txt").write_text("another run")
    assert main([*flags[:-2], "--max_steps=5", "--eval_every=5", "--resume=loose.pt"]) == 0  # from outside any run
    assert names(tmp_path / "runs" / "mac-tiny-2") == ["step_00000005.pt"]  # the next free run folder
    assert sorted(p.name for p in (tmp_path / "runs" / "mac-tiny").iterdir()) == ["keep.txt"]


# --- 3. every option is read as its declared type ---


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--model.dim=abc", r"--model.dim: expected an integer, got 'abc'; e.g. --model.dim=64"),
        ("--model.norm_eps=nan", r"--model.norm_eps: expected a finite number, got 'nan'"),
        ("--model.heads=2.5", r"--model.heads: expected an integer, got '2.5'; e.g. --model.heads=2"),
        ("--model.momentum=abc", r"--model.momentum: expected true or false \(also 1/0, yes/no\), got 'abc'"),
        ("--model.colour=blue", r"unknown config field 'colour'"),
        ("--max_step=3", r"unknown option '--max_step=3'. Did you mean --max_steps\?"),
        ("--out=X", r"unknown option '--out=X'. Did you mean --out_dir\?"),
        ("--seed=-1", r"seed must be an integer in \[0, 2\*\*63\).*got -1"),
        ("--seed=1.5", r"--seed: expected an integer, got '1.5'"),
        ("--device=tpu", r"unknown device 'tpu': expected auto, cpu, cuda, cuda:N"),
        ("--device=cuda:abc", r"unknown device 'cuda:abc'"),
        ("--seed=99999999999999999999", r"seed must be an integer in \[0, 2\*\*63\)"),
        ("--model.max_lr=inf", r"--model.max_lr: expected a finite number or none, got 'inf'"),
        ("--plot=maybe", r"--plot: expected true or false \(also 1/0, yes/no\), got 'maybe'"),
        ("--lr=fast", r"--lr: expected a finite number or none, got 'fast'; e.g. --lr=0.002"),
        ("--lr=inf", r"--lr: expected a finite number or none, got 'inf'"),
        ("--max_steps=1e3x", r"--max_steps: expected an integer or none, got '1e3x'"),
    ],
)
def test_options_are_checked_against_their_declared_types(flag, message):
    with pytest.raises(ValueError, match=message):
        config_from_args([flag])


def test_options_are_coerced_to_their_declared_types():
    cfg = config_from_args(["--model.heads=2.0", "--model.momentum=no", "--model.norm_eps=1", "--plot=0",
                            "--compile=yes", "--progress=False", "--batch_tokens=5e5", "--model.max_lr=none"])
    assert cfg.model == {"heads": 2, "momentum": False, "norm_eps": 1.0, "max_lr": None}
    assert type(cfg.model["heads"]) is int and type(cfg.model["norm_eps"]) is float
    assert (cfg.plot, cfg.compile, cfg.progress, cfg.batch_tokens) == (False, True, False, 500_000)


def test_a_config_file_is_checked_like_the_command_line(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"max_steps": "many"}))
    with pytest.raises(ValueError, match=r"'max_steps' in '.*run.json': expected an integer or none, got 'many'"):
        config_from_args([f"--config={path}"])
    path.write_text(json.dumps({"model": {"heads": 2.5}}))
    with pytest.raises(ValueError, match=r"model.heads in '.*run.json': expected an integer, got 2.5"):
        config_from_args([f"--config={path}"])
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"config file '.*run.json' is not valid JSON"):
        config_from_args([f"--config={path}"])
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config file '.*run.json' must hold a table of keys, got a list"):
        config_from_args([f"--config={path}"])


def test_train_config_from_python_checks_types():
    with pytest.raises(ValueError, match=r"lr must be a finite number or none, got 'fast'"):
        TrainConfig(lr="fast")
    with pytest.raises(ValueError, match=r"compile must be a bool"):
        TrainConfig(compile="yes")


# --- 4. damaged or foreign files in a run folder ---


def test_a_stray_file_in_ckpt_is_ignored_with_a_warning(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "step_final.pt").write_bytes(b"someone's own file")
    assert run(tmp_path, "--max_steps=2", "--eval_every=2") == 0  # a fresh run: the folder holds no checkpoint
    assert "warning: " in capsys.readouterr().err
    assert run(tmp_path, "--max_steps=3", "--eval_every=3", "--resume") == 0
    err = capsys.readouterr().err
    assert re.search(r"warning: .*step_final.pt' is not a checkpoint of this trainer.*ignored", err)
    with pytest.warns(ckpt.RunFolderWarning, match="step_final.pt"):
        assert names(tmp_path) == ["step_00000002.pt", "step_00000003.pt"]
    assert (tmp_path / "ckpt" / "step_final.pt").read_bytes() == b"someone's own file"  # never deleted


def test_a_partial_last_metrics_line_is_cut_off_with_a_warning(tmp_path, capsys):
    assert run(tmp_path, "--max_steps=2", "--eval_every=2") == 0
    metrics = tmp_path / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 3, "lo')  # killed while writing the row of step 3
    assert run(tmp_path, "--max_steps=4", "--eval_every=2", "--resume") == 0
    assert re.search(r"warning: .*metrics.jsonl' ended in a partial line.*\{\"step\": 3, \"lo", capsys.readouterr().err)
    rows = read_metrics(metrics)  # every line reads again
    assert [int(r["step"]) for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert all(json.loads(line) for line in metrics.read_text().splitlines())


def test_a_partial_last_csv_row_is_cut_off_too(tmp_path, capsys):
    assert run(tmp_path, "--max_steps=2", "--eval_every=2", "--metrics=csv") == 0
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("3,5.1")
    assert run(tmp_path, "--max_steps=3", "--eval_every=3", "--metrics=csv", "--resume") == 0
    assert "ended in a partial line" in capsys.readouterr().err
    assert [int(r["step"]) for r in read_metrics(tmp_path / "metrics.csv") if "loss" in r] == [1, 2, 3]
    assert all(r.get("grad_norm") for r in read_metrics(tmp_path / "metrics.csv") if "loss" in r)


def test_read_metrics_names_the_file_and_line_of_a_broken_row(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "lo\n{"step": 3, "loss": 4.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl' line 2 is not a metrics row"):
        read_metrics(path)
    path.write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "lo')
    with pytest.warns(ckpt.RunFolderWarning, match="partial last line"):
        assert read_metrics(path) == [{"step": 1, "loss": 5.0}]


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda: {"model": {}, "optimizer": {}, "step": 1}, r"has no scheduler, rng, config"),
        (lambda: {"model": {}, "config": {}}, r"has no optimizer, scheduler, step, rng \(it holds model, config\)"),
        (lambda: torch.zeros(3), r"holds a Tensor, not the dict"),
        (lambda: {**dict.fromkeys(ckpt.TRAINING_KEYS, {}), "step": "one"}, r"step must be a count of steps"),
    ],
)
def test_a_foreign_torch_file_raises_a_checkpoint_error_that_names_it(tmp_path, capsys, content, message):
    (tmp_path / "ckpt").mkdir()
    path = tmp_path / "ckpt" / "step_00000001.pt"
    torch.save(content(), path)
    with pytest.raises(ckpt.CheckpointError, match=message):
        ckpt.load_checkpoint(path, require=ckpt.TRAINING_KEYS)
    assert run(tmp_path, "--max_steps=2", "--resume") == 1
    err = capsys.readouterr().err
    assert re.search(r"error: checkpoint '\S*step_00000001.pt':? " + message, err)


def test_weights_of_the_wrong_shape_raise_a_checkpoint_error_that_names_them(tmp_path, capsys):
    assert run(tmp_path, "--max_steps=1", "--eval_every=1") == 0
    path = tmp_path / "ckpt" / "step_00000001.pt"
    state = ckpt.load_checkpoint(path)
    state["model"]["embed.weight"] = torch.zeros(256, 8)
    del state["model"]["norm.weight"]
    torch.save(state, path)
    assert run(tmp_path, "--max_steps=2", "--resume") == 1
    err = capsys.readouterr().err
    assert re.search(r"error: \S*step_00000001.pt does not fit this model: missing norm.weight; embed.weight is "
                     r"\(256, 8\) in the file, \(256, 32\) in the model", err)


def test_an_out_dir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert run(tmp_path / "notes.txt", "--max_steps=1") == 1
    assert "--out_dir" in (err := capsys.readouterr().err) and "is a file, not a folder" in err
    assert run(tmp_path / "notes.txt" / "run", "--max_steps=1") == 1  # a folder below a file cannot be made
    assert "cannot create the run folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_file_where_the_ckpt_folder_goes_is_refused(tmp_path, capsys):
    (tmp_path / "ckpt").write_text("mine")
    assert run(tmp_path, "--max_steps=1") == 1
    assert re.search(r"ckpt is a file, where the run keeps its folder of checkpoints", capsys.readouterr().err)
    assert (tmp_path / "ckpt").read_text() == "mine"


def test_a_folder_with_metrics_but_no_checkpoint_is_not_appended_to(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')  # a run that died before its checkpoint
    assert run(tmp_path, "--max_steps=1") == 1
    assert re.search(r"already holds a run's metrics.jsonl, but no checkpoint.*another --out_dir",
                     capsys.readouterr().err)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 5.0}\n'


# --- 5. the Python API's own errors ---


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("bad", [32, -1])
def test_token_ids_out_of_range_name_the_range_and_the_id(variant, bad, small_config):
    model = build_model(variant, "tiny", **{**small_config, "depth": 1,
                                            **({"persistent": 0} if variant in ("transformer", "swa") else {})})
    tokens = torch.tensor([[1, 2, bad, 3]])
    with pytest.raises(ValueError, match=rf"token id {bad} is out of range: .* ids 0 to 31 \(vocab_size=32\)"):
        model(tokens)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_neural_memory_says_which_dtype_it_expects(dtype):
    layer = NeuralMemory(MemoryConfig(dim=16, heads=2, chunk_size=4))
    with pytest.raises(ValueError, match=rf"x has dtype {dtype}, but the layer's parameters are torch.float32"):
        layer(torch.randn(1, 8, 16, dtype=dtype))


def test_neural_memory_takes_bfloat16_input_under_autocast():
    layer = NeuralMemory(MemoryConfig(dim=16, heads=2, chunk_size=4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = layer(torch.randn(1, 8, 16, dtype=torch.bfloat16))
    assert torch.isfinite(y).all() and all(w.dtype == torch.float32 for w in state.weights)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: MemoryConfig(dim=16, max_lr=float("inf")), r"max_lr must be a finite number > 0 .*got inf"),
        (lambda: MemoryConfig(dim=16, max_lr=float("nan")), r"max_lr must be a finite number > 0"),
        (lambda: MemoryConfig(dim=16, heads=2.0), r"MemoryConfig: heads must be an integer, got 2.0 \(float\)"),
        (lambda: MemoryConfig(dim=16, chunk_size=True), r"chunk_size must be an integer, got True \(bool\)"),
        (lambda: ModelConfig(norm_eps=float("nan")), r"ModelConfig: norm_eps must be a finite number, got nan"),
        (lambda: ModelConfig(heads=2.0), r"ModelConfig: heads must be an integer, got 2.0 \(float\); write heads=2"),
        (lambda: ModelConfig(chunk_size=2.5), r"ModelConfig: chunk_size must be an integer, got 2.5"),
        (lambda: ModelConfig(momentum="abc"), r"ModelConfig: momentum must be a bool"),
        (lambda: build_model("mac", dim="64"), r"ModelConfig: dim must be an integer, got '64' \(str\)"),
    ],
)
def test_configs_refuse_values_of_the_wrong_type_or_not_finite(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_generate_checks_its_arguments(small_config):
    model = build_model("lmm", "tiny", **{**small_config, "depth": 1})
    prompt = torch.tensor([[1, 2, 3]])
    for kwargs, message in [({"max_new_tokens": 2.5}, r"max_new_tokens must be an integer >= 0.*got 2.5"),
                            ({"max_new_tokens": 2, "top_k": 2.5}, r"top_k must be an integer >= 1 or None"),
                            ({"max_new_tokens": 2, "temperature": float("nan")}, r"temperature must be a finite")]:
        with pytest.raises(ValueError, match=message):
            generate(model, prompt, **kwargs)
    with pytest.raises(ValueError, match="prompt must be a tensor of token ids"):
        generate(model, [[1, 2, 3]], 2)
    with pytest.raises(ValueError, match="top_k must be an integer"):
        sample(torch.zeros(1, 32), top_k=0)


# --- 6. smaller ---


def test_two_identical_runs_save_the_same_random_states(tmp_path):
    states = []
    for name, noise in (("a", 1), ("b", 2)):  # whatever the caller did with the global generators before
        random.seed(noise)
        np.random.seed(noise)
        assert run(tmp_path / name, "--max_steps=1", "--eval_every=1") == 0
        states.append(ckpt.load_checkpoint(tmp_path / name / "ckpt")["rng"])
    a, b = states
    assert a["python"] == b["python"]
    assert all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a["numpy"], b["numpy"]))
    assert torch.equal(a["torch"], b["torch"])


def test_the_closing_line_names_only_what_was_written_and_which_steps_it_covers(tmp_path, capsys):
    assert run(tmp_path, "--max_steps=2", "--eval_every=2") == 0
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done:")][0]
    assert "loss.png" not in done and "checkpoints and metrics in" in done
    assert re.search(r"train loss \S+ at step 1 -> \S+ at step 2;", done)
    assert run(tmp_path, "--max_steps=4", "--eval_every=2", "--resume", "--plot") == 0
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done:")][0]
    assert re.search(r"train loss \S+ at step 3 -> \S+ at step 4 \(this session only: it resumed from step 2\)", done)
    assert "loss.png" in done and (tmp_path / "loss.png").exists()


# --- beyond the list ---


def test_resume_past_max_steps_says_there_is_nothing_left(tmp_path, capsys):
    assert run(tmp_path, "--max_steps=2", "--eval_every=2") == 0
    assert run(tmp_path, "--max_steps=1", "--eval_every=1", "--resume") == 0
    assert "nothing is left to train. Raise --max_steps" in capsys.readouterr().out
    assert names(tmp_path) == ["step_00000002.pt"]


def test_a_gpu_index_that_does_not_exist_or_a_missing_mps_is_named(monkeypatch):
    from titans_edu.training.parallel import init_runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device='cuda:3', but PyTorch sees 1 CUDA GPU\(s\), with indices 0 to 0"):
        init_runtime("cuda:3")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='mps' but PyTorch sees no Apple GPU"):
        init_runtime("mps")
