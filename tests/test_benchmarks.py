"""The coupling benchmark script runs and reports sound figures on a tiny case (it must not rot)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_coupling_benchmark_table():
    methods = ["auto", "exact", "exact@bfloat16", "multiscale:leaf_size=32,sweeps=1", "independent"]
    out = subprocess.run(
        [sys.executable, "benchmarks/coupling.py", "--data", "mixture", "--n", "128", "--d", "96",
         "--methods", "auction:max_rounds=2", *methods, "--peers", "scipy", "--repeat", "1"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    rows = {line.split()[3]: line.split() for line in out.splitlines() if line.startswith("mixture")}
    failed = rows.pop("auction:max_rounds=2")  # a solver's error is its row; the run goes on
    assert failed[4:7] == ["failed:", "RuntimeError:", "OT"] and "stopped at its budget" in " ".join(failed)
    assert set(rows) == {"scipy", *methods}
    gap = {name: float(row[-2]) for name, row in rows.items()}  # columns: ..., cost ratio, gap closed, targets
    assert gap["scipy"] == gap["exact"] == 1.0
    assert gap["auto"] >= 0.99 and "(auto chose exact" in out  # n=128: exact, on a bfloat16 cost where the CPU has bfloat16 units
    assert gap["exact@bfloat16"] >= 0.99
    assert 0.5 < gap["multiscale:leaf_size=32,sweeps=1"] <= 1.0 + 1e-9
    assert gap["independent"] == 0.0
    assert all(row[-1] == "1.000" for row in rows.values())  # permutations: every target used once


def test_auto_trial_benchmark_runs():
    out = subprocess.run(
        [sys.executable, "benchmarks/auto_trial.py", "--n", "256", "--d", "784"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    rows = [line.split() for line in out.splitlines()[2:]]
    assert len(rows) == 14 and all(row[-1] in ("exact", "exact@bfloat16") for row in rows)  # n < 4096: never multiscale
    whole = [float(row[-3]) for row in rows]  # gap of multiscale on the whole batch: one cluster at n=256, so exact
    assert all(abs(g - 1.0) < 1e-6 for g in whole)


def test_global_coupling_benchmark_runs_on_two_cpu_ranks():
    out = subprocess.run(
        [sys.executable, "benchmarks/global_coupling.py", "--ranks", "2", "--world-batch", "64", "--d", "784", "--repeat", "1"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.split()[:2] == ["64", "2"]]
    assert [row[2] for row in rows] == ["local", "global"]
    assert all(0.5 < float(row[-2]) < 1.0 for row in rows)  # cost ratio of an OT match: below independent pairing


def test_auction_ops_benchmark_counts_the_work_of_a_solve():
    out = subprocess.run(
        [sys.executable, "benchmarks/auction_ops.py", "--data", "gaussian", "mixture", "--n", "256", "--d", "784", "--repeat", "1"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[1:2] == ["256"]}
    assert set(rows) == {"gaussian", "mixture"}
    for row in rows.values():  # columns: data, n, rounds, ops, syncs, ops/round, ms, gap closed
        rounds, ops, syncs = int(row[2]), int(row[3]), int(row[4])
        assert 0 < rounds and 10 * rounds < ops < 100 * rounds  # tens of torch ops a round
        assert syncs < rounds  # the host looks at the device once per block of rounds, not each round
        assert float(row[-1]) >= 0.99
