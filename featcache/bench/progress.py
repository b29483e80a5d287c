"""How far a head's process has got, in a file its parent quotes should the head run out of time."""

from __future__ import annotations

import contextlib
import os
import threading

#: in a head's process: the file where it says how far it has got (a timed-out row quotes it); None elsewhere
PROGRESS_FILE: str | None = None
_LOCK = threading.Lock()


def progress(text: str) -> None:
    """Say how far this head's process has got, for its row should it run out of time (nothing outside one)."""
    if PROGRESS_FILE is None:
        return
    with _LOCK, contextlib.suppress(OSError):  # a grid's threads report too
        with open(PROGRESS_FILE + ".part", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(PROGRESS_FILE + ".part", PROGRESS_FILE)


def epoch_progress(what: str):
    """A Keras callback that reports each finished epoch through :func:`progress`."""
    import keras  # Keras is heavy: imported only by a Keras head's process

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            progress(f"{what}: {epoch + 1} epochs done")

    return EpochProgress()
