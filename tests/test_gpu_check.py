"""bench/gpu_check.py in its CPU smoke mode: every section runs, checks what it should and records what it did."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check(tmp_path_factory):
    """The script as a module (it imports ``conditions`` from bench/, as it does when run)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        yield importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(SCRIPT.parent))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run in two parts: correctness and speed, then the rest continuing from the first file."""
    folder = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    base = [sys.executable, str(SCRIPT), "--device", "cpu", "--smoke"]
    first = subprocess.run(base + ["--only", "correctness,speed", "--out", str(folder / "first.json")], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    done = subprocess.run(base + ["--continue-from", str(folder / "first.json"), "--out", str(folder / "all.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((folder / "first.json").read_text()), json.loads((folder / "all.json").read_text()), done.stdout


def test_the_record_says_what_ran_where(smoke, gpu_check):
    first, record, _ = smoke
    assert "--smoke" in record["command"] and record["command"].startswith(Path(sys.executable).name)
    assert record["earlier_runs"] == [first["command"]] and "--only" in first["command"]
    assert record["versions"]["torch"] and record["versions"]["python"]
    assert record["device"]["type"] == "cpu" and record["settings"]["seed"] == 0
    assert len(record["git"]["sources_sha256"]) == 64
    if (ROOT / ".git").exists():
        assert len(record["git"]["commit"]) == 40
    assert record["settings"]["peak_tflops"] == gpu_check.SMOKE_PEAK_TFLOPS
    assert set(record["sections"]) == set(gpu_check.SECTIONS)


def test_every_case_of_the_plan_has_a_status(smoke, gpu_check):
    first, record, _ = smoke
    planned = [t.name for t in gpu_check.plan(gpu_check.SMOKE)]
    recorded = [name for section in record["sections"].values() for name in section["tasks"]]
    assert sorted(recorded) == sorted(planned)
    for section in record["sections"].values():
        assert section["status"] in ("ok", "partial", "skipped")
        for name, case in section["tasks"].items():
            assert case["status"] in ("ok", "skipped"), (name, case)
            assert case["status"] == "ok" or case["reason"], name
    # the second part ran only what the first left out, and carried the rest
    assert first["sections"]["train"]["status"] == "skipped"
    carried = [n for s in record["sections"].values() for n, c in s["tasks"].items() if c.get("carried_from")]
    assert sorted(carried) == sorted(n for s in first["sections"].values() for n, c in s["tasks"].items()
                                     if c["status"] == "ok")


def test_correctness_passes_on_cpu(smoke, gpu_check):
    tasks = smoke[1]["sections"]["correctness"]["tasks"]
    assert smoke[1]["sections"]["correctness"]["status"] == "ok"
    for variant in gpu_check.VARIANTS:
        checks = tasks[f"correctness/{variant}"]["checks"]
        assert set(checks) >= {"chunked_vs_naive", "bf16_vs_fp32", "causality", "streaming", "flex_vs_sdpa"}
        for name, check in checks.items():
            assert check["passed"] is not False, (variant, name, check)
            if check["passed"]:
                assert check["error"] <= check["tolerance"]
        assert (checks["chunked_vs_naive"]["passed"] is None) == (variant not in gpu_check.TITANS_VARIANTS)
        assert checks["causality"]["error"] == 0.0  # exact on CPU
    masks = tasks["correctness/flex-masks"]["checks"]
    assert len(masks) == 3 and all(c["passed"] for c in masks.values())


def test_speed_cases_measure_tokens_memory_compile_and_mfu(smoke, gpu_check):
    tasks = smoke[1]["sections"]["speed"]["tasks"]
    assert any(name.endswith("/compiled") for name in tasks)
    for name, case in tasks.items():
        assert case["tokens_per_s"] > 0 and case["step_s"] > 0 and case["micro_batch"] >= 1
        if case["variant"] in gpu_check.SMOKE.flop_variants:
            assert 0 < case["mfu"] < 1 and case["flops_per_step"] > 0
        else:
            assert case["mfu"] is None and case["mfu_note"]
        assert (case["compile_s"] is not None) == name.endswith("/compiled")
        assert case["peak_memory_gib"] is None  # CUDA only
    profiled = [case["profile"] for case in tasks.values() if "profile" in case]
    assert profiled and all(p["top"] and p["busy_ms"] > 0 for p in profiled)


def test_titans_pytorch_and_the_trainer_run(smoke):
    record = smoke[1]
    [tp] = record["sections"]["titans_pytorch"]["tasks"].values()
    if tp["status"] == "ok":
        assert set(tp["models"]) == {"titans_edu MAC", "titans-pytorch MAC"} and tp["speedup"] > 0
    else:
        assert "pip download" in tp["reason"] and "--wheels" in tp["reason"]
    [train] = record["sections"]["train"]["tasks"].values()
    assert train["status"] == "ok" and all(c["passed"] for c in train["checks"].values())
    assert train["commands"][0].startswith("torchrun --standalone --nproc_per_node 1 -m titans_edu.train")
    assert train["commands"][1].endswith("--resume")


def test_targets_and_markdown(smoke, gpu_check):
    record, stdout = smoke[1], smoke[2]
    assert {t["target"] for t in record["targets"]} == set(gpu_check.TARGETS)
    assert all(t["result"] in ("met", "missed", "not measured") for t in record["targets"])
    assert record["markdown"] in stdout
    for header in ("| variant | chunked vs naive", "| setting | variant | mode", "| trainer run |", "| target |"):
        assert header in record["markdown"]


def test_the_budget_keeps_the_order_and_skips_what_does_not_fit(gpu_check):
    names = [t.name for t in gpu_check.plan(gpu_check.FULL)]
    assert names[:7] == ["correctness/flex-masks", *(f"correctness/{v}" for v in gpu_check.VARIANTS)]
    assert names[7:13] == [f"speed/340m-4k/{v}/{m}" for v in ("transformer", "mac", "lmm")
                           for m in ("eager", "compiled")]
    assert len(names) == len(set(names)) == 7 + 24 + 2
    now = [0.0]
    budget = gpu_check.Budget(200, smoke=False, clock=lambda: now[0])
    tasks = {t.name: t for t in gpu_check.plan(gpu_check.FULL)}
    mac, mag = tasks["speed/340m-4k/mac/compiled"], tasks["speed/340m-4k/mag/compiled"]
    swa = tasks["speed/340m-4k/swa/compiled"]
    assert budget.allows(mac) == (True, 190) and budget.allows(swa) == (True, 120)
    now[0] = 100  # 90 s left: the first tier starts, capped at what is left; the rest needs its estimate (150 s)
    assert budget.allows(mac) == (True, 90) and budget.allows(mag)[0] is False
    budget.record(mac, 90, stopped=True)  # one compiled Titans case ran out of time: the others need their estimate
    assert budget.allows(tasks["speed/340m-4k/lmm/compiled"])[0] is False
    budget.record(swa, 20)
    assert budget.estimate(swa) == 20 and budget.allows(swa) == (True, 80)
