"""Out-of-memory handled, not fatal: work that runs out of memory retries at a smaller batch.

One helper for every kind of method. :func:`retry_smaller` runs a method's body
and, when it runs out of memory (``torch.OutOfMemoryError``, CUDA's or any
accelerator's, or the CPU allocator's ``RuntimeError: ... can't allocate
memory``), frees the cached memory and runs it again on a copy of the method
whose ``batch_size`` is halved, down to 1; the base classes (``Attack``,
``Explainer``, ``Metric``, ``Certifier``) call their method's body through it.
:func:`chunked` does the same for a forward pass over rows
(:meth:`TorchModel.logits`, a local :class:`QueryModel`): a chunk that runs out
of memory is split in halves. Either says so once, in a
:class:`BatchSizeWarning` naming the method and the batch size that worked.

Retrying restarts the body with torch's RNG seeded as at its start, so a
method whose result does not depend on its ``batch_size`` (every batched
method of scrutiny: the chunks only group independent rows) returns what the
un-split run would have returned.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")

#: Private attribute where a method remembers the batch size that fit, so its next
#: call starts there (no second failure, no second warning).
_FITTED = "_oom_batch_size"


class BatchSizeWarning(UserWarning):
    """A method ran out of memory at its batch size and finished at a smaller one."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is running out of memory: torch's ``OutOfMemoryError`` (CUDA,
    other accelerators) or the CPU allocator's ``RuntimeError`` (``DefaultCPUAllocator:
    can't allocate memory``)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if isinstance(error, oom):
        return True
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in str(error) or "out of memory" in str(error).lower())


def free_memory() -> None:
    """Give back what the failed attempt held to CUDA: its tensors (a garbage collection: the
    failed frames may sit in reference cycles) and the allocator's cached blocks. On the CPU
    the failed attempt's tensors are freed as its frames go (a collection takes about a
    second in a process that imported scrutiny's methods, so none is made)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def _reraise_unless_smaller(error: Exception, size: int, note: str) -> None:
    """In an ``except`` clause: re-raise ``error`` unless it is running out of memory at a
    ``size`` (rows, batch) above 1 that can still be halved; ``note`` is added where it cannot."""
    if not is_out_of_memory(error):
        raise error
    if size <= 1:
        error.add_note(note)
        raise error


def _warn(what: str, first: int, size: int) -> None:
    warnings.warn(f"{what} ran out of memory at batch_size={first}; it finished at "
                  f"batch_size={size}", BatchSizeWarning, stacklevel=4)


def retry_smaller(method: Any, run: Callable[[Any], T], *, seed: int | None = None) -> T:
    """``run(method)``; when it runs out of memory, ``run`` on a copy at half the batch size.

    The copy is ``method`` with ``batch_size`` halved (down to 1); each retry
    first frees the memory of the failed attempt and reseeds torch's RNG with
    ``seed`` (the caller runs inside :func:`scrutiny.base.seeded`, so the
    caller's RNG is untouched). A method without an integer ``batch_size``, or
    one already at 1, re-raises the error (with a note saying so). The batch
    size that fit is remembered on ``method`` (not a hyperparameter:
    :meth:`~scrutiny.base.Method.get_params` is unchanged), so later calls start
    there, and a :class:`BatchSizeWarning` is issued once.

    Examples
    --------
    >>> import warnings
    >>> from scrutiny.explain import Saliency
    >>> def body(m):  # runs out of memory above 2 rows per pass
    ...     if m.batch_size > 2:
    ...         raise torch.OutOfMemoryError("CUDA out of memory")
    ...     return m.batch_size
    >>> sal = Saliency(batch_size=8)
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     retry_smaller(sal, body), retry_smaller(sal, body)
    (2, 2)
    >>> len(w), str(w[0].message)
    (1, 'Saliency ran out of memory at batch_size=8; it finished at batch_size=2')
    >>> sal.batch_size  # the hyperparameter is unchanged
    8
    """
    declared = getattr(method, "batch_size", None)
    if isinstance(declared, bool) or not isinstance(declared, int):
        return run(method)
    size = getattr(method, _FITTED, declared)
    current = method if size == declared else _with_batch_size(method, size)
    while True:
        try:
            out = run(current)
            break
        except Exception as e:
            _reraise_unless_smaller(e, size, f"{type(method).__name__} ran out of memory at "
                                             "batch_size=1")
            del e  # the traceback holds the failed attempt's tensors
            free_memory()
            size = max(1, size // 2)
            current = _with_batch_size(method, size)
            if seed is not None:
                torch.manual_seed(int(seed))
    if size != getattr(method, _FITTED, declared):
        setattr(method, _FITTED, size)
        _warn(type(method).__name__, declared, size)
    return out


def _with_batch_size(method: Any, size: int) -> Any:
    """A shallow copy of ``method`` (bound call-time data and caches shared) at ``size``."""
    import copy

    m = copy.copy(method)
    m.batch_size = size
    return m


def chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int,
            *, what: str) -> torch.Tensor:
    """``torch.cat([fn(x[i:i + b]) ...])`` over chunks of ``batch_size`` rows, split in halves
    (down to one row) where a chunk runs out of memory; ``fn`` must treat rows independently
    (a forward pass). The first split issues one :class:`BatchSizeWarning` naming ``what``.
    ``x`` with no rows gives ``fn(x)``.

    Examples
    --------
    >>> def fn(rows):  # runs out of memory above 3 rows
    ...     if len(rows) > 3:
    ...         raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
    ...     return rows * 2
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     out = chunked(fn, torch.arange(10.0), 8, what="the forward pass")
    >>> out.tolist() == (torch.arange(10.0) * 2).tolist(), str(w[0].message)
    (True, 'the forward pass ran out of memory at batch_size=8; it finished at batch_size=2')
    """
    n = len(x)
    if n == 0:
        return fn(x)
    size = first = min(max(1, int(batch_size)), n)
    outs, start = [], 0
    while start < n:
        try:
            outs.append(fn(x[start:start + size]))
            start += size
        except Exception as e:
            _reraise_unless_smaller(e, size, f"{what} ran out of memory on one row")
            del e
            free_memory()
            size = max(1, min(size, n - start) // 2)
    if size != first:
        _warn(what, first, size)
    return torch.cat(outs)


#: Private attribute where a method without ``batch_size`` remembers the samples per run that fit.
_FITTED_ROWS = "_oom_rows"


def retry_rows(method: Any, run: Callable[[int, int], Any], n: int, *,
               seed: int | None = None) -> Any:
    """``run(0, n)``; when it runs out of memory, ``run`` over chunks of rows, halved down to 1.

    For a method without ``batch_size`` whose work on each sample is
    independent of the others (an attack's ``_run`` on ``x[lo:hi]``): the
    samples are split in halves until every chunk fits. ``run(lo, hi)``
    returns a tensor of ``hi - lo`` rows, or ``(tensor, meta)``; the chunks'
    tensors are concatenated and so are their meta entries that have one row
    per sample; entries equal in every chunk are kept, any other becomes the
    list of the chunks' values. A chunk after the first starts with torch's
    RNG seeded by ``seed + lo`` (a stochastic method's draws then differ from
    the un-split run's; a deterministic method's result is the same). The
    number of samples that fit is remembered on ``method`` and one
    :class:`BatchSizeWarning` says so.
    """
    size = first = min(getattr(method, _FITTED_ROWS, n), n) if n else n
    parts: list[Any] = []
    lo, retried = 0, size < n
    while lo < n or not parts:
        hi = min(n, lo + size)
        if retried and seed is not None:
            torch.manual_seed(int(seed) + lo)
        try:
            parts.append(run(lo, hi))
            lo = hi
        except Exception as e:
            _reraise_unless_smaller(e, hi - lo, f"{type(method).__name__} ran out of memory on "
                                                "one sample")
            del e
            free_memory()
            size, retried = max(1, (hi - lo) // 2), True
    if size < getattr(method, _FITTED_ROWS, n):
        setattr(method, _FITTED_ROWS, size)
        _warn(type(method).__name__, first, size)
    if len(parts) == 1:
        return parts[0]
    return _merge(parts)


def _merge(parts: list[Any]) -> Any:
    """The chunks' outputs as one: tensors concatenated, meta merged (see :func:`retry_rows`)."""
    if not isinstance(parts[0], tuple):
        return torch.cat(parts)
    xs, metas = zip(*parts, strict=True)
    sizes = [len(x) for x in xs]
    meta: dict[str, Any] = {}
    for key in metas[0]:
        vals = [m.get(key) for m in metas]
        if all(isinstance(v, torch.Tensor) and v.dim() and len(v) == k
               for v, k in zip(vals, sizes, strict=True)):
            meta[key] = torch.cat(vals)
        elif all(_same(v, vals[0]) for v in vals):
            meta[key] = vals[0]
        else:
            meta[key] = vals
    return torch.cat(xs), meta


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and bool((a == b).all()))
    try:
        return bool(a == b)
    except Exception:
        return False
