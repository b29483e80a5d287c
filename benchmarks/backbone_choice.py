"""Backbone choice (issue #31): how often one split picks the backbone best on test, against R repeated draws.

Usage: PYTHONPATH=. python benchmarks/backbone_choice.py WORK [--limit N] [--trials T] [--repeats R]

Two real image sets: Fashion-MNIST (fashion_mnist:train) and the Adwaita icon theme under /usr/share/icons (one
class per icon category, every size). Each is sampled to N images (stratified, seeded, as `extract --limit`)
and extracted at 64 px with the offline ImageNet EfficientNet-Lite0 and torchvision MobileNetV2, each storing
its mid-level block10_add and its final head_relu features: four candidates a set. The head is logreg (its
default C), the selection rule bench's: a candidate's validation accuracy on a draw of the train+val rows
(featcache.bench.repeats.redraw, the test split never in a draw). In trial t, "one split" picks the candidate
with the best validation accuracy on draw (t, 1); "repeats" the best mean over draws (t, 1..R). Truth: each
candidate's logreg fitted on train+val, scored on the whole test split. Loss: the true best's test accuracy
minus the chosen one's. LogME (featcache.logme) of the train+val rows ranks the candidates beside it.
Prints one JSON document (also written to WORK/backbone_choice.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

ICON_CLASSES = ("actions", "devices", "emotes", "legacy", "mimetypes", "places", "status")
BACKBONES = ("efficientnet_lite0", "mobilenet_v2_torchvision")
OUTPUTS = ("block10_add", "head_relu")


def icon_folder(root: Path) -> Path:
    """Adwaita's PNG icons in one folder per category (a name repeated across sizes gets the size in front)."""
    out = root / "icons"
    if out.is_dir():
        return out
    for png in sorted(Path("/usr/share/icons/Adwaita").glob("*/*/*.png")):
        size, cls = png.parts[-3], png.parts[-2]
        if cls in ICON_CLASSES:
            (out / cls).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, out / cls / f"{size}-{png.name}")
    return out


def candidates(source, name: str, work: Path, limit: int) -> dict:
    """``{"backbone:output": (X, y, masks, extraction seconds)}`` of one source through both backbones."""
    import featcache
    from featcache.store import split_masks

    out = {}
    for backbone in BACKBONES:
        t0 = time.perf_counter()
        cache = featcache.extract(source, backbone, work / f"{name}-{backbone}", limit=limit, image_size=64,
                                  outputs=list(OUTPUTS))
        seconds = time.perf_counter() - t0
        y, masks = cache.labels(), split_masks(cache)
        for output in OUTPUTS:
            X = np.asarray(cache.features(output), np.float32).reshape(len(cache), -1)
            out[f"{backbone}:{output}"] = (X, y, masks, round(seconds, 1))
    return out


def _logreg_accuracy(X, y, fit, score) -> float:
    from featcache import make_head

    head = make_head("logreg").fit(X[fit], y[fit])
    return float(np.mean(head.predict(X[score]) == y[score]))


def measure(cands: dict, trials: int, repeats: int) -> dict:
    """Each candidate's true test accuracy, its validation accuracy per (trial, draw), LogME, and each mode's
    choice and loss per trial."""
    from featcache.bench.repeats import redraw
    from featcache.logme import logme

    names = list(cands)
    truth, val, scores, t_logme = {}, {}, {}, {}
    for n in names:
        X, y, m, _s = cands[n]
        tr, va, te = (np.flatnonzero(m[s]) for s in ("train", "val", "test"))
        truth[n] = _logreg_accuracy(X, y, np.concatenate([tr, va]), te)
        val[n] = np.array([[_logreg_accuracy(X, y, *redraw(y, tr, va, r, t)) for r in range(1, repeats + 1)]
                           for t in range(trials)])
        t0 = time.perf_counter()
        pool = np.concatenate([tr, va])
        scores[n] = logme(X[pool], y[pool])
        t_logme[n] = round(time.perf_counter() - t0, 2)
    best = max(truth.values())
    single = [max(names, key=lambda n: val[n][t, 0]) for t in range(trials)]
    repeated = [max(names, key=lambda n: val[n][t].mean()) for t in range(trials)]
    loss = {"single": [best - truth[c] for c in single], "repeats": [best - truth[c] for c in repeated]}
    return {"test_accuracy": truth, "logme": scores, "logme_seconds": t_logme,
            "true_best": max(names, key=truth.get), "logme_best": max(names, key=scores.get),
            "logme_kendall_tau": _tau([truth[n] for n in names], [scores[n] for n in names]),
            "extract_seconds": {n: cands[n][3] for n in names},
            "n": {k: int(cands[names[0]][2][k].sum()) for k in ("train", "val", "test")},
            "single_picks_best": sum(truth[c] == best for c in single) / trials,
            "repeats_picks_best": sum(truth[c] == best for c in repeated) / trials,
            "mean_loss_single": float(np.mean(loss["single"])), "mean_loss_repeats": float(np.mean(loss["repeats"])),
            "trials_repeats_worse": int(sum(b > a + 1e-12 for a, b in zip(loss["single"], loss["repeats"]))),
            "picks": {"single": single, "repeats": repeated}}


def _tau(a, b) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path)
    p.add_argument("--limit", type=int, default=1500)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    doc = {"load_before": os.getloadavg(), "cpu_flags": _flags(), "limit": args.limit, "trials": args.trials,
           "repeats": args.repeats, "sets": {}}
    with threadpool_limits(2):
        for name, source in (("fashion_mnist", "fashion_mnist:train"), ("icons", str(icon_folder(args.work)))):
            doc["sets"][name] = measure(candidates(source, name, args.work, args.limit), args.trials, args.repeats)
    doc["wall_seconds"] = round(time.perf_counter() - t0, 1)
    doc["load_after"] = os.getloadavg()
    text = json.dumps(doc, indent=2)
    (args.work / "backbone_choice.json").write_text(text + "\n")
    print(text)


def _flags() -> str:
    out = subprocess.run(["grep", "-m1", "-o", "-w", "-E", "avx512f|avx512_bf16|avx512_vnni|amx_tile",
                          "/proc/cpuinfo"], capture_output=True, text=True).stdout
    flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0] if out else ""
    return " ".join(f for f in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in flags.split())


if __name__ == "__main__":
    main()
