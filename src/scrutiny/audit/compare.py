"""Audits compared on equal terms: a leaderboard from their ``result.json`` files.

:func:`compare` reads audits written by :func:`~scrutiny.audit.write_report` (``scrutiny
audit --out DIR``) and ranks them RobustBench-style by the headline robust accuracy: the
worst case over the curve's attacks and the headline attack at the reference eps. An
audit whose data, norm or reference eps differ from the terms most audits share is still
listed, after the ranked ones and without a rank, with the reason it is not comparable;
differences that leave the numbers comparable but less so (other samples, another attack
set) are listed as caveats.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scrutiny.errors import InputError

__all__ = ["Entry", "Leaderboard", "compare", "find_audits", "load_entry", "render_html",
           "write_html"]


@dataclass
class Entry:
    """One audit in the leaderboard.

    Attributes
    ----------
    path : str
        The audit's folder (as given, or relative to the folder searched).
    model, dataset, norm : str
    eps : list of float
        The robustness curve's radii.
    reference_eps : float
        The eps of the headline number.
    n_samples, seed : int
    clean_accuracy : float
    robust : dict of str to float
        Worst-case robust accuracy at each eps of the curve (keys ``f"{eps:g}"``).
    headline : float or None
        Robust accuracy at the reference eps (worst case over every attack that ran there).
    attack_set : str
        What the headline number is the worst case over.
    certified : float or None
        Certified accuracy at the reference eps, on ``certified_samples`` samples.
    certifier : str or None
    certified_samples : int
    flags : list of str
        The checks the audit raised (model probe, gradient masking, explanations): the
        verdict's flags when the audit has a verdict (they include the explainers' trust
        flags), else those of ``result.json``'s ``flags``.
    trust : dict
        ``{explainer: {metric: value}}`` of the audit's trust scores.
    report : str or None
        The absolute path of the audit's ``report.html`` (beside its ``result.json``).
    rank : int or None
        1 for the most robust comparable audit; None when not comparable.
    comparable : bool
    reason : str
        Why it is not comparable (empty when it is).
    caveats : list of str
        Differences that keep it comparable (sample count, seed, attack set).
    """

    path: str
    model: str
    dataset: str
    norm: str
    eps: list[float]
    reference_eps: float
    n_samples: int
    seed: int
    clean_accuracy: float
    robust: dict[str, float]
    headline: float | None
    attack_set: str
    certified: float | None = None
    certifier: str | None = None
    certified_samples: int = 0
    flags: list[str] = field(default_factory=list)
    trust: dict[str, dict[str, float | None]] = field(default_factory=dict)
    report: str | None = None
    rank: int | None = None
    comparable: bool = True
    reason: str = ""
    caveats: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        head = "n/a" if self.headline is None else f"{self.headline:.1%}"
        return (f"Entry({self.model!r} on {self.dataset}, {self.norm} eps={self.reference_eps:g}: "
                f"robust {head}, rank {self.rank})")


@dataclass
class Leaderboard:
    """Audits ranked by their headline robust accuracy.

    Attributes
    ----------
    entries : list of Entry
        Ranked (comparable) entries first, most robust first; then the others.
    dataset, norm : str
        The terms of the comparison: those most audits share (ties: the first audit's).
    reference_eps : float
    eps : list of float
        Every eps of any comparable audit's curve (the table's columns).
    """

    entries: list[Entry]
    dataset: str
    norm: str
    reference_eps: float
    eps: list[float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``scrutiny compare --json``)."""
        return {"dataset": self.dataset, "norm": self.norm, "reference_eps": self.reference_eps,
                "eps": self.eps, "entries": [asdict(e) for e in self.entries]}

    def __repr__(self) -> str:
        return (f"Leaderboard({len(self.entries)} audits on {self.dataset}, {self.norm} "
                f"eps={self.reference_eps:g}, {sum(e.comparable for e in self.entries)} "
                "comparable)")


def _key(eps: float) -> str:
    return f"{float(eps):g}"


def _flags(r: dict) -> list[str]:
    """The checks an audit's ``result.json`` raised: its verdict's flags, else its ``flags``."""
    items = (r.get("verdict") or {}).get("items")
    if items is not None:
        return [it["check"] for it in items if it.get("kind") == "flag"]
    return [f["check"] for f in r.get("flags", []) if f.get("flagged")]


def load_entry(path: str | Path, *, label: str | None = None) -> Entry:
    """The leaderboard entry of one audit: its folder or its ``result.json``.

    ``label`` names it in the table (default the path as given).
    """
    p = Path(path)
    file = p / "result.json" if p.is_dir() else p
    if not file.is_file():
        raise InputError(f"{path}: no result.json there (give a folder written by "
                         "'scrutiny audit --out')")
    try:
        r = json.loads(file.read_text(encoding="utf-8"))
        cfg = r["config"]
        rows = r.get("robustness", {}).get("worst case", [])
        head = r.get("headline") or {}
        robust = {_key(row["eps"]): row["robust_accuracy"] for row in rows}
        ref = float(head.get("eps", cfg.get("reference_eps")))
        certified, certifier, n_cert = None, None, 0
        cert = r.get("certification") or {}
        for row in cert.get("rows", []):
            if _key(row["eps"]) == _key(ref):
                certified, certifier, n_cert = (row["certified_accuracy"], cert.get("certifier"),
                                                int(cert.get("n", 0)))
        trust = {exp: {m: s.get("value") if isinstance(s, dict) else s for m, s in sc.items()}
                 for exp, sc in (r.get("trust") or {}).items()}
        entry = Entry(
            path=label if label is not None else str(path), model=r["model"],
            dataset=r["dataset"], norm=str(head.get("norm", cfg["norm"])),
            eps=[float(e) for e in cfg.get("eps") or [row["eps"] for row in rows]],
            reference_eps=ref, n_samples=int(r["n_samples"]), seed=int(cfg.get("seed", 0)),
            clean_accuracy=float(r["clean_accuracy"]), robust=robust,
            headline=head.get("robust_accuracy"),
            attack_set=str(head.get("attack", "worst case over " + ", ".join(cfg["attacks"]))),
            certified=certified, certifier=certifier, certified_samples=n_cert,
            flags=_flags(r), trust=trust)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{file} is not an audit's result.json: {type(e).__name__} {e}") from e
    if (file.parent / "report.html").is_file():
        entry.report = str((file.parent / "report.html").resolve())
    return entry


def find_audits(root: str | Path, *, max_depth: int = 4) -> list[Path]:
    """Folders under ``root`` (``root`` included) that hold an audit's ``result.json``, sorted;
    hidden folders (``.audit-state``) and symbolic links are not entered."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder")
    found = []
    base = len(root.parts)
    for here, dirs, files in os.walk(root):
        depth = len(Path(here).parts) - base
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and depth < max_depth
                         and not (Path(here) / d).is_symlink())
        if "result.json" in files:
            found.append(Path(here))
    return sorted(found)


def compare(paths: list[str | Path] | tuple[str | Path, ...], *,
            root: str | Path | None = None) -> Leaderboard:
    """Rank the audits at ``paths`` (audit folders, their ``result.json``, or folders holding
    audits) by their headline robust accuracy.

    Parameters
    ----------
    paths : list of str or Path
    root : str or Path, optional
        Entries are named by their path relative to ``root`` (:func:`serve` links them).

    Returns
    -------
    Leaderboard
        The comparable audits (same data, norm and reference eps as most audits) ranked by
        robust accuracy at the reference eps, ties by clean accuracy; then the others, each
        with the reason it is not comparable.

    Examples
    --------
    >>> import tempfile
    >>> from scrutiny.audit import AuditConfig, run_audit, write_report
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.models import pretrained
    >>> folder, data = tempfile.mkdtemp(), load_digits(split="test")
    >>> cfg = AuditConfig(n_samples=32, eps=(0.0, 0.1), sections=("robustness",))
    >>> for name in ("digits-cnn", "digits-cnn-pgd"):
    ...     res = run_audit(pretrained(name, progress=False), data, cfg, progress=False)
    ...     _ = write_report(res, f"{folder}/{name}")
    >>> board = compare([folder])
    >>> [e.model for e in board.entries], [e.rank for e in board.entries]
    (['digits-cnn-pgd', 'digits-cnn'], [1, 2])
    """
    if not paths:
        raise InputError("compare needs at least one audit folder")
    entries = []
    for p in paths:
        q = Path(p)
        folders = [q] if not q.is_dir() or (q / "result.json").is_file() else find_audits(q)
        if not folders:
            raise InputError(f"{p}: no audit (result.json) in this folder or below it")
        for f in folders:
            label = (os.path.relpath(f, root) if root is not None else
                     str(f) if f == q else os.path.join(str(p), os.path.relpath(f, q)))
            entries.append(load_entry(f, label=label))
    terms = Counter((e.dataset, e.norm, _key(e.reference_eps)) for e in entries)
    best = max(terms.values())
    dataset, norm, ref = next(t for t in ((e.dataset, e.norm, _key(e.reference_eps))
                                          for e in entries) if terms[t] == best)
    first = next(e for e in entries if (e.dataset, e.norm, _key(e.reference_eps))
                 == (dataset, norm, ref))
    for e in entries:
        why = []
        if e.dataset != dataset:
            why.append(f"data {e.dataset}, not {dataset}")
        if e.norm != norm:
            why.append(f"norm {e.norm}, not {norm}")
        if _key(e.reference_eps) != ref:
            why.append(f"reference eps {e.reference_eps:g}, not {ref}")
        if e.headline is None:
            why.append("no headline robust accuracy (the robustness section did not run)")
        e.comparable, e.reason = not why, "; ".join(why)
        if not e.comparable:
            continue
        if (e.n_samples, e.seed) != (first.n_samples, first.seed):
            e.caveats.append(f"{e.n_samples} samples with seed {e.seed}, not "
                             f"{first.n_samples} with seed {first.seed}")
        if e.attack_set != first.attack_set:
            e.caveats.append(f"headline over another attack set ({e.attack_set})")
    ranked = sorted((e for e in entries if e.comparable),
                    key=lambda e: (-e.headline, -e.clean_accuracy))
    for i, e in enumerate(ranked):
        e.rank = i + 1
    others = sorted((e for e in entries if not e.comparable),
                    key=lambda e: (-(e.headline if e.headline is not None else -1.0),
                                   -e.clean_accuracy))
    eps = sorted({x for e in ranked for x in e.eps})
    return Leaderboard(entries=ranked + others, dataset=dataset, norm=norm,
                       reference_eps=float(ref), eps=eps)


def render_html(board: Leaderboard, *, base: str | Path = ".",
                title: str = "scrutiny compare") -> str:
    """The leaderboard as one self-contained HTML page (a table sortable by any column), each
    audit linking to its report by a URL relative to the folder ``base`` the page is in."""
    from scrutiny import __version__
    from scrutiny.audit.report import _ENV

    def link(e: Entry) -> str | None:
        if e.report is None:
            return None
        rel = os.path.relpath(e.report, Path(base).resolve())
        return urllib.parse.quote(Path(rel).as_posix())

    metrics = sorted({m for e in board.entries for sc in e.trust.values() for m in sc})
    return _ENV.get_template("compare.html").render(b=board, title=title, version=__version__,
                                                    key=_key, metrics=metrics, link=link)


def write_html(board: Leaderboard, path: str | Path) -> Path:
    """Write :func:`render_html` to ``path`` (a temporary name renamed into place); its links
    to the reports are relative to the page's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_html(board, base=path.parent), encoding="utf-8")
    tmp.replace(path)
    return path
