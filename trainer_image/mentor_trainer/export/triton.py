"""A Triton Inference Server model repository for an exported HF model (``runtime: triton``).

:func:`write_repository` lays out::

    <repo_dir>/<model_name>/config.pbtxt   python backend, dynamic batching, CPU/GPU instances
    <repo_dir>/<model_name>/1/model.py     the TritonPythonModel (``triton_model.py.jinja`` beside this file)
    <repo_dir>/<model_name>/1/model/       the exported HF directory, copied

The model's I/O is the one the ``mentor`` runtime serves too, so one ``tritonclient`` call
works against both: ``text_input`` (BYTES, one prompt per row; the model applies the chat
template), optional ``max_tokens`` (INT32) and ``temperature`` (FP32) per row, and
``text_output`` (BYTES, the new text only). Without ``temperature`` (or with 0) generation is
greedy; the defaults come from the config's ``parameters``.

Light: the stdlib only (the model file runs inside Triton's python backend, not here).
"""

from __future__ import annotations

import shutil
from pathlib import Path

# the python backend's model file, shipped as package data and copied verbatim
MODEL_FILE = Path(__file__).with_name("triton_model.py.jinja")
HF_SUBDIR = "model"  # 1/model/: where model.py looks for the HF directory


def render_config(
    *,
    model_name: str,
    max_batch_size: int,
    max_wait_ms: int,
    gpus: int,
    max_new_tokens: int,
    temperature: float | None,
) -> str:
    """The text of ``config.pbtxt`` (protobuf text format of Triton's ``ModelConfig``)."""
    if not model_name or "/" in model_name or model_name in (".", ".."):
        raise ValueError(f"invalid Triton model name {model_name!r}")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if max_wait_ms < 0:
        raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0, got {gpus}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature is not None and temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")

    if gpus > 0:
        # one instance per GPU the deployment asks for
        instances = (
            "instance_group [\n"
            f"  {{ count: 1, kind: KIND_GPU, gpus: [ {', '.join(str(i) for i in range(gpus))} ] }}\n"
            "]\n"
        )
    else:
        instances = "instance_group [\n  { count: 1, kind: KIND_CPU }\n]\n"

    parameters = [("max_new_tokens", str(int(max_new_tokens)))]
    if temperature is not None:
        parameters.append(("temperature", repr(float(temperature))))
    params_text = "".join(
        f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n' for key, value in parameters
    )
    return (
        f'name: "{model_name}"\n'
        'backend: "python"\n'
        f"max_batch_size: {int(max_batch_size)}\n"
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {int(max_wait_ms) * 1000}\n"
        "}\n"
        "input [\n"
        '  { name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] },\n'
        '  { name: "max_tokens", data_type: TYPE_INT32, dims: [ 1 ], optional: true },\n'
        '  { name: "temperature", data_type: TYPE_FP32, dims: [ 1 ], optional: true }\n'
        "]\n"
        "output [\n"
        '  { name: "text_output", data_type: TYPE_STRING, dims: [ 1 ] }\n'
        "]\n" + instances + params_text
    )


def write_repository(
    model_dir: Path,
    repo_dir: Path,
    *,
    model_name: str,
    max_batch_size: int,
    max_wait_ms: int,
    gpus: int,
    max_new_tokens: int,
    temperature: float | None,
) -> None:
    """Write a Triton python-backend model repository serving the HF directory ``model_dir``."""
    model_dir, repo_dir = Path(model_dir), Path(repo_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    config = render_config(
        model_name=model_name,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        gpus=gpus,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
    )
    model_root = repo_dir / model_name
    version = model_root / "1"
    target = version / HF_SUBDIR
    if target.exists():
        shutil.rmtree(target)
    version.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_dir, target)
    shutil.copyfile(MODEL_FILE, version / "model.py")
    (model_root / "config.pbtxt").write_text(config, encoding="utf-8")
