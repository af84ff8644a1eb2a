"""Finished audit sections on disk, so that a killed audit resumes where it stopped.

Each section's result is written as ``<name>-<key>.json`` (numbers, notes,
flags, figures with their PNG as base64) and ``<name>-<key>.safetensors`` (its
per-sample tensors), where ``key`` hashes everything the result depends on: the
model's weights, the audited samples, the configuration, scrutiny's version, the
section's code and the keys of the sections it reads. Writes go to a temporary
file renamed into place, the JSON last, so a file under a finished name is always
complete; never pickle.

A long section also saves its finished units of work (chunks of samples) through
a :class:`PartialStore` as ``<name>-<key>.part-<unit>.safetensors``, so that a kill
loses at most one unit; they are removed once the section's result is saved.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import os
import re
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from scrutiny.audit.checks import Flag
from scrutiny.audit.context import Figure, SectionResult
from scrutiny.errors import InputError


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
                                f["data"], f.get("plotly")) for f in meta["figures"]],
                tensors=tensors, resumed=True)
        except Exception as e:  # a damaged file is not a reason to stop: recompute
            warnings.warn(f"ignoring the unreadable saved audit section {meta_path}: {e}",
                          stacklevel=2)
            return None

    def partial(self, name: str, key: str) -> PartialStore:
        """Where the section ``name`` under ``key`` saves its finished units of work."""
        return PartialStore(self.directory, f"{name}-{key}")

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
                             "png": base64.b64encode(f.png).decode(), "data": f.data,
                             "plotly": f.plotly}
                            for f in result.figures]}
        text = json.dumps(meta, default=_json_default)
        _atomic_write(meta_path, lambda p: p.write_text(text))


class PartialStore:
    """The finished units of work of one running section, so that it resumes mid-way.

    A section that works in units (chunks of samples) asks :meth:`load` for each
    unit and computes only those it does not get, saving each with :meth:`save`
    as soon as it is done: a kill loses at most the unit in progress. The runner
    gives every section one (``section.partial``) keyed like its result, so a
    unit saved under other inputs or code is never read; without a state
    directory it keeps nothing. Units are dicts of tensors (safetensors, written
    atomically); their names are short words (``"chunk3"``).

    Examples
    --------
    >>> import torch, tempfile
    >>> store = PartialStore(tempfile.mkdtemp(), "certification-0123")
    >>> store.load("chunk0") is None
    True
    >>> store.save("chunk0", {"certified": torch.tensor([True, False])})
    >>> store.load("chunk0")["certified"].tolist()
    [True, False]
    >>> store.clear(); store.load("chunk0") is None
    True
    >>> PartialStore().save("chunk0", {}); PartialStore().load("chunk0") is None  # nowhere
    True
    """

    def __init__(self, directory: str | Path | None = None, stem: str = "") -> None:
        self.directory = None if directory is None else Path(directory)
        self.stem = stem

    def _path(self, unit: str) -> Path | None:
        if not re.fullmatch(r"[A-Za-z0-9_]+", unit):
            raise InputError(f"a unit's name is letters, digits and _, got {unit!r}")
        if self.directory is None:
            return None
        return self.directory / f"{self.stem}.part-{unit}.safetensors"

    def load(self, unit: str) -> dict[str, torch.Tensor] | None:
        """The saved unit, or None when absent or unreadable (then it is recomputed)."""
        path = self._path(unit)
        if path is None or not path.is_file():
            return None
        try:
            return load_file(str(path))
        except Exception as e:  # a damaged file is not a reason to stop: recompute
            warnings.warn(f"ignoring the unreadable saved audit unit {path}: {e}", stacklevel=2)
            return None

    def save(self, unit: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write the unit atomically."""
        path = self._path(unit)
        if path is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        _atomic_write(path, lambda p: save_file(tensors, str(p)))

    def clear(self) -> None:
        """Remove the saved units (once the section's whole result is saved)."""
        if self.directory is not None and self.directory.is_dir():
            for path in self.directory.glob(f"{self.stem}.part-*.safetensors"):
                path.unlink(missing_ok=True)


class ShardStore:
    """The finished shards of a sharded audit (:mod:`scrutiny.audit.shards`), so that a
    killed driver or worker loses only the shards in progress.

    Each shard's section results are saved as the sections' are
    (``<name>@<start>_<stop>-<key>.json`` and ``.safetensors``), then a marker
    ``shard<start>_<stop>-<key>.json`` naming them: a shard is finished when its marker
    is there. ``key`` hashes the keys of the sharded sections (weights, samples,
    configuration, shard size, code), so a shard saved under other inputs is never read.

    Examples
    --------
    >>> import tempfile
    >>> store = ShardStore(tempfile.mkdtemp(), "0123")
    >>> store.save(0, 8, {"robustness": SectionResult("robustness", data={"n": 8})})
    >>> store.load(0, 8)["robustness"].data, store.load(8, 16)
    ({'n': 8}, None)
    >>> store.clear(); store.load(0, 8) is None
    True
    """

    def __init__(self, directory: str | Path, key: str) -> None:
        self.sections = SectionStore(directory)
        self.key = key

    def _marker(self, start: int, stop: int) -> Path:
        return self.sections.directory / f"shard{int(start)}_{int(stop)}-{self.key}.json"

    def load(self, start: int, stop: int) -> dict[str, SectionResult] | None:
        """The finished shard ``[start, stop)``'s results by section, or None (then it runs)."""
        marker = self._marker(start, stop)
        if not marker.is_file():
            return None
        try:
            names = json.loads(marker.read_text())["sections"]
        except Exception as e:  # a damaged file is not a reason to stop: recompute
            warnings.warn(f"ignoring the unreadable saved audit shard {marker}: {e}", stacklevel=2)
            return None
        out = {}
        for name in names:
            got = self.sections.load(f"{name}@{int(start)}_{int(stop)}", self.key)
            if got is None:
                return None
            got.name = name
            out[name] = got
        return out

    def save(self, start: int, stop: int, results: dict[str, SectionResult]) -> None:
        """Write the shard's results, then its marker."""
        for name, result in results.items():
            self.sections.save(replace(result, name=f"{name}@{int(start)}_{int(stop)}"), self.key)
        self.sections.directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"sections": list(results)})
        _atomic_write(self._marker(start, stop), lambda p: p.write_text(text))

    def clear(self) -> None:
        """Remove the saved shards (once the merged sections are saved)."""
        d = self.sections.directory
        if d.is_dir():
            for path in [*d.glob(f"shard*-{self.key}.json"), *d.glob(f"*@*-{self.key}.*")]:
                path.unlink(missing_ok=True)


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)
