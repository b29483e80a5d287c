"""What bench --repeats costs and what it changes: the default bench at several R on one cache.

Usage: PYTHONPATH=. python benchmarks/repeats.py CACHE WORK [R ...]   (default R: 1 3)
Each R is one plain `featcache bench CACHE --out WORK/rR --quiet --repeats R`, timed from outside; prints one
JSON line per R: wall seconds, the best row, its validation mean and sd, how many rows tie with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def run(cache: str, work: Path, r: int) -> dict:
    out = work / f"r{r}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "featcache", "bench", cache, "--out", str(out), "--quiet",
                    "--repeats", str(r)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rows = json.loads((out / "results.json").read_text())
    best = next(x for x in rows if x.get("versus_best") == "best")
    return {"repeats": r, "wall_s": round(wall, 1), "best": f"{best['head']} on {best['features']}",
            "best_val": best.get("val_accuracy"), "best_val_sd": best.get("val_accuracy_sd"),
            "best_test": best.get("accuracy"), "ties": sum(x.get("versus_best") == "tie" for x in rows),
            "rows": len(rows), "ok": sum(x.get("status") == "ok" for x in rows),
            "heads": {x["head"] + ("@pixels" if x.get("baseline") else ""):
                      [round(x.get("wall_seconds") or 0, 1), x.get("accuracy"), x.get("val_accuracy"),
                       x.get("versus_best")] for x in rows}}


def main(argv: list[str]) -> None:
    cache, work = argv[0], Path(argv[1])
    for r in [int(a) for a in argv[2:]] or [1, 3]:
        print(json.dumps(run(cache, work, r)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
