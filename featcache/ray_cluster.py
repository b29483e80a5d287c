"""Joining or starting Ray: shared by the Ray engine and the benchmark's Ray backend."""

from __future__ import annotations

import os

from .errors import FeatcacheError

INSTALL_HINT = "the ray engine needs Ray: pip install 'featcache[ray]'"


def import_ray():
    """``ray``, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise FeatcacheError(INSTALL_HINT) from None
    return ray


def connect(address: str | None = None) -> bool:
    """Join the cluster at ``address`` (or start a local instance); True when this call started Ray."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    env = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    if "KERAS_BACKEND" in os.environ:
        env["KERAS_BACKEND"] = os.environ["KERAS_BACKEND"]
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env}, logging_level="ERROR")
    except ConnectionError as exc:
        raise FeatcacheError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    return True
