"""featcache: run a frozen CNN over your images once, then iterate classifier heads in seconds.

Stage one (expensive): :func:`extract` turns images into features in resumable,
keyed HDF5 shards. :func:`open_cache` reads them back. Importing featcache
does not import Keras or TensorFlow; they load when a model is built.
"""

__version__ = "0.1.0"

from .plan import DEFAULT_BACKBONE, ExtractOptions  # noqa: E402
from .runner import extract  # noqa: E402
from .errors import FeatcacheError  # noqa: E402
from .sources import ArraySource, CsvSource, FolderSource, open_source  # noqa: E402
from .store import Cache, attach_targets, compact, open_cache, remove_targets, split_masks  # noqa: E402
from .adapters import keras_dataset, tf_dataset  # noqa: E402
from .feature_export import export_features, load_features  # noqa: E402
from .train import TrainResult, train  # noqa: E402
from .predict import predict  # noqa: E402
from .model_export import export, export_info  # noqa: E402
from .finetune import finetune  # noqa: E402
from .heads import make_head  # noqa: E402
from .bench import bench  # noqa: E402
from .inspect import inspect  # noqa: E402
from .similar import similar  # noqa: E402

__all__ = [
    "ArraySource", "Cache", "CsvSource", "DEFAULT_BACKBONE", "ExtractOptions", "FeatcacheError", "FolderSource",
    "TrainResult", "__version__", "attach_targets", "bench", "compact", "export", "export_features", "export_info", "extract",
    "finetune", "inspect", "keras_dataset", "load_features", "make_head", "open_cache", "open_source", "predict",
    "remove_targets", "similar", "split_masks", "tf_dataset", "train",
]
