"""Kernel MMD two-sample test on embeddings, with a permutation p-value computed in torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from monitor.detect._torch import (
    SidePermuter,
    as_embeddings,
    as_groups,
    check_alpha,
    check_groups_pairing,
    check_optional_components,
    check_positive_int,
    cluster_codes,
    fit_projection,
    gaussian_kernel_matrix,
    median_pairwise_distance,
    require_fitted,
    require_samples,
    resolve_device,
)
from monitor.detect.result import DetectionResult, permutation_p_value
from monitor.errors import ConfigError

MIN_STUDIES = 10


@dataclass(frozen=True)
class _PooledKernel:
    """The Gaussian kernel of the pooled sample (reference first) and what built it."""

    kernel: torch.Tensor  # (N x N) float32, diagonal set to 0
    row_sums: torch.Tensor  # float64
    total: float  # sum of all off-diagonal entries
    bandwidth: float
    pca_components: int | None
    explained_variance_ratio: float


class MMDDrift:
    """Maximum mean discrepancy between reference and current embeddings.

    The statistic is the unbiased (U-statistic) MMD² with a Gaussian kernel. Its p-value comes
    from ``n_permutations`` random re-assignments of the pooled studies to the two sides:
    p = (1 + #{permuted >= observed}) / (1 + B), valid at any sample size and never 0.

    Parameters
    ----------
    pca_components
        Project on this many principal axes before the kernel (None: no projection). The axes
        are fitted, at test time, on the pooled reference + current sample and never on the
        reference alone: axes fitted on the reference over-fit it (its points spread more
        along them than fresh points do), which a kernel test picks up as a difference even
        with no shift at all (200 of 200 no-shift windows alarmed at n = 150 per side,
        64 -> 32 dimensions). The pooled fit is a symmetric function of the pooled sample, so
        the permutation test stays exact, and a direction along which only the current
        sample moved can enter the axes instead of being projected away.
    bandwidth
        Gaussian kernel bandwidth in the (projected) space; None takes the median pairwise
        distance of the reference studies (median heuristic, seeded subsample of 1,000).
    max_reference
        Keep at most this many reference studies (seeded subsample): the kernel matrix takes
        (n + m)² float32 numbers.

    Speed: the pooled kernel matrix K is built once. With S the (N x B) 0/1 matrix of
    permuted reference memberships, every permuted MMD² follows from the column sums of
    S * (K @ S) and of S against the row sums of K, so B permutations cost one matrix product
    (chunked over B), not B passes over K.

    Repeat studies: with ``groups`` (pseudonymised patient keys, for both samples), whole
    patients are permuted (see ``SidePermuter``); without them studies are treated as
    independent, which raises false alarms on windows with several studies per patient.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> detector = MMDDrift(n_permutations=200).fit(rng.normal(size=(200, 16)))
    >>> detector.test(rng.normal(size=(150, 16)) + 1.0).drift
    True
    """

    def __init__(
        self,
        *,
        alpha: float = 0.05,
        n_permutations: int = 1000,
        pca_components: int | None = 32,
        bandwidth: float | None = None,
        seed: int = 0,
        device: str = "auto",
        max_reference: int | None = None,
    ):
        self.alpha = alpha
        self.n_permutations = n_permutations
        self.pca_components = pca_components
        self.bandwidth = bandwidth
        self.seed = seed
        self.device = device
        self.max_reference = max_reference

    def fit(self, reference: np.ndarray, *, groups: np.ndarray | None = None) -> MMDDrift:
        check_alpha(self.alpha)
        check_positive_int(self.n_permutations, name="n_permutations")
        check_optional_components(self.pca_components)
        if self.bandwidth is not None and not float(self.bandwidth) > 0:
            raise ConfigError(f"bandwidth must be positive, got {self.bandwidth!r}")
        reference = as_embeddings(reference, name="reference")
        groups_array = as_groups(groups, name="groups", n=reference.shape[0])
        require_samples(reference.shape[0], minimum=MIN_STUDIES, name="reference")
        if self.max_reference is not None:
            limit = check_positive_int(
                self.max_reference, name="max_reference", minimum=MIN_STUDIES
            )
            if reference.shape[0] > limit:
                keep = np.sort(
                    np.random.default_rng(self.seed).choice(
                        reference.shape[0], limit, replace=False
                    )
                )
                reference = reference[keep]
                groups_array = None if groups_array is None else groups_array[keep]
        self.device_ = resolve_device(self.device)
        self.reference_ = reference
        self.groups_ = groups_array
        self.n_features_in_ = reference.shape[1]
        return self

    def score(self, current: np.ndarray, *, groups: np.ndarray | None = None) -> float:
        """The unbiased MMD² between the reference and ``current`` (no p-value)."""
        current, _ = self._check_current(current, groups)
        pooled = self._pooled_kernel(current)
        side = torch.zeros((pooled.kernel.shape[0], 1), dtype=torch.float32)
        side[: self.reference_.shape[0]] = 1.0
        return float(self._mmd2(pooled, side.to(pooled.kernel.device))[0])

    def test(self, current: np.ndarray, *, groups: np.ndarray | None = None) -> DetectionResult:
        current, current_groups = self._check_current(current, groups)
        n_ref, n_cur = self.reference_.shape[0], current.shape[0]
        pooled = self._pooled_kernel(current)

        side = np.zeros(n_ref + n_cur, dtype=bool)
        side[:n_ref] = True
        clusters = None
        if current_groups is not None and self.groups_ is not None:  # both or neither
            clusters = cluster_codes(self.groups_, current_groups)
        permuter = SidePermuter(side, clusters=clusters)
        generator = torch.Generator().manual_seed(self.seed)
        values = [
            self._mmd2(pooled, block.to(pooled.kernel.device))
            for block in permuter.chunks(self.n_permutations, generator=generator)
        ]
        statistics = torch.cat(values).cpu().numpy()
        observed, permuted = float(statistics[0]), statistics[1:]
        # A permutation leaving a side with under two studies has no U-statistic: it counts as
        # "as large" (conservative), as do permutations within float32 rounding of the observed.
        permuted = np.where(np.isfinite(permuted), permuted, np.inf)
        tolerance = 1e-7 * abs(pooled.total) / max(len(side) * (len(side) - 1), 1)
        p_value = permutation_p_value(observed - tolerance, permuted)
        details = {
            "estimator": "unbiased MMD² (U-statistic), Gaussian kernel",
            "bandwidth": pooled.bandwidth,
            "bandwidth_rule": "given"
            if self.bandwidth is not None
            else "median heuristic on reference",
            "n_permutations": int(self.n_permutations),
            "seed": int(self.seed),
            "pca_components": pooled.pca_components,
            "pca_fitted_on": "pooled reference + current" if pooled.pca_components else None,
            "explained_variance_ratio": pooled.explained_variance_ratio,
            "device": str(self.device_),
            "permutation_unit": permuter.unit,
            "n_groups": None if clusters is None else int(np.unique(clusters).size),
            "n_groups_both_sides": permuter.n_mixed_clusters if clusters is not None else None,
            "permuted_mean": float(permuted.mean()),
            "permuted_q95": float(np.quantile(permuted, 0.95)),
        }
        return DetectionResult(
            detector="MMDDrift",
            feature="embedding",
            statistic=observed,
            p_value=p_value,
            threshold=float(self.alpha),
            drift=p_value < self.alpha,
            n_reference=n_ref,
            n_current=n_cur,
            details=details,
        )

    def _check_current(
        self, current: np.ndarray, groups: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        require_fitted(self, "reference_")
        current = as_embeddings(current, name="current", n_features=self.n_features_in_)
        check_groups_pairing(self.groups_, groups)
        current_groups = as_groups(groups, name="groups", n=current.shape[0])
        require_samples(current.shape[0], minimum=MIN_STUDIES, name="current")
        return current, current_groups

    def _pooled_kernel(self, current: np.ndarray) -> _PooledKernel:
        device = self.device_
        n_ref = self.reference_.shape[0]
        pooled = torch.from_numpy(np.concatenate([self.reference_, current])).to(device)
        projection = fit_projection(
            pooled, self.pca_components, generator=torch.Generator().manual_seed(int(self.seed))
        )
        z = projection.apply(pooled)
        del pooled
        if self.bandwidth is not None:
            bandwidth = float(self.bandwidth)
        else:
            generator = torch.Generator().manual_seed(self.seed)
            bandwidth = median_pairwise_distance(z[:n_ref], generator=generator)
        kernel = gaussian_kernel_matrix(z, bandwidth)
        del z
        kernel.fill_diagonal_(0.0)
        row_sums = kernel.sum(dim=1).double()
        return _PooledKernel(
            kernel=kernel,
            row_sums=row_sums,
            total=float(row_sums.sum()),
            bandwidth=bandwidth,
            pca_components=projection.n_components,
            explained_variance_ratio=projection.explained_variance_ratio,
        )

    @staticmethod
    def _mmd2(pooled: _PooledKernel, side: torch.Tensor) -> torch.Tensor:
        """Unbiased MMD² for each column of the 0/1 membership matrix ``side`` (N x b).

        With s a column, A = sᵀKs (off-diagonal K), r = K1 and T = 1ᵀK1: the within-reference
        sum is A, the within-current sum T - 2 s·r + A and the cross sum s·r - A.
        """
        within_side = _symmetric_quadratic_forms(pooled.kernel, side)
        side64 = side.double()
        cross_rows = pooled.row_sums @ side64
        n = side64.sum(dim=0)
        m = side.shape[0] - n
        within_other = pooled.total - 2.0 * cross_rows + within_side
        cross = cross_rows - within_side
        return within_side / (n * (n - 1)) + within_other / (m * (m - 1)) - 2.0 * cross / (n * m)


def _symmetric_quadratic_forms(kernel: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """sᵀKs for every column s of ``side``, reading only the upper block triangle of the
    symmetric K: diagonal tiles once, the tiles right of them twice, about half the
    multiply-adds of K @ side."""
    n = kernel.shape[0]
    tile = max(1024, -(-n // 10))
    total = torch.zeros(side.shape[1], dtype=torch.float64, device=side.device)
    for start in range(0, n, tile):
        stop = min(start + tile, n)
        rows = side[start:stop]
        product = kernel[start:stop, start:stop] @ rows
        if stop < n:
            product.addmm_(kernel[start:stop, stop:], side[stop:], alpha=2.0)
        total += (rows * product).sum(dim=0, dtype=torch.float64)
    return total
