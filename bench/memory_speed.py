"""Speed of the NeuralMemory layer, side by side with titans-pytorch, and its cost against sequence length.

    python bench/memory_speed.py                 # the full report (a few minutes on 2 cores)
    python bench/memory_speed.py --quick         # fewer repeats, no scaling sweep

Configuration (issue 2): dim 256, 1 head, a 2-layer MLP memory with expansion 4, chunk 64, momentum and
forgetting on, batch 2 x 1024 tokens, float32, 2 threads. Both layers are timed in this one process, in
interleaved rounds, and the median of the rounds is reported. The matmul throughput of the machine is
measured here too, and our achieved FLOP rate is quoted against it, from the FLOP count in `flops_per_token`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from conditions import machine_conditions, print_conditions

from titans_edu import MemoryConfig, NeuralMemory

DIM, HEADS, DEPTH, EXPANSION, CHUNK, BATCH, SEQ = 256, 1, 2, 4, 64, 2, 1024


def flops_per_token(dim: int = DIM, heads: int = HEADS, expansion: int = EXPANSION, chunk: int = CHUNK) -> dict:
    """Multiply-add FLOPs (2 per MAC) of our forward pass per token, term by term; backward counts as 2x forward.

    Per head, with layer widths d_0 = head_dim, d_1 = hidden, d_2 = head_dim and b = chunk:
      keys through M_{t'} (forward) ............ sum_l 2 d_{l-1} d_l
      backprop deltas (manual) ................. sum_{l>=2} 2 d_l d_{l-1}
      read with M and S (h M, h S) ............. sum_l 4 d_{l-1} d_l
      dual-form attention (h a^T, (C*.) delta) . sum_l 2 b (d_{l-1} + d_l)
      chunk-end M and S (a^T (C delta)) ........ sum_l 4 d_{l-1} d_l
      chunk coefficients (B @ E) ............... 2 b^2
    plus the projections q, k, v, output gate and output: 2 dim (5 heads head_dim).
    """
    hd = dim // heads
    widths = [hd, expansion * hd, hd]
    pairs = list(zip(widths, widths[1:]))
    terms = {
        "keys_forward": sum(2 * a * b for a, b in pairs),
        "deltas": sum(2 * a * b for a, b in pairs[1:]),
        "read_M_and_S": sum(4 * a * b for a, b in pairs),
        "dual_attention": sum(2 * chunk * (a + b) for a, b in pairs),
        "state_update": sum(4 * a * b for a, b in pairs),
        "coefficients": 2 * chunk * chunk,
    }
    terms = {k: v * heads for k, v in terms.items()}
    terms["projections"] = 2 * dim * 5 * heads * hd
    forward = sum(terms.values())
    return {"terms": terms, "forward": forward, "forward_backward": 3 * forward}


def matmul_gflops(n: int = 1024, repeats: int = 30) -> float:
    """The machine's float32 matmul rate: the fastest of ``repeats`` 1024^3 sgemms, so the share of it quoted
    below is measured against the best the machine did, not a typical moment."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def state_matmuls(dim: int = DIM, heads: int = HEADS, expansion: int = EXPANSION, chunk: int = CHUNK) -> list:
    """Every state-sized matmul in one chunk's forward and backward pass (``titans_edu.memory.fused_chunk``), per sequence
    and head, as ``(kind, rows, d_in, d_out)``. A layer ``(d_in, d_out)`` with weights ``W`` (``M``, ``S``,
    ``M_{t'}`` or their gradients, all ``(d_in, d_out)``) and ``b = chunk`` rows has three kinds, each in the
    memory layout the layer uses:

      "x W"     (b, d_in) @ W        k M_{t'}, h M, h S (forward); a dM', a dS' (backward)
      "x W^T"   (b, d_out) @ W^T     dr M^T, dr S^T, (c delta) dM'^T, (d delta) dS'^T, dz M_{t'}^T
      "x^T y"   (b, d_in)^T @ (b, d_out)
                                     a^T (c delta), a^T (d delta) (chunk end); h^T dr twice (dM, dS); a^T dz

    and, in every layer but the first, the anchor's backprop into the layer below: delta M_{t'}^T (forward),
    dG M_{t'} and dG^T delta (backward). 33 in all for a 2-layer memory: every exact form with momentum has them
    (see bench/README.md).
    """
    hd = dim // heads
    widths = [hd, int(expansion * hd), hd]
    out = []
    for layer, (d_in, d_out) in enumerate(zip(widths, widths[1:])):
        each = 5 if layer == 0 else 6  # of every kind; the anchor's backprop adds one of each below the first
        out += [(kind, chunk, d_in, d_out) for kind in ("x W", "x W^T", "x^T y") for _ in range(each)]
    return out


def state_matmul_floor(fresh: bool, batch: int = BATCH, seq: int = SEQ, repeats: int = 20) -> float:
    """Seconds per forward+backward of the state-sized matmuls alone: one chunk's :func:`state_matmuls` as ``bmm``
    over the batch and heads (the fastest of ``repeats``), times the number of chunks.

    ``fresh=False`` reuses one set of operands per shape, so they stay warm in cache: no arrangement of the same
    arithmetic beats that on this machine, and ``batch * seq / floor`` caps the layer's tokens per second.
    ``fresh=True`` gives every matmul operands of its own, which come from memory, as a new chunk's state does.
    """
    N, operands = batch * HEADS, {}

    def make(kind: str, rows: int, d_in: int, d_out: int) -> tuple[torch.Tensor, torch.Tensor]:
        W = torch.randn(N, d_in, d_out)
        x = torch.randn(N, rows, d_out if kind == "x W^T" else d_in)
        y = {"x W": W, "x W^T": W.transpose(1, 2), "x^T y": torch.randn(N, rows, d_out)}[kind]
        return x.transpose(1, 2) if kind == "x^T y" else x, y

    calls = [make(*key) if fresh else operands.setdefault(key, make(*key)) for key in state_matmuls()]

    def one_chunk() -> float:
        t = time.perf_counter()
        for x, y in calls:
            torch.bmm(x, y)
        return time.perf_counter() - t

    one_chunk()
    return min(one_chunk() for _ in range(repeats)) * -(-seq // CHUNK)


def ours(**changes):
    return NeuralMemory(MemoryConfig(dim=DIM, heads=HEADS, depth=DEPTH, expansion=EXPANSION, chunk_size=CHUNK,
                                     momentum=True, forgetting=True, **changes))


def ours_plain():
    """Our layer with the plain rule of Eqs. 13-14 (no dampening, no norm bound, raw values): what the bound costs."""
    return ours(dampening=False, max_norm=None, normalize_values=False)


def theirs():
    from titans_pytorch import MemoryMLP
    from titans_pytorch import NeuralMemory as TitansPytorchMemory

    model = MemoryMLP(dim=DIM // HEADS, depth=DEPTH, expansion_factor=float(EXPANSION))
    return TitansPytorchMemory(dim=DIM, chunk_size=CHUNK, heads=HEADS, model=model, momentum=True)


def first(out):
    return out[0] if isinstance(out, tuple) else out


def time_forward(layer, x) -> float:
    t = time.perf_counter()
    with torch.no_grad():
        first(layer(x))
    return time.perf_counter() - t


def time_forward_backward(layer, x) -> float:
    layer.zero_grad(set_to_none=True)
    t = time.perf_counter()
    first(layer(x)).sum().backward()
    return time.perf_counter() - t


def side_by_side(rounds: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(BATCH, SEQ, DIM)
    layers = {"titans_edu": ours(), "titans_edu, plain rule": ours_plain()}
    layers["titans_edu, plain rule"].load_state_dict(layers["titans_edu"].state_dict())
    try:
        layers["titans-pytorch"] = theirs()
    except ImportError:
        print("titans-pytorch is not installed (pip install -e '.[bench]'); timing titans_edu alone")
    for layer in layers.values():  # warm up both
        time_forward(layer, x), time_forward_backward(layer, x)
    samples = {name: {"forward": [], "forward_backward": []} for name in layers}
    for _ in range(rounds):  # interleaved, so both see the same machine load
        for name, layer in layers.items():
            samples[name]["forward"].append(time_forward(layer, x))
            samples[name]["forward_backward"].append(time_forward_backward(layer, x))
    tokens = BATCH * SEQ
    return {name: {kind: tokens / statistics.median(ts) for kind, ts in kinds.items()} for name, kinds in samples.items()}


def peak_rss_mib() -> float:
    """This process's peak resident memory. ``VmHWM`` where Linux has it: unlike ``ru_maxrss``, it starts afresh at
    ``exec``, so a child of a large parent does not inherit the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_length(seq: int) -> dict:
    """Run in a fresh process: time and peak memory of one forward+backward at this length, on one thread.

    One thread, because ``set_flush_denormal`` reaches only the calling thread: with two, the second thread's
    share of every matmul still meets the denormals of the decaying memory on long streams (see ``main``), and
    the cost per token would seem to grow with the length for that reason alone.
    """
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    layer = ours()
    x = torch.randn(BATCH, seq, DIM)
    before = peak_rss_mib()
    seconds = min(time_forward_backward(layer, x) for _ in range(2))
    peak = peak_rss_mib()
    return {"seq": seq, "seconds": seconds, "peak_mib": peak, "extra_mib": peak - before}


# glibc's malloc hands large blocks back to the kernel when they are freed and takes fresh, zero-filled pages for
# the next ones; past a few GB of saved activations that page-fault work grows faster than the stream. These
# settings keep freed memory in the process, which shows the cost of the algorithm alone.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**36),
                     "MALLOC_TOP_PAD_": str(2**30)}


def scaling(lengths: list[int]) -> list[dict]:
    """Each length in a fresh process, once with glibc's default allocator settings and once with freed memory
    kept (:data:`KEEP_FREED_MEMORY`)."""
    rows = []
    for seq in lengths:
        row = {}
        for name, extra in (("default", {}), ("kept", KEEP_FREED_MEMORY)):
            out = subprocess.run([sys.executable, __file__, "--one-length", str(seq)], capture_output=True,
                                 text=True, check=True, env={**os.environ, **extra})
            row[name] = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"seq": seq, **row})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds and no length sweep")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--one-length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench/results/memory_speed.json")
    args = parser.parse_args()
    if args.one_length:
        print(json.dumps(one_length(args.one_length)))
        return
    torch.set_num_threads(2)
    # The fresh, untrained layer forgets faster than it learns on random input, so over long streams its weights
    # decay below 1e-38; such denormal floats make CPU matmuls many times slower. Both layers run with them
    # flushed to zero, as the trainer (titans_edu.training.trainer) does.
    torch.set_flush_denormal(True)

    conditions = machine_conditions()
    print_conditions(conditions)
    results = side_by_side(3 if args.quick else args.rounds)
    peak = max(matmul_gflops(), matmul_gflops())
    flops = flops_per_token()
    print(f"matmul throughput (fastest 1024^3 sgemm, 2 threads): {peak:.1f} GFLOP/s")
    print(f"our FLOPs per token: forward {flops['forward'] / 1e6:.2f} M, forward+backward "
          f"{flops['forward_backward'] / 1e6:.2f} M\n")
    print("| layer | forward tok/s | forward+backward tok/s |")
    print("| --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['forward']:,.0f} | {r['forward_backward']:,.0f} |")
    ours_r = results["titans_edu"]
    plain = results["titans_edu, plain rule"]
    print(f"\nthe bound (dampening, norm bound, unit values) against the plain rule: forward "
          f"{ours_r['forward'] / plain['forward']:.3f}x, forward+backward "
          f"{ours_r['forward_backward'] / plain['forward_backward']:.3f}x the speed")
    achieved = ours_r["forward_backward"] * flops["forward_backward"] / 1e9
    print(f"\nour forward+backward runs at {achieved:.1f} GFLOP/s = {achieved / peak:.0%} of the measured matmul rate")
    floor, cold = state_matmul_floor(fresh=False), state_matmul_floor(fresh=True)
    ceiling = BATCH * SEQ / floor
    print(f"the {len(state_matmuls()) * -(-SEQ // CHUNK)} state-sized matmuls of one forward+backward alone: "
          f"{floor * 1e3:.0f} ms warm in cache (a ceiling of {ceiling:,.0f} tok/s), {cold * 1e3:.0f} ms with fresh "
          f"operands; the layer takes {BATCH * SEQ / ours_r['forward_backward'] * 1e3:.0f} ms")
    if "titans-pytorch" in results:
        base = results["titans-pytorch"]
        print(f"speed-up over titans-pytorch: forward {ours_r['forward'] / base['forward']:.2f}x, "
              f"forward+backward {ours_r['forward_backward'] / base['forward_backward']:.2f}x "
              f"(the matmuls alone would allow {ceiling / base['forward_backward']:.2f}x)")
    report = {"conditions": conditions, "matmul_gflops": peak, "flops": flops, "side_by_side": results,
              "state_matmul_floor_s": {"warm": floor, "fresh": cold}}
    if not args.quick:
        rows = scaling([1024, 2048, 4096, 8192, 16384])
        print("\none thread, one forward+backward, fresh process per length; glibc malloc as it comes, then with")
        print("freed memory kept in the process (KEEP_FREED_MEMORY)\n")
        print("| T | s | s per 1k tokens | s, memory kept | s per 1k, memory kept | peak RSS MiB |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in rows:
            d, k = r["default"], r["kept"]
            print(f"| {r['seq']} | {d['seconds']:.2f} | {d['seconds'] / r['seq'] * 1024:.3f} | {k['seconds']:.2f} | "
                  f"{k['seconds'] / r['seq'] * 1024:.3f} | {d['peak_mib']:.0f} |")
        report["scaling"] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
