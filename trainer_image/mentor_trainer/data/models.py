"""Model directories from URIs (file://, pvc://, s3://, hf://) for the models the data stage runs.

Unlike the tokenizer (whose weights are never needed), embedding and scoring models are
fetched whole: s3:// prefixes are copied into a local temporary directory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .. import storage
from ..errors import StageError


def fetch_model(uri: str, purpose: str, workdir: str | None = None) -> str:
    """A local directory (or an ``hf://`` hub id) holding the model at ``uri``.

    ``purpose`` names the config field in error messages (e.g. ``index.embeddingModel``)."""
    scheme = uri.partition("://")[0]
    if scheme in ("file", "pvc"):
        path = storage.local_path(uri)
        if not path.exists():
            raise StageError(f"{purpose}: model {uri} does not exist ({path})")
        return str(path if path.is_dir() else path.parent)
    if scheme == "s3":
        target = Path(tempfile.mkdtemp(prefix="mentor-model-", dir=workdir))
        storage.download(uri, target)
        if not any(target.iterdir()):
            raise StageError(f"{purpose}: model {uri} holds no files")
        return str(target)
    if scheme == "hf":
        return uri[len("hf://") :]
    raise StageError(f"{purpose}: model {uri}: the data stage reads models from file://, pvc://, s3:// or hf:// URIs")


def torch_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        return "cpu"
