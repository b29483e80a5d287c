#!/usr/bin/env bash
# Make Fashion-MNIST available offline, the way featcache looks for it:
# Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist) where apt
# and root are available, else the Keras cache via keras.datasets' download.
set -euo pipefail
DEB=/usr/share/datasets/fashion-mnist
if [ -f "$DEB/t10k-images-idx3-ubyte.gz" ]; then
    echo "Fashion-MNIST: $DEB"; exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
        || true
fi
if [ -f "$DEB/t10k-images-idx3-ubyte.gz" ]; then
    echo "Fashion-MNIST: $DEB (installed dataset-fashion-mnist)"; exit 0
fi
PY=${PYTHON:-python3}
echo "Fashion-MNIST: no Debian package here; downloading through keras.datasets into ~/.keras/datasets"
"$PY" -c "import keras; keras.datasets.fashion_mnist.load_data()"
