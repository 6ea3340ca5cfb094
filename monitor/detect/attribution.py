"""Which site, scanner model, software version or vendor drives a drift?

Two bases, chosen by what is given:

Embedding basis (``embeddings_ref`` and ``embeddings_cur`` given). Embeddings are standardised
by the reference mean and per-dimension standard deviation, so the window's drift is the
vector ``D`` = mean of the current standardised embeddings. For one value g of a field, with
shares ``r_g`` (reference) and ``c_g`` (current) and group means ``m_ref_g`` and ``m_cur_g``
(``m_ref_g`` = 0, the reference mean, for a value the reference never had), the shift-share
decomposition

    part_g = c_g * (m_cur_g - m_ref_g) + (c_g - r_g) * m_ref_g,     sum_g part_g = D

splits the drift into what each value's own studies moved and what its change in share
moved. ``explained_share`` = <part_g, D> / |D|² (sums to 1 over a field's values).
``own_drift`` = the root-mean-square per dimension of ``part_g / max(c_g, r_g)`` (how far
each of the group's studies moved the window, in reference standard deviations), minus its
expected value under sampling noise (so a quiet group scores about 0). ``contribution`` =
max(explained_share, 0) * own_drift: large when a value accounts for the drift and moved by
itself. A site that merely contains the moved scanner explains as much as the scanner but
moved less per study, so the scanner ranks above it. Only mean shifts are attributed; drift
purely in spread or shape shows in the explained share weakly.

Composition basis (no embeddings): a metadata drift is attributed by each value's share of
Pearson's X² for the 2×k table of reference against current counts of its field.
``own_drift`` = the value's X² contribution, ``explained_share`` = that over the field's X²,
``contribution`` = the X² contribution over n_reference + n_current (a phi² share,
comparable across fields and windows).

Missing field values form their own group, ``"(missing)"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from monitor.detect.metadata import as_categories
from monitor.errors import ValidationError

MISSING = "(missing)"
DEFAULT_FIELDS = ("site", "scanner_model", "software_version", "vendor")


@dataclass(frozen=True)
class Attribution:
    """How much one value of one field explains the drift between reference and current."""

    field: str
    value: str
    n_reference: int
    n_current: int
    share_reference: float
    share_current: float
    own_drift: float
    contribution: float
    explained_share: float
    basis: Literal["embedding", "composition"]


def _labels(frame: pd.DataFrame, field: str) -> np.ndarray:
    labels = as_categories(frame[field], field=field)
    labels[pd.isna(labels)] = MISSING
    return labels


def _embeddings(array: np.ndarray, n_rows: int, name: str) -> np.ndarray:
    matrix = np.asarray(array, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != n_rows:
        raise ValidationError(
            f"{name} has shape {matrix.shape}; expected ({n_rows}, dimension)", field=name
        )
    return matrix


def attribute(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    embeddings_ref: np.ndarray | None = None,
    embeddings_cur: np.ndarray | None = None,
    fields: Sequence[str] = DEFAULT_FIELDS,
) -> list[Attribution]:
    """Rank every value of every field by how much it explains the drift, largest first
    (the bases are described in the module docstring). Fields absent from either frame are
    skipped."""
    if (embeddings_ref is None) != (embeddings_cur is None):
        raise ValidationError(
            "embeddings_ref and embeddings_cur must be given together", field="embeddings"
        )
    if len(reference) == 0 or len(current) == 0:
        return []
    z_ref = z_cur = None
    if embeddings_ref is not None and embeddings_cur is not None:
        e_ref = _embeddings(embeddings_ref, len(reference), "embeddings_ref")
        e_cur = _embeddings(embeddings_cur, len(current), "embeddings_cur")
        if e_ref.shape[1] != e_cur.shape[1]:
            raise ValidationError(
                f"embeddings_cur has dimension {e_cur.shape[1]}, embeddings_ref {e_ref.shape[1]}",
                field="embeddings_cur",
            )
        centre = e_ref.mean(axis=0)
        spread = e_ref.std(axis=0)
        spread[spread <= 1e-12] = 1.0
        z_ref, z_cur = (e_ref - centre) / spread, (e_cur - centre) / spread
    attributions: list[Attribution] = []
    for field in fields:
        if field not in reference.columns or field not in current.columns:
            continue
        labels_ref, labels_cur = _labels(reference, field), _labels(current, field)
        if z_ref is not None and z_cur is not None:
            attributions.extend(_by_embedding(field, labels_ref, labels_cur, z_ref, z_cur))
        else:
            attributions.extend(_by_composition(field, labels_ref, labels_cur))
    return sorted(attributions, key=lambda a: -a.contribution)


def _by_embedding(
    field: str,
    labels_ref: np.ndarray,
    labels_cur: np.ndarray,
    z_ref: np.ndarray,
    z_cur: np.ndarray,
) -> list[Attribution]:
    n_ref, n_cur, dimension = z_ref.shape[0], z_cur.shape[0], z_ref.shape[1]
    drift = z_cur.mean(axis=0)
    drift_norm2 = float(drift @ drift)
    results = []
    for value in sorted(set(labels_ref) | set(labels_cur)):
        in_ref, in_cur = labels_ref == value, labels_cur == value
        k_ref, k_cur = int(in_ref.sum()), int(in_cur.sum())
        share_ref, share_cur = k_ref / n_ref, k_cur / n_cur
        mean_ref = z_ref[in_ref].mean(axis=0) if k_ref else np.zeros(dimension)
        mean_cur = z_cur[in_cur].mean(axis=0) if k_cur else np.zeros(dimension)
        part = share_cur * (mean_cur - mean_ref) + (share_cur - share_ref) * mean_ref
        explained = float(part @ drift) / drift_norm2 if drift_norm2 > 0 else 0.0
        largest_share = max(share_cur, share_ref)
        per_study = part / largest_share
        # Expected squared norm per dimension of per_study under sampling noise alone.
        noise = 0.0
        if k_cur > 1:
            noise += (share_cur / largest_share) ** 2 * z_cur[in_cur].var(axis=0).mean() / k_cur
        if k_ref > 1:
            noise += (share_ref / largest_share) ** 2 * z_ref[in_ref].var(axis=0).mean() / k_ref
        own_drift = float(np.sqrt(max(0.0, float(per_study @ per_study) / dimension - noise)))
        results.append(
            Attribution(
                field=field,
                value=str(value),
                n_reference=k_ref,
                n_current=k_cur,
                share_reference=share_ref,
                share_current=share_cur,
                own_drift=own_drift,
                contribution=max(explained, 0.0) * own_drift,
                explained_share=explained,
                basis="embedding",
            )
        )
    return results


def _by_composition(
    field: str, labels_ref: np.ndarray, labels_cur: np.ndarray
) -> list[Attribution]:
    n_ref, n_cur = labels_ref.size, labels_cur.size
    values = sorted(set(labels_ref) | set(labels_cur))
    counts_ref = np.array([np.count_nonzero(labels_ref == v) for v in values], dtype=float)
    counts_cur = np.array([np.count_nonzero(labels_cur == v) for v in values], dtype=float)
    n_total = n_ref + n_cur
    pooled = (counts_ref + counts_cur) / n_total
    expected_ref, expected_cur = pooled * n_ref, pooled * n_cur
    chi2 = (counts_ref - expected_ref) ** 2 / expected_ref + (
        counts_cur - expected_cur
    ) ** 2 / expected_cur
    total = float(chi2.sum())
    return [
        Attribution(
            field=field,
            value=str(value),
            n_reference=int(counts_ref[i]),
            n_current=int(counts_cur[i]),
            share_reference=float(counts_ref[i] / n_ref) if n_ref else 0.0,
            share_current=float(counts_cur[i] / n_cur) if n_cur else 0.0,
            own_drift=float(chi2[i]),
            contribution=float(chi2[i] / n_total),
            explained_share=float(chi2[i] / total) if total > 0 else 0.0,
            basis="composition",
        )
        for i, value in enumerate(values)
    ]
