"""Finished audit sections on disk, so that a killed audit resumes where it stopped.

Each section's result is written as ``<name>-<key>.json`` (numbers, notes,
flags, figures with their PNG as base64) and ``<name>-<key>.safetensors`` (its
per-sample tensors), where ``key`` hashes everything the result depends on: the
model's weights, the audited samples, the configuration, scrutiny's version, the
section's code and the keys of the sections it reads. Writes go to a temporary
file renamed into place, the JSON last, so a file under a finished name is always
complete; never pickle.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from scrutiny.audit.checks import Flag
from scrutiny.audit.context import Figure, SectionResult


def section_key(section: type, context_key: str, upstream: list[str]) -> str:
    """The cache key of a section's result (see the module docstring)."""
    from scrutiny import __version__

    try:
        code = inspect.getsource(inspect.getmodule(section))
    except (OSError, TypeError):  # no source (frozen): the version alone
        code = ""
    blob = "|".join([context_key, __version__, section.name,
                     hashlib.sha256(code.encode()).hexdigest(), *upstream])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


class SectionStore:
    """Section results under ``directory`` (created on the first save)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _paths(self, name: str, key: str) -> tuple[Path, Path]:
        stem = self.directory / f"{name}-{key}"
        return stem.with_suffix(".json"), stem.with_suffix(".safetensors")

    def load(self, name: str, key: str) -> SectionResult | None:
        """The saved result, or None when absent or unreadable (then it is recomputed)."""
        meta_path, tensor_path = self._paths(name, key)
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(tensor_path)) if meta.get("has_tensors") else {}
            return SectionResult(
                name=name, data=meta["data"], notes=meta["notes"], seconds=meta["seconds"],
                flags=[Flag(**f) for f in meta["flags"]],
                figures=[Figure(f["name"], f["title"], f["caption"], base64.b64decode(f["png"]),
                                f["data"]) for f in meta["figures"]],
                tensors=tensors, resumed=True)
        except Exception as e:  # a damaged file is not a reason to stop: recompute
            warnings.warn(f"ignoring the unreadable saved audit section {meta_path}: {e}",
                          stacklevel=2)
            return None

    def save(self, result: SectionResult, key: str) -> None:
        """Write ``result`` atomically (tensors first, then the JSON that marks it finished)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        meta_path, tensor_path = self._paths(result.name, key)
        tensors = {k: v.detach().cpu().contiguous() for k, v in result.tensors.items()}
        if tensors:
            _atomic_write(tensor_path, lambda p: save_file(tensors, str(p)))
        meta = {"data": result.data, "notes": result.notes, "seconds": result.seconds,
                "flags": [asdict(f) for f in result.flags], "has_tensors": bool(tensors),
                "figures": [{"name": f.name, "title": f.title, "caption": f.caption,
                             "png": base64.b64encode(f.png).decode(), "data": f.data}
                            for f in result.figures]}
        text = json.dumps(meta, default=_json_default)
        _atomic_write(meta_path, lambda p: p.write_text(text))


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)
