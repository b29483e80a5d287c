"""Out-of-fold heads x cleanlab filters on inspect_bench.py's planted cache, whose true labels are known.

    PYTHONPATH=$PWD python benchmarks/label_heads.py /tmp/insp10k96/cache

Logistic regression at C 0.3/1/3/10, cosine knn at k 10/30 and their mean, each through every cleanlab
filter (flagged, precision, recall), and the best logreg on the true labels (the noise-free flag count).
"""
import json
import re
import sys
import time

import numpy as np
import featcache
from featcache.datasets import load_fashion_mnist
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.model_selection import StratifiedKFold
from cleanlab.filter import find_label_issues
from cleanlab.count import num_label_issues

cache = featcache.open_cache(sys.argv[1])
ids = cache.ids(); lab = cache.labels()
_, true, _ = load_fashion_mnist("train")
keep = np.array([bool(re.search(r"/fm\d+\.png$", i)) for i in ids]) & (lab >= 0)
rows = np.flatnonzero(keep)
X = np.asarray(cache.read_rows(rows).features, np.float32).reshape(len(rows), -1)
X /= np.linalg.norm(X, axis=1, keepdims=True)
y = lab[rows].astype(int)
t = np.array([true[int(re.search(r"fm(\d+)", ids[r]).group(1))] for r in rows])
# class indices: folder c{k} -> label index via class_name
names = [cache.class_name(int(v)) for v in y]
y = np.array([int(n[1:]) for n in names])
noisy = y != t
print("rows", len(rows), "noisy", noisy.sum(), flush=True)
skf = StratifiedKFold(5, shuffle=True, random_state=0)

def oof(make, yy):
    P = np.zeros((len(yy), 10))
    for f, h in skf.split(X, yy):
        m = make().fit(X[f], yy[f]); P[h] = m.predict_proba(X[h])
    return P

def ev(name, P, yy, nz):
    ll = -np.log(np.clip(P[np.arange(len(yy)), yy], 1e-12, 1)).mean()
    out = {"acc": round(float((P.argmax(1) == yy).mean()), 3), "ll": round(float(ll), 3)}
    for fb in ["prune_by_noise_rate", "both", "confident_learning", "low_self_confidence", "low_normalized_margin"]:
        fl = find_label_issues(yy, P, filter_by=fb)
        tp = (fl & nz).sum()
        out[fb] = (int(fl.sum()), round(tp / max(1, fl.sum()), 3), round(tp / max(1, nz.sum()), 3))
    for em in ["off_diagonal_calibrated", "off_diagonal_custom"]:
        try:
            n = num_label_issues(yy, P, estimation_method=em)
            sc = P[np.arange(len(yy)), yy]
            fl = np.zeros(len(yy), bool); fl[np.argsort(sc)[:n]] = True
            tp = (fl & nz).sum()
            out["rank_"+em] = (int(n), round(tp / max(1, n), 3), round(tp / max(1, nz.sum()), 3))
        except Exception as e:
            out["rank_"+em] = str(e)[:60]
    print(name, json.dumps(out), flush=True)

res = {}
for C in [0.3, 1, 3, 10]:
    t0 = time.time()
    P = oof(lambda: LogisticRegression(C=C, max_iter=500), y); res[f"lr{C}"] = P
    ev(f"logreg C={C} ({time.time()-t0:.0f}s)", P, y, noisy)
for k in [10, 30]:
    P = oof(lambda: KNeighborsClassifier(k, metric="cosine", weights="distance"), y); res[f"knn{k}"] = P
    ev(f"knn k={k}", P, y, noisy)
best = min([k for k in res if k.startswith("lr")], key=lambda k: -np.log(np.clip(res[k][np.arange(len(y)), y],1e-12,1)).mean())
ev(f"ens {best}+knn30", (res[best] + res["knn30"]) / 2, y, noisy)
# noise-free: same features, true labels
P0 = oof(lambda: LogisticRegression(C=float(best[2:]), max_iter=500), t)
for fb in ["prune_by_noise_rate", "low_self_confidence"]:
    fl = find_label_issues(t, P0, filter_by=fb); print("noise-free", best, fb, "flags", int(fl.sum()), "of", len(t))
