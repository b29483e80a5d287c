"""The cache key: canonical JSON of the parameters and the dataset, and what makes two keys differ."""

from __future__ import annotations

import hashlib
import json


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def cache_key(params: dict, fingerprint: str) -> str:
    """sha256 over the canonical parameter set and the dataset fingerprint."""
    return hashlib.sha256(canonical_json({"params": params, "dataset": fingerprint}).encode()).hexdigest()


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def key_differences(old_manifest: dict, params: dict, fingerprint: str) -> dict:
    """{parameter: (old, new)} for everything that makes two cache keys differ."""
    old = _flatten(old_manifest.get("params", {}))
    new = _flatten(params)
    diffs = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    old_fp = old_manifest.get("dataset", {}).get("fingerprint")
    if old_fp != fingerprint:
        diffs["dataset"] = (f"fingerprint {str(old_fp)[:12]}", f"fingerprint {fingerprint[:12]} (images changed)")
    return diffs
