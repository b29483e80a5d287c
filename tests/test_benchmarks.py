"""The performance scripts run (``--quick``): the figures exist and are well-formed. No timing is asserted."""

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_benchmarks_quick_prints_every_cpu_figure_and_writes_the_table(tmp_path, fashion_mnist_available):
    md, raw = tmp_path / "PERFORMANCE.md", tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--quick", "--out", md, "--json", raw,
                           "--work", tmp_path / "work"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(raw.read_text())["results"]
    assert sorted({r["figure"] for r in results}) == [1, 2, 3, 4, 5, 6, 7, 10]
    for r in results:
        assert f"[{r['figure']}] {r['name']}" in proc.stdout  # one printed line per figure
        if r["figure"] != 3:  # figure 3's per-epoch ratio can be below timer noise with --quick's few rows
            assert math.isfinite(r["value"]) and r["value"] > 0, r
    table = md.read_text()
    assert table.split("\n## ")[0].count("\n| ") == len(results) + 1 and "tiny counts" in table and "GPU" in table
