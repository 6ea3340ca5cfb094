"""Per-study novelty: conformal p-values from nearest-neighbour distances to the reference, and
a window alarm when more studies are novel than chance allows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import betabinom

from monitor.detect._torch import (
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
from monitor.errors import ConfigError, InsufficientDataError

_ROWS_PER_CHUNK_ELEMENTS = 16_000_000


class NoveltyDrift:
    """Flags studies unlike anything in the reference, and windows with too many of them.

    ``fit`` splits the reference into a *fit* part (the neighbours) and a held-out
    *calibration* part (a share ``calibration_fraction``). A study's score is its mean distance
    to its ``k`` nearest fit-part studies (after PCA fitted on the fit part only); its conformal
    p-value is (1 + #{calibration scores >= score}) / (1 + n_cal). A calibration study is scored
    exactly like a new one (neither took part in the fit), so under no shift the p-value is
    valid: P(p <= t) <= t. A study is novel when p < ``novelty_alpha``.

    Window verdict: the novelty events of one window share one calibration set, so the count
    of novel studies is not Binomial(n, novelty_alpha): given the calibration set each study is
    novel with the same probability q, the mass above the j-th largest calibration score, and
    under exchangeability q ~ Beta(j, n_cal + 1 - j) whatever the score distribution (j - 1 is
    the most calibration scores a study may lie below and still be novel). The count is then
    Beta-Binomial(n, j, n_cal + 1 - j), an exact law, and the window p-value is its upper tail
    at the observed count; drift when it is below ``alpha``. A plain Binomial(n, novelty_alpha)
    test ignores the shared calibration set and over-alarms: with 300 calibration studies and
    windows of 300 it alarms at 7 novel studies, which happens in 8.8 % of no-shift windows.

    Repeat studies: with ``groups`` at ``fit``, the fit/calibration split is by patient (a
    calibration study must not find its own patient among the neighbours) and calibration keeps
    one random study per patient. With ``groups`` at ``test``, the window count uses one random
    study per patient, since a patient who looks unusual looks unusual in every study; every
    novel study is still listed.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.05,
        novelty_alpha: float = 0.01,
        k: int = 10,
        calibration_fraction: float = 0.3,
        pca_components: int | None = 32,
        seed: int = 0,
        device: str = "auto",
    ):
        self.alpha = alpha
        self.novelty_alpha = novelty_alpha
        self.k = k
        self.calibration_fraction = calibration_fraction
        self.pca_components = pca_components
        self.seed = seed
        self.device = device

    def fit(self, reference: np.ndarray, *, groups: np.ndarray | None = None) -> NoveltyDrift:
        check_alpha(self.alpha)
        novelty_alpha = check_alpha(self.novelty_alpha, name="novelty_alpha")
        k = check_positive_int(self.k, name="k")
        check_optional_components(self.pca_components)
        if not 0.0 < float(self.calibration_fraction) < 1.0:
            raise ConfigError(
                "calibration_fraction must lie strictly between 0 and 1, "
                f"got {self.calibration_fraction!r}"
            )
        reference = as_embeddings(reference, name="reference")
        groups_array = as_groups(groups, name="groups", n=reference.shape[0])
        rng = np.random.default_rng(self.seed)
        fit_rows, calibration_rows = self._split(reference.shape[0], groups_array, rng)
        require_samples(fit_rows.size, minimum=k + 1, name="reference fit part")
        n_cal = calibration_rows.size
        most_above = _most_calibration_above(n_cal, novelty_alpha)
        if most_above < 0:
            need = int(np.ceil(1.0 / novelty_alpha))
            raise InsufficientDataError(
                f"reference calibration part has {n_cal} studies (patients); a conformal p-value "
                f"below novelty_alpha={novelty_alpha} needs at least {need}"
            )

        self.device_ = resolve_device(self.device)
        fit_part = torch.from_numpy(reference[fit_rows]).to(self.device_)
        self.projection_ = fit_projection(
            fit_part, self.pca_components, generator=torch.Generator().manual_seed(int(self.seed))
        )
        self.neighbours_ = self.projection_.apply(fit_part)
        self.calibration_scores_ = np.sort(self._scores(reference[calibration_rows]))
        self.n_features_in_ = reference.shape[1]
        self.n_fit_ = int(fit_rows.size)
        self.n_calibration_ = int(n_cal)
        self.n_reference_ = int(reference.shape[0])
        self.grouped_ = groups_array is not None
        # Novel <=> at most `most_above` calibration scores are >= the study's score.
        self.null_beta_ = (most_above + 1, n_cal - most_above)
        return self

    def study_p_values(self, current: np.ndarray) -> np.ndarray:
        """Conformal p-value of every study: (1 + #{calibration >= score}) / (1 + n_cal)."""
        require_fitted(self, "calibration_scores_")
        current = as_embeddings(current, name="current", n_features=self.n_features_in_)
        return self._p_values(self._scores(current))

    def test(
        self,
        current: np.ndarray,
        *,
        groups: np.ndarray | None = None,
        keys: Sequence[str] | None = None,
    ) -> DetectionResult:
        require_fitted(self, "calibration_scores_")
        current = as_embeddings(current, name="current", n_features=self.n_features_in_)
        n = current.shape[0]
        require_samples(n, minimum=1, name="current")
        groups_array = as_groups(groups, name="groups", n=n)
        key_list = keys_or_none(keys, n=n)

        scores = self._scores(current)
        p_values = self._p_values(scores)
        novel = p_values < self.novelty_alpha
        if groups_array is None:
            counted = np.arange(n)
        else:
            counted = _one_per_group(groups_array, np.random.default_rng(self.seed))
        n_counted = counted.size
        n_novel_counted = int(novel[counted].sum())
        a, b = self.null_beta_
        p_value = float(betabinom.sf(n_novel_counted - 1, n_counted, a, b))
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
            "novelty_alpha": float(self.novelty_alpha),
            "k": int(self.k),
            "score": f"mean distance to the {self.k} nearest reference studies",
            "n_fit": self.n_fit_,
            "n_calibration": self.n_calibration_,
            "calibration_unit": "patient" if self.grouped_ else "study",
            "pca_components": self.projection_.n_components,
            "explained_variance_ratio": self.projection_.explained_variance_ratio,
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

    def _split(
        self, n: int, groups: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if groups is None:
            order = rng.permutation(n)
            n_cal = round(self.calibration_fraction * n)
            return np.sort(order[n_cal:]), np.sort(order[:n_cal])
        patients, patient_of_study = np.unique(groups, return_inverse=True)
        shuffled = rng.permutation(patients.size)
        n_cal_patients = round(self.calibration_fraction * patients.size)
        is_calibration = np.zeros(patients.size, dtype=bool)
        is_calibration[shuffled[:n_cal_patients]] = True
        fit_rows = np.flatnonzero(~is_calibration[patient_of_study])
        calibration_rows = np.flatnonzero(is_calibration[patient_of_study])
        calibration_rows = calibration_rows[_one_per_group(groups[calibration_rows], rng)]
        return fit_rows, np.sort(calibration_rows)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        z = self.projection_.apply(torch.from_numpy(x).to(self.device_))
        k = min(int(self.k), self.neighbours_.shape[0])
        rows = max(1, _ROWS_PER_CHUNK_ELEMENTS // self.neighbours_.shape[0])
        out = []
        for start in range(0, z.shape[0], rows):
            sq = squared_distances(z[start : start + rows], self.neighbours_)
            nearest = sq.topk(k, dim=1, largest=False).values
            out.append(nearest.sqrt().mean(dim=1).double())
        if not out:
            return np.zeros(0)
        return torch.cat(out).cpu().numpy()

    def _p_values(self, scores: np.ndarray) -> np.ndarray:
        above = self.calibration_scores_.size - np.searchsorted(
            self.calibration_scores_, scores, side="left"
        )
        return (1.0 + above) / (1.0 + self.calibration_scores_.size)


def _most_calibration_above(n_cal: int, novelty_alpha: float) -> int:
    """Largest c with (1 + c) / (1 + n_cal) < novelty_alpha, or -1 when none."""
    possible = (1.0 + np.arange(n_cal + 1)) / (1.0 + n_cal)
    return int(np.count_nonzero(possible < novelty_alpha)) - 1


def _one_per_group(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Index of one random study per group."""
    order = rng.permutation(groups.size)
    _, first = np.unique(groups[order], return_index=True)
    return np.sort(order[first])
