"""Embedding drift detectors side by side: this project's MMDDrift and ClassifierDrift against
alibi-detect's MMDDrift (PyTorch backend) and Evidently's embedding drift methods.

    bash benchmarks/peers_setup.sh              # once: the peers' own virtualenv
    python benchmarks/detectors.py --quick      # a small run (n = 500, 1,000 per side)
    python benchmarks/detectors.py --out benchmarks/results/detectors.md

Every (method, n, scenario) cell runs in a fresh subprocess (the peers with
benchmarks/.peers/bin/python), so its peak resident memory (getrusage max RSS) is its own. The
data are 512-d embeddings with low-rank structure: x = z A + 0.5 e, z ~ N(0, I_64), A fixed
(64 x 512, unit latent variance per coordinate), e ~ N(0, I_512). The shift scenario adds
``SHIFT`` times a fixed random unit direction of the signal span (the span of A, where the
model's features vary; the standard deviation along it is about 2.9) to every current study: a
scanner software update moving the embeddings along one feature direction. Each repeat draws
new data from its own seed; every worker regenerates them with numpy's PCG64 (the same stream
in numpy 1.x and 2.x) and reports a checksum, which the parent compares.

False-alarm rate = share of no-shift repeats that alarm at alpha = 0.05; power = share of
shift repeats that alarm. Evidently's methods return a verdict and no p-value: their own
default thresholds decide. Few repeats at the large sizes: the table says how many.
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS_PYTHON = HERE / ".peers" / "bin" / "python"
DIM, LATENT, NOISE = 512, 64, 0.5
SHIFT = 0.8
DATA_SEED = 12_345
ALPHA = 0.05


# Data -----------------------------------------------------------------------------------------


def make_windows(n: int, seed: int, *, shifted: bool) -> tuple[np.ndarray, np.ndarray]:
    fixed = np.random.default_rng(DATA_SEED)
    mixing = fixed.normal(size=(LATENT, DIM)) / np.sqrt(LATENT)
    direction = fixed.normal(size=LATENT) @ mixing  # a random direction of the signal span
    direction /= np.linalg.norm(direction)
    rng = np.random.default_rng(seed)

    def draw() -> np.ndarray:
        latent = rng.normal(size=(n, LATENT))
        return (latent @ mixing + NOISE * rng.normal(size=(n, DIM))).astype(np.float32)

    reference, current = draw(), draw()
    if shifted:
        current += (SHIFT * direction).astype(np.float32)
    return reference, current


# Workers (run in a subprocess; must not import the project for the peers) ---------------------


def _current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _blas_report() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl missing"
    parts = []
    for pool in threadpool_info():
        arch = pool.get("architecture") or ""
        parts.append(f"{pool.get('internal_api')} {pool.get('version') or ''} {arch}".strip())
    return "; ".join(sorted(set(parts))) or "none found"


def _ours(method: str, permutations: int):
    sys.path.insert(0, str(ROOT))
    from monitor.detect.classifier import ClassifierDrift
    from monitor.detect.mmd import MMDDrift

    def run(reference, current, seed):
        if method == "ours-classifier":
            detector = ClassifierDrift(n_permutations=permutations, seed=seed, device="cpu")
        else:
            components = None if "raw" in method else 32
            detector = MMDDrift(
                n_permutations=permutations, seed=seed, device="cpu", pca_components=components
            )
        result = detector.fit(reference).test(current)
        return result.drift, result.p_value

    return run


def _alibi(permutations: int):
    from alibi_detect.cd import MMDDrift as AlibiMMD

    def run(reference, current, seed):
        import torch

        torch.manual_seed(seed)
        np.random.seed(seed)
        detector = AlibiMMD(
            reference, backend="pytorch", p_val=ALPHA, n_permutations=permutations, device="cpu"
        )
        prediction = detector.predict(current)["data"]
        return bool(prediction["is_drift"]), float(prediction["p_val"])

    return run


def _evidently(method: str):
    import pandas as pd
    from evidently.legacy.metrics.data_drift import embedding_drift_methods as methods

    def run(reference, current, seed):
        if method == "evidently-model":
            # EmbeddingsDriftMetric's default: bootstrap below 1,000 reference rows.
            drift_method = methods.model(bootstrap=reference.shape[0] < 1000)
        else:
            drift_method = getattr(methods, method.removeprefix("evidently-"))()
        _, drift, _ = drift_method(pd.DataFrame(current), pd.DataFrame(reference))
        return bool(drift), None

    return run


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    if args.method.startswith("ours"):
        run = _ours(args.method, args.permutations)
    elif args.method == "alibi-mmd":
        run = _alibi(args.permutations)
    else:
        run = _evidently(args.method)
    reference, current = make_windows(args.n, args.seed0, shifted=args.shifted)
    checksum = float(np.float64(reference[:5]).sum() + np.float64(current[-5:]).sum())
    baseline_mb = _current_rss_mb()
    seconds, verdicts, p_values = [], [], []
    for repeat in range(args.repeats):
        if repeat:
            reference, current = make_windows(args.n, args.seed0 + repeat, shifted=args.shifted)
        start = time.perf_counter()
        drift, p_value = run(reference, current, args.seed0 + repeat)
        seconds.append(time.perf_counter() - start)
        verdicts.append(bool(drift))
        p_values.append(p_value)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "seconds": seconds,
        "verdicts": verdicts,
        "p_values": p_values,
        "peak_rss_mb": peak_mb,
        "baseline_rss_mb": baseline_mb,
        "checksum": checksum,
        "blas": _blas_report(),
        "torch": f"{torch.__version__} ({torch.backends.cpu.get_cpu_capability()})",
        "numpy": np.__version__,
    }
    Path(args.json).write_text(json.dumps(report))


# Parent ----------------------------------------------------------------------------------------


@dataclass
class Cell:
    method: str
    n: int
    null: dict | None = None
    shift: dict | None = None
    notes: list[str] = field(default_factory=list)


def plan(quick: bool) -> tuple[list[int], dict[str, dict[int, tuple[int, int]]], dict[str, int]]:
    """Sizes, (no-shift, shift) repeats per method and size, and permutations per method."""
    permutations = {
        "ours-mmd": 1000,
        "ours-mmd-B100": 100,
        "ours-mmd-raw-B100": 100,
        "ours-classifier": 1000,
        "alibi-mmd": 100,
        "evidently-model": 0,
        "evidently-mmd": 0,
        "evidently-ratio": 0,
        "evidently-distance": 0,
    }
    if quick:
        sizes = [500, 1000]
        repeats = {method: {500: (4, 2), 1000: (2, 2)} for method in permutations}
        return sizes, repeats, permutations
    sizes = [1000, 5000, 10_000]
    ours = {1000: (60, 20), 5000: (20, 10), 10_000: (6, 4)}
    evidently = {1000: (20, 10), 5000: (4, 2), 10_000: (2, 2)}
    repeats = {
        "ours-mmd": ours,
        "ours-mmd-B100": ours,
        "ours-mmd-raw-B100": ours,
        "ours-classifier": {1000: (60, 20), 5000: (10, 5), 10_000: (4, 2)},
        "alibi-mmd": {1000: (20, 10), 5000: (2, 1), 10_000: (1, 1)},
        "evidently-model": evidently,
        "evidently-mmd": evidently,
        "evidently-ratio": evidently,
        "evidently-distance": evidently,
    }
    return sizes, repeats, permutations


def run_cell(
    method: str, n: int, repeats: int, shifted: bool, permutations: int, seed0: int
) -> dict:
    python = sys.executable if method.startswith("ours") else str(PEERS_PYTHON)
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    target = out / f"{method}-{n}-{'shift' if shifted else 'null'}.json"
    command = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        "--method",
        method,
        "--n",
        str(n),
        "--repeats",
        str(repeats),
        "--seed0",
        str(seed0),
        "--permutations",
        str(max(permutations, 1)),
        "--json",
        str(target),
    ]
    if shifted:
        command.append("--shifted")
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    }
    env["PYTHONPATH"] = str(ROOT)
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if completed.returncode != 0:
        return {
            "error": completed.stderr.strip().splitlines()[-1] if completed.stderr else "failed"
        }
    return json.loads(target.read_text())


def _rate(result: dict | None) -> str:
    if not result or "verdicts" not in result:
        return "-" if not result else "error"
    verdicts = result["verdicts"]
    return f"{sum(verdicts) / len(verdicts):.2f} ({sum(verdicts)}/{len(verdicts)})"


def _median_seconds(cell: Cell) -> float | None:
    times = [t for r in (cell.null, cell.shift) if r and "seconds" in r for t in r["seconds"]]
    return statistics.median(times) if times else None


def _peak(cell: Cell) -> tuple[float, float] | None:
    runs = [r for r in (cell.null, cell.shift) if r and "peak_rss_mb" in r]
    if not runs:
        return None
    worst = max(runs, key=lambda r: r["peak_rss_mb"])
    return worst["peak_rss_mb"], worst["peak_rss_mb"] - worst["baseline_rss_mb"]


def render(
    cells: list[Cell], sizes: list[int], permutations: dict[str, int], header: list[str]
) -> str:
    lines = [*header, ""]
    lines.append(
        "| n per side | method | permutations | median s / test | peak RSS MB (above baseline) "
        "| false-alarm rate | power |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for n in sizes:
        for cell in (c for c in cells if c.n == n):
            seconds = _median_seconds(cell)
            peak = _peak(cell)
            errors = [r["error"] for r in (cell.null, cell.shift) if r and "error" in r]
            lines.append(
                f"| {n:,} | {cell.method} | {permutations[cell.method] or '-'} | "
                f"{'-' if seconds is None else f'{seconds:.2f}'} | "
                f"{'-' if peak is None else f'{peak[0]:,.0f} ({peak[1]:,.0f})'} | "
                f"{_rate(cell.null)} | {_rate(cell.shift)} |" + (f" {errors[0]}" if errors else "")
            )
    lines.append("")
    lines.append("Ratios (alibi-detect / ours), same n:")
    lines.append("")
    compared = ["ours-mmd-B100", "ours-mmd-raw-B100", "ours-mmd"]
    lines.append(
        "| n per side | "
        + " | ".join(f"time alibi / {m}" for m in compared)
        + " | "
        + " | ".join(f"peak RSS alibi / {m}" for m in compared)
        + " |"
    )
    lines.append("|---" * (1 + 2 * len(compared)) + "|")
    for n in sizes:
        by = {c.method: c for c in cells if c.n == n}
        alibi = by.get("alibi-mmd")
        if alibi is None or _median_seconds(alibi) is None:
            continue
        alibi_seconds, alibi_peak = _median_seconds(alibi), _peak(alibi)
        times, memories = [], []
        for method in compared:
            cell = by.get(method)
            seconds = _median_seconds(cell) if cell else None
            peak = _peak(cell) if cell else None
            times.append(f"{alibi_seconds / seconds:.0f}x" if seconds else "-")
            memories.append(f"{alibi_peak[0] / peak[0]:.1f}x" if peak and alibi_peak else "-")
        lines.append(f"| {n:,} | " + " | ".join(times + memories) + " |")
    return "\n".join(lines)


def parent(args: argparse.Namespace) -> None:
    if not PEERS_PYTHON.exists():
        sys.exit(f"{PEERS_PYTHON} is missing: run `bash benchmarks/peers_setup.sh` first")
    load_start = os.getloadavg()[0]
    sizes, repeats, permutations = plan(args.quick)
    if args.sizes:
        sizes = [n for n in sizes if str(n) in args.sizes.split(",")]
    methods = [m for m in permutations if not args.methods or m in args.methods.split(",")]
    cells: list[Cell] = []
    checksums: dict[tuple[int, bool], float] = {}
    blas: dict[str, str] = {}
    for n in sizes:
        for method in methods:
            cell = Cell(method=method, n=n)
            null_repeats, shift_repeats = repeats[method][n]
            for shifted, count in ((False, null_repeats), (True, shift_repeats)):
                seed0 = 1_000_000 * int(shifted) + 1000 * n
                result = run_cell(method, n, count, shifted, permutations[method], seed0)
                if "checksum" in result:
                    expected = checksums.setdefault((n, shifted), result["checksum"])
                    if abs(result["checksum"] - expected) > 1e-3 * max(1.0, abs(expected)):
                        result["error"] = "data checksum differs between workers"
                    blas[method.split("-")[0]] = (
                        f"{result['blas']}; torch {result['torch']}; numpy {result['numpy']}"
                    )
                setattr(cell, "shift" if shifted else "null", result)
                print(
                    f"  {method:20s} n={n:6d} {'shift' if shifted else 'null '} "
                    + json.dumps({k: result.get(k) for k in ("verdicts", "peak_rss_mb", "error")})
                    + f" {sum(result.get('seconds', [])):.1f}s",
                    flush=True,
                )
            cells.append(cell)
    header = [
        "# Embedding drift detectors: this project vs alibi-detect and Evidently",
        "",
        f"- run: {time.strftime('%Y-%m-%d %H:%M')} ({'quick' if args.quick else 'full'})",
        f"- machine: {machine()}",
        f"- data: {DIM}-d, rank-{LATENT} signal + noise {NOISE}; shift {SHIFT} along one unit "
        f"direction of the signal span; alpha {ALPHA}; seeds 1000*n + repeat (no shift), "
        "1e6 + 1000*n + repeat (shift)",
        f"- load average (1 min) at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f}: "
        "the cores are shared with other work, so times carry that noise",
        "- OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for the workers; kernels seen:",
        *[f"  - {name}: {text}" for name, text in sorted(blas.items())],
        "- ours: PCA 32 on the pooled sample, unbiased MMD², median-heuristic bandwidth; "
        "alibi-detect: MMDDrift(backend='pytorch') defaults on the raw 512-d; "
        "Evidently: embedding drift methods at their defaults (verdicts only, no p-value)",
        "- peak RSS: getrusage max RSS of the worker process (imports and data included); in "
        "brackets, above its RSS after imports and data",
    ]
    table = render(cells, sizes, permutations, header)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and repeats")
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--methods", help="comma-separated subset of methods")
    parser.add_argument("--sizes", help="comma-separated subset of the sizes (n per side)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--seed0", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--permutations", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--shifted", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
