"""Where featcache and Keras keep files between runs: one declaration of each location.

* ``featcache_home()``: ``$FEATCACHE_HOME``, else ``~/.cache/featcache``
  (converted weights, OpenVINO IRs, prediction caches). Everything there is
  a derived cache, rebuilt from its sources when it is missing; the
  converted weights and IRs are checked against a record of their sha256s
  before each use (:mod:`featcache.derived`);
* ``keras_home()``: ``$KERAS_HOME``, else ``~/.keras`` (Keras' downloaded
  weights and datasets, which featcache reads when they are already there).

A leaf module: it imports nothing of featcache's.
"""

from __future__ import annotations

import os
from pathlib import Path


def featcache_home() -> Path:
    return Path(os.environ.get("FEATCACHE_HOME", Path.home() / ".cache" / "featcache"))


def keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
