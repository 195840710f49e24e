"""The experiment runner, its results files and the committed results (titans_edu.experiments).

Every committed ``results/*.json`` is checked twice: it holds what the notebooks read (a command, the config,
the commit and the versions, every cell), and its slice, the first steps of the very run that made it, still
comes out of today's code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from titans_edu import build_model, generate
from titans_edu.experiments import reproduce
from titans_edu.experiments.__main__ import build_parser, main
from titans_edu.experiments.evaluate import read_jsonl
from titans_edu.experiments.results import ResultsFile, load
from titans_edu.experiments.runner import (Sweep, examples_for, exact_match, make_model, predictions,
                                           reset_memory, run_sweep, train)
from titans_edu.experiments.tasks import get_task
from titans_edu.memory.state import MemoryState

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = sorted(p for p in (ROOT / "results").glob("*.json") if not p.name.startswith("eval-"))
TINY = dict(dim=32, depth=1, segment=16, window=16, chunk_size=8)


def small_sweep(**changes) -> Sweep:
    fields = dict(task="passkey_tokens", variants=("lmm", "swa"), train_length=32, multiples=(1, 2),
                  depths=(0.0, 1.0), seeds=(0,), steps=3, batch=4, warmup=1, eval_examples=4, model=TINY, call=16)
    return Sweep(**{**fields, **changes})


def test_exact_match_is_the_verdict_of_greedy_decoding():
    sweep = small_sweep(steps=20)
    task = get_task("passkey_tokens")
    model = make_model(sweep, "lmm", task, 0, "cpu")
    train(model, task, sweep, 0, "cpu")
    examples = examples_for(task, 32, 0.5, 8, seed=3)
    verdicts = [exact_match(model, [e], sweep.call, "cpu") for e in examples]
    for e, verdict in zip(examples, verdicts):
        prompt = e.tokens[: e.length][None]
        out, _ = generate(model, prompt, len(e.answer), temperature=0)
        assert verdict == float(torch.equal(out[0, e.length :], e.answer))
    assert exact_match(model, examples, sweep.call, "cpu") == pytest.approx(sum(verdicts) / len(verdicts))


def test_the_reset_control_scores_questions_that_start_at_different_positions():
    # qa1's question names a person, so where it starts moves with the name's length. Half of the examples get
    # as answer what the model says after a reset just before their own question, so exactly those must count
    # as right: a reset at any other position (or none) would change what the model says.
    task = get_task("qa1")
    examples = examples_for(task, task.min_length + 40, 0.5, 8, seed=0)
    assert len({e.question for e in examples}) > 1
    torch.manual_seed(0)
    model = build_model("lmm", "tiny", **TINY).eval()
    chosen = []
    for i, e in enumerate(examples):
        tokens = e.tokens.clone()
        if i % 2 == 0:
            for j in e.scored.nonzero().flatten().tolist():  # greedy decoding, one answer byte at a time
                tokens[j] = predictions(model, tokens[None], 16, reset_at=e.question)[0, j - 1]
        chosen.append(dataclasses.replace(e, tokens=tokens))
    kept = [predictions(model, e.tokens[None], 16) for e in chosen]
    assert any(not torch.equal(k[0], predictions(model, e.tokens[None], 16, reset_at=e.question)[0])
               for k, e in zip(kept, chosen))  # the reset changes what the model says
    assert exact_match(model, chosen, 16, "cpu", reset=True) == pytest.approx(0.5)


@pytest.mark.parametrize("variant", ["lmm", "mac", "transformer"])
def test_predictions_read_in_calls_equal_one_call(variant):
    torch.manual_seed(0)
    model = build_model(variant, "tiny", **TINY).eval()
    tokens = torch.randint(0, 256, (2, 70))
    with torch.no_grad():
        logits, _ = model(tokens[:, :-1])
    assert torch.equal(predictions(model, tokens, call=16), logits.argmax(-1))


@pytest.mark.parametrize("variant", ["lmm", "mac", "mag", "mal"])
def test_reset_memory_gives_m0_back_and_keeps_the_rest(variant):
    torch.manual_seed(0)
    model = build_model(variant, "tiny", **TINY).eval()
    with torch.no_grad():
        _, state = model(torch.randint(0, 256, (2, 40)))
    reset = reset_memory(model, state)
    fresh = model.init_state(2)
    for now, new, start in zip(state.layers, reset.layers, fresh.layers):
        memory_now, memory_new, memory_start = (s if isinstance(s, MemoryState) else s.memory
                                                for s in (now, new, start))
        assert all(torch.equal(a, b) for a, b in zip(memory_new.weights, memory_start.weights))
        assert not all(torch.equal(a, b) for a, b in zip(memory_now.weights, memory_start.weights))
        assert memory_new.seen == memory_now.seen
        if hasattr(now, "cache"):
            assert torch.equal(new.cache.keys, now.cache.keys)
    with pytest.raises(ValueError, match="no memory"):
        reset_memory(build_model("swa", "tiny", **TINY), build_model("swa", "tiny", **TINY).init_state(2))


def test_a_sweep_fills_its_file_resumes_and_refuses_another_config(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    sweep = small_sweep()
    results = run_sweep(sweep, ResultsFile(path, "niah", sweep.config(), "cmd", "cpu"), checkpoints=tmp_path / "c")
    data = load(path)
    assert len(data["cells"]) == 2 * 2 + 2 * 2 * 2  # swa: 4 cells; lmm: 4 and 4 with the memory reset
    assert set(data["models"]) == {"lmm/seed=0", "swa/seed=0"}
    assert all(0 <= c["exact_match"] <= 1 and c["n"] == 4 for c in data["cells"].values())
    for field in ("command", "config", "git_commit", "torch", "python", "device", "threads", "wall_s", "slice"):
        assert field in data
    # a second run with the same config trains nothing: every cell is there
    import titans_edu.experiments.runner as runner

    monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("retrained a finished model"))
    run_sweep(sweep, ResultsFile(path, "niah", sweep.config(), "cmd", "cpu"), checkpoints=tmp_path / "c")
    # a killed sweep continues from the saved model: drop one cell, nothing is retrained
    partial = json.loads(path.read_text())
    partial["cells"].pop(next(iter(partial["cells"])))
    path.write_text(json.dumps(partial))
    resumed = run_sweep(sweep, ResultsFile(path, "niah", sweep.config(), "cmd", "cpu"), checkpoints=tmp_path / "c")
    assert resumed.cells == results.cells
    with pytest.raises(ValueError, match="another config"):
        ResultsFile(path, "niah", small_sweep(steps=4).config(), "cmd", "cpu")


def test_the_slice_is_a_prefix_of_the_run_and_reproduces():
    sweep = small_sweep()
    task = get_task(sweep.task)
    model = make_model(sweep, "lmm", task, 0, "cpu")
    losses = train(model, task, sweep, 0, "cpu", steps=sweep.steps)
    data = {"experiment": "niah", "config": sweep.config(), "slice": reproduce.compute("niah", sweep.config())}
    assert data["slice"]["losses"][: sweep.steps] == losses[:5]
    assert reproduce.check(data) == []
    data["slice"]["losses"][0] += 0.01  # a stale figure is caught
    assert reproduce.check(data)


def test_every_command_has_help_and_bad_input_gets_a_clear_error(tmp_path, capsys):
    parser = build_parser()
    for name in ("niah", "babilong", "mqar", "ablations", "depth", "stream", "eval"):
        with pytest.raises(SystemExit) as done:
            parser.parse_args([name, "--help"])
        assert done.value.code == 0
        assert "--quick" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a"}\n')
    with pytest.raises(ValueError, match="line 1"):
        read_jsonl(bad)
    assert main(["eval", "--checkpoint", str(tmp_path / "none"), "--data", str(bad)]) == 2


def test_eval_scores_a_trained_checkpoint_on_jsonl(tmp_path, capsys):
    from titans_edu.training.trainer import main as train_main

    run = tmp_path / "run"
    assert train_main([f"--out_dir={run}", "--max_steps=2", "--eval_every=2", "--eval_batches=1", "--context=32",
                       "--micro_batch=2", "--sample_tokens=0", "--plot=false", "--progress=false",
                       *[f"--model.{k}={v}" for k, v in TINY.items()]]) == 0
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"input": "The pass key is 123. The pass key is", "target": " 123"}) + "\n"
                    + json.dumps({"input": "abc", "target": "d"}) + "\n")
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run), "--data", str(data), "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert len(saved["cells"]) == 2 and 0 <= saved["exact_match"] <= 1
    assert "exact match" in capsys.readouterr().out


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_a_committed_results_file_is_complete_and_its_slice_reproduces(path):
    data = load(path)
    assert data["command"].startswith("python -m titans_edu.experiments ")
    for field in ("config", "git_commit", "torch", "device", "threads", "wall_s"):
        assert field in data, field
    assert data["cells"] or data["models"]
    torch.set_num_threads(1)  # the runs that make these files use one thread
    assert reproduce.check(data) == []
