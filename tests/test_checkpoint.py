"""Checkpoints are complete, atomic, pruned, and restore every random state (titans_edu.training.checkpoint)."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from titans_edu.training import checkpoint as ckpt


def _model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, optimizer


def _train_one_step(model, optimizer):
    model(torch.randn(3, 4)).pow(2).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_model_and_optimizer_state_round_trip(tmp_path):
    model, optimizer = _model_and_optimizer()
    _train_one_step(model, optimizer)
    model_state, optimizer_state = ckpt.model_and_optimizer_state(model, optimizer)
    ckpt.save_checkpoint(tmp_path, 1, {"model": model_state, "optimizer": optimizer_state})

    fresh, fresh_optimizer = _model_and_optimizer(seed=1)
    loaded = ckpt.load_checkpoint(tmp_path)
    ckpt.load_model_and_optimizer_state(fresh, fresh_optimizer, loaded["model"], loaded["optimizer"])
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    x = torch.randn(3, 4)
    for m, opt in ((model, optimizer), (fresh, fresh_optimizer)):  # one more step: the Adam moments matter
        m(x).pow(2).sum().backward()
        opt.step()
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    ckpt.save_checkpoint(tmp_path, 0, {"rng": ckpt.rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path)["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_keeps_the_newest_and_ignores_unfinished_writes(tmp_path):
    for step in (10, 20, 30, 40):
        ckpt.save_checkpoint(tmp_path, step, {"step": step}, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000030.pt", "step_00000040.pt"]
    (tmp_path / ".step_00000050.pt.tmp").write_bytes(b"half a file")  # a write that never finished
    assert ckpt.load_checkpoint(tmp_path)["step"] == 40
    with pytest.raises(ValueError, match="keep_last"):
        ckpt.save_checkpoint(tmp_path, 50, {}, keep_last=0)


def test_a_crash_in_the_middle_of_a_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 1, {"step": 1, "weights": torch.arange(5)}, keep_last=1)
    before = (tmp_path / "step_00000001.pt").read_bytes()

    real_save = torch.save

    def crash_half_way(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(100)  # the machine died with part of the file on disk
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 2, {"step": 2, "weights": torch.arange(5)}, keep_last=1)
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001.pt"]  # no partial file, nothing pruned
    assert (tmp_path / "step_00000001.pt").read_bytes() == before
    assert ckpt.load_checkpoint(tmp_path)["step"] == 1


def test_unreadable_and_missing_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "step_00000009.pt")
    ckpt.save_checkpoint(tmp_path, 1, {"step": 1})
    (tmp_path / "step_00000002.pt").write_bytes(b"garbage")  # damaged by something outside the trainer
    with pytest.raises(ckpt.CheckpointError, match="cannot be read.*step_00000001.pt"):
        ckpt.load_checkpoint(tmp_path)
