"""Harmfulness directions from activations (method-reference §4, §5.2).

Conventions shared by all babelgate tensor code: `acts` is a float tensor [n, d] (one layer,
last prompt token), `labels` a bool/int tensor [n] with 1 = harmful (the positive class), and
`languages` a list of n language codes. Means are accumulated in float64 and returned as
float32 so results do not depend on the row order or the summation precision of the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from babelgate.errors import DataError

EPS = 1e-8


def all_finite(tensor: torch.Tensor) -> bool:
    """True if no element is NaN or ±inf (fast path: a finite sum implies finite elements)."""
    if bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())


def as_acts(acts: torch.Tensor | np.ndarray, name: str = "acts", ndim: int = 2) -> torch.Tensor:
    """Validate activations ([n, d], or [n, L, d] with ndim=3) and return them as float32 on CPU."""
    tensor = torch.as_tensor(acts)
    if tensor.ndim != ndim:
        raise DataError(f"{name} must have {ndim} dimensions, got shape {tuple(tensor.shape)}")
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)):
        raise DataError(f"{name} must be a float tensor, got {tensor.dtype}")
    tensor = tensor.detach().to("cpu", torch.float32)
    if tensor.shape[0] == 0 or tensor.shape[-1] == 0:
        raise DataError(f"{name} is empty (shape {tuple(tensor.shape)})")
    if not all_finite(tensor):
        bad = int((~torch.isfinite(tensor)).reshape(tensor.shape[0], -1).any(dim=1).sum())
        raise DataError(f"{name} contains NaN or infinite values in {bad} row(s)")
    return tensor


def as_labels(labels: torch.Tensor | np.ndarray | Sequence[int], n: int) -> torch.Tensor:
    """Validate binary labels [n] (1/True = harmful) and return them as a bool tensor."""
    tensor = torch.as_tensor(np.asarray(labels))
    if tensor.ndim != 1 or tensor.shape[0] != n:
        raise DataError(f"labels must have shape [{n}], got {tuple(tensor.shape)}")
    if tensor.dtype != torch.bool:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DataError("labels contain NaN")
        values = set(torch.unique(tensor).tolist())
        if not values <= {0, 1}:
            raise DataError(f"labels must be 0/1 (1 = harmful), got values {sorted(values)}")
        tensor = tensor != 0
    return tensor


def as_languages(languages: Sequence[str], n: int) -> list[str]:
    """Validate a per-row list of language codes of length n."""
    if isinstance(languages, str):
        raise DataError("languages must be a list with one code per row, not a single string")
    langs = list(languages)
    if len(langs) != n:
        raise DataError(f"languages has {len(langs)} entries for {n} rows")
    for code in langs:
        if not isinstance(code, str) or not code:
            raise DataError(f"language codes must be non-empty strings, got {code!r}")
    return langs


def unit(vector: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """L2-normalise a vector [d]; raise if its norm is below `eps` (no direction to speak of)."""
    norm = float(torch.linalg.vector_norm(vector.double()))
    if not np.isfinite(norm) or norm <= eps:
        raise DataError(f"direction has norm {norm:.3g}; harmful and harmless means coincide")
    return (vector.double() / norm).to(torch.float32)


def diff_of_means(
    harmful: torch.Tensor | np.ndarray, harmless: torch.Tensor | np.ndarray, eps: float = EPS
) -> torch.Tensor:
    """Unit difference of means, normalise(mean(harmful [n, d]) - mean(harmless [m, d])) -> [d]."""
    pos = as_acts(harmful, "harmful")
    neg = as_acts(harmless, "harmless")
    if pos.shape[1] != neg.shape[1]:
        raise DataError(f"harmful has d={pos.shape[1]} but harmless has d={neg.shape[1]}")
    gap = pos.double().mean(dim=0) - neg.double().mean(dim=0)
    return unit(gap, eps)


def _class_means(
    x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group class means in float64 with one matmul: x [n, d], y [n] bool, groups [n]
    (ids 0..k-1, −1 = ignore). Returns (harmful means [k, d], harmless means [k, d],
    harmful counts [k], harmless counts [k])."""
    keep = groups >= 0
    slot = torch.where(y, groups, groups + k)  # harmful rows in slots 0..k-1, harmless k..2k-1
    member = torch.zeros(2 * k, x.shape[0], dtype=torch.float64)
    member[slot[keep], torch.nonzero(keep).reshape(-1)] = 1.0
    counts = member.sum(dim=1)
    sums = member @ x.double()
    means = sums / counts.clamp(min=1.0).unsqueeze(1)
    return means[:k], means[k:], counts[:k].long(), counts[k:].long()


def _group_ids(codes: list[str], wanted: list[str]) -> torch.Tensor:
    lookup = {lang: i for i, lang in enumerate(wanted)}
    return torch.tensor([lookup.get(code, -1) for code in codes], dtype=torch.long)


def per_language_directions(
    acts: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    languages: Sequence[str],
    langs: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Unit difference-of-means direction [d] per language (default: every language present).

    Each requested language needs at least one harmful and one harmless row.
    """
    x = as_acts(acts)
    y = as_labels(labels, x.shape[0])
    codes = as_languages(languages, x.shape[0])
    wanted = list(dict.fromkeys(codes)) if langs is None else list(dict.fromkeys(langs))
    if not wanted:
        raise DataError("no languages requested")
    pos, neg, n_pos, n_neg = _class_means(x, y, _group_ids(codes, wanted), len(wanted))
    out: dict[str, torch.Tensor] = {}
    for i, lang in enumerate(wanted):
        if int(n_pos[i]) == 0 or int(n_neg[i]) == 0:
            raise DataError(
                f"language {lang!r} needs harmful and harmless rows; "
                f"got {int(n_pos[i])} harmful, {int(n_neg[i])} harmless"
            )
        out[lang] = unit(pos[i] - neg[i])
    return out


def pooled_direction(
    acts: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    languages: Sequence[str],
    source_langs: Sequence[str],
) -> torch.Tensor:
    """Pooled difference of means v̂ [d] over all rows of the source languages (paper's v_HRL).

    All source harmful rows are pooled against all source harmless rows, so a language with
    more rows weighs more (with the paper's row-parallel data every language weighs the same).
    """
    x = as_acts(acts)
    y = as_labels(labels, x.shape[0])
    codes = as_languages(languages, x.shape[0])
    sources = set(source_langs)
    if not sources:
        raise DataError("no source languages given")
    missing = sorted(sources - set(codes))
    if missing:
        raise DataError(f"source languages without rows: {missing}")
    groups = torch.tensor([0 if code in sources else -1 for code in codes], dtype=torch.long)
    pos, neg, n_pos, n_neg = _class_means(x, y, groups, 1)
    if int(n_pos[0]) == 0 or int(n_neg[0]) == 0:
        raise DataError("source rows need both harmful and harmless examples")
    return unit(pos[0] - neg[0])


def subspace_basis(directions: torch.Tensor | np.ndarray, rank: int) -> torch.Tensor:
    """Orthonormal basis [d, r]: top-r right singular vectors of the stacked directions [k, d].

    The stack is not centred (as in the paper). Each singular vector's sign is fixed so that the
    directions project positively on it on average, making the basis reproducible across
    platforms. Raises if `rank` is not in 1..k or the stack has fewer than `rank` non-zero
    singular values.
    """
    stack = as_acts(directions, "directions")
    k, d = stack.shape
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise DataError(f"rank must be a positive integer, got {rank!r}")
    if rank > k:
        raise DataError(
            f"rank {rank} exceeds the number of directions ({k}); "
            "the subspace can have at most one dimension per source language"
        )
    if rank > d:
        raise DataError(f"rank {rank} exceeds the activation dimension {d}")
    _, sing, vh = torch.linalg.svd(stack.double(), full_matrices=False)
    if float(sing[rank - 1]) <= EPS * max(float(sing[0]), 1.0):
        raise DataError(
            f"the {k} directions span fewer than {rank} dimensions "
            f"(singular values {[round(float(s), 6) for s in sing[: rank + 1]]})"
        )
    basis = vh[:rank].T.contiguous()  # [d, r]
    signs = torch.sign((stack.double() @ basis).sum(dim=0))
    signs[signs == 0] = 1.0
    return (basis * signs).to(torch.float32)


def project(acts: torch.Tensor | np.ndarray, v: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Scalar projections acts [n, d] · v [d] -> [n] (float32; v is used as given)."""
    x = as_acts(acts)
    vec = torch.as_tensor(v).detach().to("cpu", torch.float32)
    if vec.ndim != 1 or vec.shape[0] != x.shape[1]:
        raise DataError(f"direction must have shape [{x.shape[1]}], got {tuple(vec.shape)}")
    return x @ vec
