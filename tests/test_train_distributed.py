"""Two processes on CPU (gloo) under torchrun train exactly like one process on the same global batch.

One process accumulates 2 micro-batches of 4 windows; two processes take one micro-batch each. The windows
are the same (data.BatchSampler), so the loss, the gradient norm and the weights after each step must agree
up to float32 round-off: DDP averages the gradients, FSDP shards and gathers them.
"""

import os
import subprocess
import sys

import pytest
import torch

from titans_edu.training import checkpoint as ckpt
from titans_edu.models.lm import build_model
from titans_edu.training.run_log import read_metrics
from titans_edu.training.trainer import main

FLAGS = ["--model.dim=32", "--model.depth=2", "--model.segment=16", "--model.window=16", "--model.chunk_size=8",
         "--context=32", "--micro_batch=4", "--batch_tokens=256", "--threads=1", "--progress=false",
         "--sample_tokens=0", "--plot=false", "--log_every=1", "--warmup_steps=2", "--max_steps=2",
         "--eval_every=2", "--eval_batches=1"]


def torchrun(folder, *flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "titans_edu.train", f"--out_dir={folder}", *FLAGS, *flags]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "x2" in done.stdout + done.stderr  # both processes joined the group


def rows(folder):
    return [r for r in read_metrics(folder / "metrics.jsonl") if "loss" in r]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    assert main([f"--out_dir={folder}", *FLAGS]) == 0
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_gloo_processes_equal_one_process(tmp_path, single, mode):
    torchrun(tmp_path, f"--fsdp={'on' if mode == 'fsdp' else 'off'}")
    one, two = rows(single), rows(tmp_path)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)  # the averaged gradients agree
        assert b["tokens"] == a["tokens"] == 256 * b["step"]
    weights_one = ckpt.load_checkpoint(single / "ckpt")["model"]
    weights_two = ckpt.load_checkpoint(tmp_path / "ckpt")["model"]  # FSDP's shards are gathered into one file
    assert weights_one.keys() == weights_two.keys()
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], rtol=0, atol=1e-6, msg=name)
    torch.manual_seed(0)  # the trainer's initial weights: training moved them, in both runs alike
    start = build_model("mac", "tiny", vocab_size=256, dim=32, depth=2, segment=16, window=16, chunk_size=8)
    changed = [n for n, w in start.state_dict().items() if not torch.equal(w, weights_one[n])]
    assert len(changed) > 0.9 * len(weights_one)


FSDP_UNITS = """
import sys, torch, torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from titans_edu.models.lm import build_model
from titans_edu.training.parallel import Runtime, blocks_of, wrap_model
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
model = build_model("mal", "tiny", depth=3, dim=32)
wrapped = wrap_model(model, Runtime(torch.device("cpu"), world=2), fsdp=True)  # world=2: take the FSDP branch
units = [m for m in wrapped.modules() if isinstance(m, FSDPModule)]
print(len(units), all(isinstance(b, FSDPModule) for b in blocks_of(wrapped)))
logits, _ = wrapped(torch.randint(0, 256, (2, 24)))  # each block builds its state with its weights gathered
logits.sum().backward()
print(all(p.grad is not None for p in wrapped.parameters()))
dist.destroy_process_group()
"""


def test_fsdp_shards_each_block_as_its_own_unit(tmp_path):
    """One FSDP unit per block plus the root, so a block's full weights exist only while it runs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", FSDP_UNITS, str(tmp_path / "rendezvous")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["4", "True", "True"]  # 3 blocks + the root
