"""Per-study novelty: conformal p-values from nearest-neighbour distances to the reference, each
reference study calibrating against the others (leave-one-out), and a window alarm when more
studies are novel than chance allows."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import betabinom

from monitor.detect._torch import (
    Projection,
    as_embeddings,
    as_groups,
    check_alpha,
    check_optional_components,
    check_positive_int,
    fit_projection,
    keys_or_none,
    require_fitted,
    require_samples,
    resolve_device,
    squared_distances,
)
from monitor.detect.result import DetectionResult
from monitor.errors import InsufficientDataError

_ROWS_PER_CHUNK_ELEMENTS = 16_000_000
# The per-study level never goes below this; smaller references raise it (see ``fit``).
NOVELTY_ALPHA_FLOOR = 0.01
# Fewest calibration units (studies, or patients with ``groups``) ``fit`` accepts.
MIN_CALIBRATION = 20


def default_novelty_alpha(n_calibration: int) -> float:
    """``max(0.01, 2 / (n + 1))``: a conformal p-value over n calibration scores is at least
    1 / (n + 1), so below 199 calibration units 0.01 could never be reached; at 2 / (n + 1) a
    study beyond every calibration score (p = 1 / (n + 1)) is novel."""
    return max(NOVELTY_ALPHA_FLOOR, 2.0 / (n_calibration + 1))


class NoveltyDrift:
    """Flags studies unlike anything in the reference, and windows with too many of them.

    Score: a study's mean distance to its ``k`` nearest reference studies, after a PCA fitted
    at ``test`` on the reference and the window pooled (``pca_components``). Calibration uses
    *every* reference study: each one's calibration score is its leave-one-out score, the mean
    distance to its ``k`` nearest
    *other* reference studies; with ``groups``, studies of its own patient are left out too (a
    repeat study would otherwise find its twin and score artificially small), and one random
    study per patient calibrates. A new study's conformal p-value is
    (1 + #{calibration scores >= score}) / (1 + n_cal); with ``groups`` at ``test`` a study is
    likewise scored against the other patients' reference studies. It is novel when
    p < ``novelty_alpha``, whose default (None) is ``max(0.01, 2 / (n_cal + 1))``, fixed at
    ``fit`` (``novelty_alpha_``): 0.01 from 199 calibration units up, 2 / (n_cal + 1) below,
    so that the smallest possible p-value is novel. ``fit`` needs at least 20 calibration units
    and ``k`` studies outside the largest patient.

    Why the per-study p-value stays valid (P(p <= t) <= t under no shift). Add the new study to
    the reference and score every unit of the augmented set by the same rule (mean distance to
    the ``k`` nearest studies of the other units): a symmetric rule on exchangeable units, so
    the new unit's rank among the n + 1 augmented scores is uniform and the full-conformal
    p-value p* = (1 + #{augmented reference scores >= new score}) / (n + 1) is exactly valid.
    The new study's score is the same in both (its neighbours are the reference); a reference
    study's leave-one-out score only lacks the new study among its candidate neighbours, so it
    is at least its augmented score. Hence p >= p*: valid, conservative by at most the effect of
    one neighbour among n. The PCA is fitted on the reference and the window pooled: a
    function symmetric in the reference studies and the new one (given the window's other
    studies, independent of them under no shift), so the argument holds with it. A PCA fitted
    on the reference alone would not: principal axes capture more of the spread of the studies
    they were fitted on than of a new one, so leave-one-out scores came out too large and the
    test far too conservative (200 reference studies of 64 dimensions: 0.0001 of no-shift
    studies at p <= 0.05).

    Window verdict: given the reference, window studies (or patients) are independent and each
    is novel with the same probability q, the mass of new-study scores above the j-th largest
    calibration score (j - 1 is the most calibration scores a study may lie below and still be
    novel). The count of novel studies is Binomial(n, q) given q, and the window p-value is the
    upper tail of Beta-Binomial(n, j, n_cal + 1 - j) at the observed count; drift when it is
    below ``alpha``. With a held-out calibration split the calibration scores are i.i.d. given
    the fit part and q ~ Beta(j, n_cal + 1 - j) exactly, whatever the score distribution. With
    leave-one-out scores the law of q is that Beta to first order: its mean is at most
    j / (n_cal + 1) (the validity above), and the extra dependence between calibration scores
    that share neighbours is offset by the reference's own randomness entering the calibration
    scores and the new scores alike (a sparse reference region raises both), which a split
    cannot offer. It is not exact; the tests measure the false-alarm rate from 50 to 3,000
    reference studies, with and without repeat studies. A plain Binomial(n, novelty_alpha)
    test would ignore the shared calibration and over-alarm (with 300 calibration studies and
    windows of 300 it alarms at 7 novel studies, which happens in 8.8 % of no-shift windows).

    A second count sharpens the verdict for studies far outside the reference: the studies
    beyond *every* calibration score (p = 1 / (n_cal + 1)), whose null is the same
    Beta-Binomial with j = 1, Beta-Binomial(n, 1, n_cal). Under no shift about n / (n_cal + 1)
    of them are expected (0.2 for a window of 600 against 3,000 calibration patients), so a
    handful of inverted images is decisive there while it hides among the n x novelty_alpha
    studies the first count expects by chance (6 inverted among 577 studies of a day: novel
    count p = 0.01, beyond count p < 1e-5). The window p-value is the smaller of the two,
    referred to its own null law; below 199 calibration units the two counts coincide.

    Repeat studies: with ``groups`` at ``test``, the window count uses one random study per
    patient, since a patient who looks unusual looks unusual in every study; every novel study
    is still listed.

    ``calibration_fraction`` is deprecated and ignored (the reference is no longer split).
    """

    def __init__(
        self,
        *,
        alpha: float = 0.05,
        novelty_alpha: float | None = None,
        k: int = 10,
        calibration_fraction: float | None = None,
        pca_components: int | None = 32,
        seed: int = 0,
        device: str = "auto",
    ):
        if calibration_fraction is not None:
            warnings.warn(
                "NoveltyDrift(calibration_fraction=...) is deprecated and ignored: every "
                "reference study calibrates (leave-one-out)",
                DeprecationWarning,
                stacklevel=2,
            )
        self.alpha = alpha
        self.novelty_alpha = novelty_alpha
        self.k = k
        self.calibration_fraction = calibration_fraction
        self.pca_components = pca_components
        self.seed = seed
        self.device = device

    def fit(self, reference: np.ndarray, *, groups: np.ndarray | None = None) -> NoveltyDrift:
        check_alpha(self.alpha)
        k = check_positive_int(self.k, name="k")
        check_optional_components(self.pca_components)
        reference = as_embeddings(reference, name="reference")
        groups_array = as_groups(groups, name="groups", n=reference.shape[0])
        rng = np.random.default_rng(self.seed)
        if groups_array is None:
            patients, codes = None, np.arange(reference.shape[0])
            calibration_rows = codes
        else:
            patients, codes = np.unique(groups_array, return_inverse=True)
            calibration_rows = _one_per_group(codes, rng)
        n_cal = int(calibration_rows.size)
        unit = "studies" if groups_array is None else "patients"
        if n_cal < MIN_CALIBRATION:
            raise InsufficientDataError(
                f"reference has {n_cal} {unit}; novelty calibration needs at least "
                f"{MIN_CALIBRATION}"
            )
        outside_largest = reference.shape[0] - int(np.bincount(codes).max())
        if outside_largest < k:
            raise InsufficientDataError(
                f"reference has {outside_largest} studies outside its largest patient; "
                f"k={k} nearest neighbours of other patients are needed"
            )
        novelty_alpha = self._novelty_alpha(n_cal)
        most_above = _most_calibration_above(n_cal, novelty_alpha)
        if most_above < 0:
            need = int(np.ceil(1.0 / novelty_alpha))
            raise InsufficientDataError(
                f"reference has {n_cal} calibration {unit}; a conformal p-value below "
                f"novelty_alpha={novelty_alpha} needs at least {need} (or leave novelty_alpha "
                "unset: it then follows the reference size)"
            )

        self.device_ = resolve_device(self.device)
        self.reference_ = torch.from_numpy(reference).to(self.device_)
        self.patients_ = patients
        self.neighbour_codes_ = torch.from_numpy(codes.astype(np.int64)).to(self.device_)
        self.calibration_rows_ = calibration_rows
        self.novelty_alpha_ = novelty_alpha
        self.n_features_in_ = reference.shape[1]
        self.n_calibration_ = n_cal
        self.n_reference_ = int(reference.shape[0])
        self.grouped_ = groups_array is not None
        # Novel <=> at most `most_above` calibration scores are >= the study's score.
        self.null_beta_ = (most_above + 1, n_cal - most_above)
        return self

    def study_p_values(
        self, current: np.ndarray, *, groups: np.ndarray | None = None
    ) -> np.ndarray:
        """Conformal p-value of every study: (1 + #{calibration >= score}) / (1 + n_cal)."""
        require_fitted(self, "reference_")
        current = as_embeddings(current, name="current", n_features=self.n_features_in_)
        groups_array = as_groups(groups, name="groups", n=current.shape[0])
        calibration, scores, _ = self._score(current, groups_array)
        return _p_values(calibration, scores)

    def test(
        self,
        current: np.ndarray,
        *,
        groups: np.ndarray | None = None,
        keys: Sequence[str] | None = None,
    ) -> DetectionResult:
        require_fitted(self, "reference_")
        current = as_embeddings(current, name="current", n_features=self.n_features_in_)
        n = current.shape[0]
        require_samples(n, minimum=1, name="current")
        groups_array = as_groups(groups, name="groups", n=n)
        key_list = keys_or_none(keys, n=n)

        calibration, scores, projection = self._score(current, groups_array)
        p_values = _p_values(calibration, scores)
        novel = p_values < self.novelty_alpha_
        if groups_array is None:
            counted = np.arange(n)
        else:
            counted = _one_per_group(groups_array, np.random.default_rng(self.seed))
        n_counted = counted.size
        n_novel_counted = int(novel[counted].sum())
        a, b = self.null_beta_
        p_novel = float(betabinom.sf(n_novel_counted - 1, n_counted, a, b))
        # Beyond the reference: no calibration score at or above the study's (j = 1).
        n_cal = self.n_calibration_
        n_beyond = int((p_values[counted] <= 1.0 / (1.0 + n_cal)).sum())
        p_beyond = float(betabinom.sf(n_beyond - 1, n_counted, 1, n_cal))
        one_count = a == 1  # a small reference: novel means beyond, the same count
        if one_count:
            p_value = p_novel
        else:
            p_value = _min_p_value(min(p_novel, p_beyond), n_counted, n_cal, most_above=a - 1)
        novel_indices = np.flatnonzero(novel)
        details = {
            "novel_indices": novel_indices.tolist(),
            "novel_p_values": p_values[novel_indices].tolist(),
            "n_novel": int(novel.sum()),
            "n_novel_counted": n_novel_counted,
            "n_counted": int(n_counted),
            "count_unit": "patient (one random study each)"
            if groups_array is not None
            else "study",
            "expected": float(n_counted * a / (a + b)),
            "null": f"beta-binomial(n={n_counted}, a={a}, b={b})",
            "p_value_novel": p_novel,
            "n_beyond_reference": n_beyond,
            "expected_beyond_reference": float(n_counted / (1.0 + n_cal)),
            "p_value_beyond_reference": p_beyond,
            "combination": "one count: the reference is small"
            if one_count
            else "the smaller of the two counts' p-values, referred to its exact null law",
            "novelty_alpha": float(self.novelty_alpha_),
            "k": int(self.k),
            "score": f"mean distance to the {self.k} nearest reference studies"
            + (" of other patients" if self.grouped_ and groups_array is not None else ""),
            "calibration": "leave-one-out over the reference"
            + (" (own patient left out, one study per patient)" if self.grouped_ else ""),
            "n_calibration": self.n_calibration_,
            "calibration_unit": "patient" if self.grouped_ else "study",
            "pca_components": projection.n_components,
            "pca_fitted_on": "reference and window pooled",
            "explained_variance_ratio": projection.explained_variance_ratio,
            "seed": int(self.seed),
            "device": str(self.device_),
        }
        if key_list is not None:
            details["novel_keys"] = [key_list[i] for i in novel_indices]
        return DetectionResult(
            detector="NoveltyDrift",
            feature="embedding",
            statistic=float(n_novel_counted),
            p_value=p_value,
            threshold=float(self.alpha),
            drift=p_value < self.alpha,
            n_reference=self.n_reference_,
            n_current=n,
            details=details,
        )

    def _novelty_alpha(self, n_calibration: int) -> float:
        if self.novelty_alpha is None:
            return default_novelty_alpha(n_calibration)
        return check_alpha(self.novelty_alpha, name="novelty_alpha")

    def _score(
        self, current: np.ndarray, groups: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, Projection]:
        """Sorted leave-one-out calibration scores and the new studies' scores, in the PCA of
        the reference and the window pooled (a rule symmetric in all studies: see the class
        docstring). With patient keys on both sides, a new study's own patient's reference
        studies are left out, as they are for the calibration studies."""
        x = torch.from_numpy(current).to(self.device_)
        projection = fit_projection(
            torch.cat([self.reference_, x]),
            self.pca_components,
            generator=torch.Generator().manual_seed(int(self.seed)),
        )
        neighbours = _with_residual(projection, self.reference_)
        rows = self.calibration_rows_
        calibration = self._knn_scores(
            neighbours[torch.from_numpy(rows).to(self.device_)],
            neighbours,
            self.neighbour_codes_.cpu().numpy()[rows],
        )
        codes = None
        if groups is not None and self.patients_ is not None:
            where = np.searchsorted(self.patients_, groups)
            clipped = np.minimum(where, self.patients_.size - 1)
            codes = np.where(self.patients_[clipped] == groups, clipped, -1)
        scores = self._knn_scores(_with_residual(projection, x), neighbours, codes)
        return np.sort(calibration), scores, projection

    def _knn_scores(
        self, z: torch.Tensor, neighbours: torch.Tensor, exclude: np.ndarray | None
    ) -> np.ndarray:
        """Mean distance of each row of ``z`` to its ``k`` nearest reference studies, leaving
        out those whose patient code equals the row's entry of ``exclude`` (-1: none)."""
        k = min(int(self.k), neighbours.shape[0])
        rows = max(1, _ROWS_PER_CHUNK_ELEMENTS // neighbours.shape[0])
        excluded = None
        if exclude is not None:
            excluded = torch.from_numpy(np.asarray(exclude, dtype=np.int64)).to(self.device_)
        out = []
        for start in range(0, z.shape[0], rows):
            sq = squared_distances(z[start : start + rows], neighbours)
            if excluded is not None:
                own = excluded[start : start + rows, None] == self.neighbour_codes_[None, :]
                sq.masked_fill_(own, float("inf"))
            nearest = sq.topk(k, dim=1, largest=False).values
            out.append(nearest.sqrt().mean(dim=1).double())
        if not out:
            return np.zeros(0)
        return torch.cat(out).cpu().numpy()


def _with_residual(projection: Projection, x: torch.Tensor) -> torch.Tensor:
    """The principal coordinates plus one more: the distance from the principal subspace.
    A study unlike the reference along an axis the PCA dropped (a few inverted images among
    thousands carry too little variance to earn an axis) still stands out."""
    z = projection.apply(x)
    if projection.components is None:
        return z
    centered = x - projection.mean
    residual = centered - z @ projection.components.T
    return torch.cat([z, residual.norm(dim=1, keepdim=True)], dim=1)


def _min_p_value(observed: float, n: int, n_cal: int, *, most_above: int) -> float:
    """P(min(p_novel, p_beyond) <= observed) under no shift, exactly under the model of the
    class docstring. The calibration scores cut the new studies' score law into the mass q1
    beyond all of them, q2 - q1 between the largest and the (most_above + 1)-th, and the rest:
    (q1, q2 - q1, 1 - q2) ~ Dirichlet(1, most_above, n_cal - most_above). So the beyond count
    C1 ~ Beta-Binomial(n, 1, n_cal), and given C1 the novel studies that are not beyond,
    C2 - C1, are Beta-Binomial(n - C1, most_above, n_cal - most_above) (Dirichlet
    neutrality). The two tails are monotone in their counts, so the event is
    {C1 >= a} or {C2 >= b}."""
    counts = np.arange(n + 1)
    beyond_law = betabinom(n, 1, n_cal)
    novel_law = betabinom(n, most_above + 1, n_cal - most_above)
    a = int(np.argmax(beyond_law.sf(counts - 1) <= observed * (1 + 1e-9)))
    b = int(np.argmax(novel_law.sf(counts - 1) <= observed * (1 + 1e-9)))
    c1 = np.arange(a, n + 1)
    rest = betabinom(n - c1, most_above, n_cal - most_above).sf(b - c1 - 1)
    both = float(np.sum(beyond_law.pmf(c1) * rest))
    return float(min(1.0, beyond_law.sf(a - 1) + novel_law.sf(b - 1) - both))


def _p_values(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(1 + #{calibration >= score}) / (1 + n_cal), ``calibration`` sorted."""
    above = calibration.size - np.searchsorted(calibration, scores, side="left")
    return (1.0 + above) / (1.0 + calibration.size)


def _most_calibration_above(n_cal: int, novelty_alpha: float) -> int:
    """Largest c with (1 + c) / (1 + n_cal) < novelty_alpha, or -1 when none."""
    possible = (1.0 + np.arange(n_cal + 1)) / (1.0 + n_cal)
    return int(np.count_nonzero(possible < novelty_alpha)) - 1


def _one_per_group(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Index of one random study per group."""
    order = rng.permutation(groups.size)
    _, first = np.unique(groups[order], return_index=True)
    return np.sort(order[first])
