"""Shared helpers of the embedding detectors: devices, input checks, PCA, Gaussian kernels and
the side permutations behind every permutation p-value (study-level or whole patients)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from monitor.errors import ConfigError, InsufficientDataError, NotFittedError, ValidationError

# Bounds the (studies x permutations) blocks materialised at once, in elements.
_BLOCK_ELEMENTS = 20_000_000


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is CUDA when torch sees a GPU, else the CPU; anything else is passed to torch."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"device {device!r} is not a torch device ('auto', 'cpu', 'cuda')"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but torch sees no CUDA device")
    return resolved


def check_alpha(value: float, *, name: str = "alpha") -> float:
    if not 0.0 < float(value) < 1.0:
        raise ConfigError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    return float(value)


def check_positive_int(value: int, *, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_optional_components(value: int | None) -> int | None:
    return None if value is None else check_positive_int(value, name="pca_components")


def require_fitted(detector: object, attribute: str) -> None:
    if not hasattr(detector, attribute):
        name = type(detector).__name__
        raise NotFittedError(f"{name} is not fitted yet: call {name}.fit(reference) before testing")


def as_embeddings(values: object, *, name: str, n_features: int | None = None) -> np.ndarray:
    """A finite float32 (studies x dims) array, or a ValidationError naming the shape."""
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 2:
        raise ValidationError(
            f"{name} must be a 2-D array (studies x embedding dims), got shape {array.shape}",
            field=name,
        )
    if n_features is not None and array.shape[1] != n_features:
        raise ValidationError(
            f"{name} has embedding length {array.shape[1]} (shape {array.shape}) but the "
            f"reference has {n_features}",
            field=name,
        )
    if not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array).all(axis=1)))
        raise ValidationError(f"{name} has {bad} studies with NaN or infinite values", field=name)
    return array


def as_groups(groups: object, *, name: str, n: int) -> np.ndarray | None:
    """Patient keys as strings (one per study), or None."""
    if groups is None:
        return None
    array = np.asarray(groups)
    if array.ndim != 1 or array.shape[0] != n:
        raise ValidationError(
            f"{name} must hold one patient key per study ({n}), got shape {array.shape}",
            field=name,
        )
    return array.astype(str)


def check_groups_pairing(reference_groups: np.ndarray | None, current_groups: object) -> None:
    if (reference_groups is None) != (current_groups is None):
        given = "reference" if reference_groups is not None else "current"
        raise ValidationError(
            f"patient groups were given for the {given} sample only; give them for both samples "
            "or neither, so that repeat studies are handled the same way on both sides",
            field="groups",
        )


def require_samples(n: int, *, minimum: int, name: str) -> None:
    if n < minimum:
        raise InsufficientDataError(f"{name} has {n} studies; this test needs at least {minimum}")


@dataclass(frozen=True)
class Projection:
    """Centering, then (optionally) projection on the leading principal axes."""

    mean: torch.Tensor
    components: torch.Tensor | None
    explained_variance_ratio: float

    @property
    def n_components(self) -> int | None:
        return None if self.components is None else int(self.components.shape[1])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        centered = x - self.mean
        return centered if self.components is None else centered @ self.components


def fit_projection(
    x: torch.Tensor, n_components: int | None, *, generator: torch.Generator | None = None
) -> Projection:
    """PCA: the eigen-decomposition of the (d x d) covariance up to 1,024
    dimensions, a seeded randomised range finder (4 power iterations) above, where the exact
    route costs O(d^3) for a few dozen axes.

    With ``n_components`` None, or not smaller than the dimension, only the centering is kept.
    """
    mean = x.mean(dim=0)
    if n_components is None or n_components >= x.shape[1]:
        return Projection(mean=mean, components=None, explained_variance_ratio=1.0)
    centered = x - mean
    if x.shape[1] <= 1024:
        covariance = (centered.T @ centered) / x.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        components = torch.flip(eigenvectors[:, -n_components:], dims=[1])
        kept = float(eigenvalues[-n_components:].clamp(min=0).sum())
        total = float(eigenvalues.clamp(min=0).sum())
    else:
        components, kept = _randomized_axes(centered, n_components, generator)
        total = float(centered.double().pow(2).sum())
    ratio = kept / total if total > 0 else 1.0
    return Projection(mean=mean, components=components, explained_variance_ratio=ratio)


def _randomized_axes(
    centered: torch.Tensor, n_components: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, float]:
    """Leading right singular vectors of ``centered`` (Halko, Martinsson & Tropp 2011)."""
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    width = min(n_components + 10, *centered.shape)
    sketch = torch.randn((centered.shape[1], width), generator=generator, dtype=centered.dtype)
    basis = torch.linalg.qr(centered @ sketch.to(centered.device)).Q
    for _ in range(4):
        basis = torch.linalg.qr(centered.T @ basis).Q
        basis = torch.linalg.qr(centered @ basis).Q
    _, singular, vh = torch.linalg.svd((basis.T @ centered).double(), full_matrices=False)
    components = vh[:n_components].T.to(centered.dtype)
    return components, float(singular[:n_components].pow(2).sum())


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||^2 through one matrix product (a is centered by the caller)."""
    sq = torch.addmm((a * a).sum(dim=1, keepdim=True), a, b.T, beta=1.0, alpha=-2.0)
    sq.add_((b * b).sum(dim=1)[None, :])
    return sq.clamp_(min=0.0)


def median_pairwise_distance(
    x: torch.Tensor, *, generator: torch.Generator, max_points: int = 1000
) -> float:
    """Median Euclidean distance between distinct points of ``x`` (a seeded subsample of at
    most ``max_points`` points, which pins the median to well under one percent)."""
    if x.shape[0] > max_points:
        pick = torch.randperm(x.shape[0], generator=generator)[:max_points].to(x.device)
        x = x[pick]
    sq = squared_distances(x, x)
    upper = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
    median = float(sq[upper[0], upper[1]].median().sqrt())
    return median if median > 0 else 1.0


def gaussian_kernel_matrix(z: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """exp(-||z_i - z_j||^2 / (2 bandwidth^2)), built in place in one (N x N) float32 buffer."""
    kernel = squared_distances(z, z)
    kernel.mul_(-1.0 / (2.0 * bandwidth * bandwidth)).exp_()
    return kernel


def cluster_codes(*groups: np.ndarray) -> np.ndarray:
    """One integer code per study over the concatenated samples; equal keys share a code."""
    _, codes = np.unique(np.concatenate(groups), return_inverse=True)
    return codes.astype(np.int64)


class SidePermuter:
    """Random re-assignments of the pooled studies to the two sides of a two-sample test.

    ``side`` is True for one sample (the reference). Without ``clusters`` every study is its
    own unit and the permutations are the usual study-level ones. With ``clusters`` (patient
    codes) the unit is the patient:

    - a patient seen on one side only moves as a whole: the side labels of these patients are
      permuted among them, so every study of a patient stays together. The number of such
      patients per side is kept; the number of studies per side varies and each permuted
      statistic uses its own sample sizes.
    - a patient seen on both sides keeps how many of their studies lie on each side; which of
      their studies lie where is permuted.

    Under no shift, with patients drawn independently from one population and the studies of
    a patient exchangeable among themselves, the joint law of data and side labels is unchanged
    by these moves, so the permutation p-value is valid; a study-level permutation is not,
    because it treats the correlated studies of one patient as independent evidence.

    ``strata`` restricts every move to within a stratum (cross-validation folds); clusters
    must not straddle strata.
    """

    def __init__(
        self,
        side: np.ndarray,
        *,
        clusters: np.ndarray | None = None,
        strata: np.ndarray | None = None,
    ):
        side = np.asarray(side, dtype=bool)
        n = side.shape[0]
        clusters = np.arange(n) if clusters is None else np.asarray(clusters)
        strata = np.zeros(n, dtype=np.int64) if strata is None else np.asarray(strata)
        _, cluster = np.unique(clusters, return_inverse=True)
        _, stratum = np.unique(strata, return_inverse=True)
        n_clusters = int(cluster.max()) + 1 if n else 0
        size = np.bincount(cluster, minlength=n_clusters)
        n_side = np.bincount(cluster, weights=side, minlength=n_clusters).astype(np.int64)
        cluster_stratum = np.zeros(n_clusters, dtype=np.int64)
        cluster_stratum[cluster] = stratum
        if np.any(cluster_stratum[cluster] != stratum):
            raise ValueError("a patient's studies lie in more than one stratum (fold)")

        self.side = torch.from_numpy(side)
        self.n = n
        pure = (n_side == 0) | (n_side == size)
        self.n_pure_clusters = int(pure.sum())
        self.n_mixed_clusters = int((~pure).sum())

        # Whole patients: shuffle the side labels of pure clusters within each stratum.
        pure_ids = np.flatnonzero(pure)
        pure_ids = pure_ids[np.argsort(cluster_stratum[pure_ids], kind="stable")]
        position_of_cluster = np.full(n_clusters, -1, dtype=np.int64)
        position_of_cluster[pure_ids] = np.arange(pure_ids.size)
        in_pure = pure[cluster]
        self._pure_studies = torch.from_numpy(np.flatnonzero(in_pure))
        self._pure_position = torch.from_numpy(position_of_cluster[cluster[in_pure]])
        self._pure_blocks = torch.from_numpy(cluster_stratum[pure_ids].astype(np.float64))
        self._pure_pattern = torch.from_numpy(n_side[pure_ids] > 0)

        # Patients on both sides: shuffle which of their studies lie on each side.
        mixed_studies = np.flatnonzero(~in_pure)
        mixed_studies = mixed_studies[np.argsort(cluster[mixed_studies], kind="stable")]
        mixed_cluster = cluster[mixed_studies]
        _, mixed_block = np.unique(mixed_cluster, return_inverse=True)
        starts = np.searchsorted(mixed_cluster, mixed_cluster, side="left")
        rank_in_cluster = np.arange(mixed_studies.size) - starts
        self._mixed_studies = torch.from_numpy(mixed_studies)
        self._mixed_blocks = torch.from_numpy(mixed_block.astype(np.float64))
        self._mixed_pattern = torch.from_numpy(rank_in_cluster < n_side[mixed_cluster])

    @property
    def unit(self) -> str:
        return (
            "study" if self.n_mixed_clusters == 0 and self.n_pure_clusters == self.n else "patient"
        )

    def chunks(
        self,
        n_permutations: int,
        *,
        generator: torch.Generator,
        include_observed: bool = True,
        chunk_size: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """(N x b) float32 0/1 blocks, 1 = the ``side`` sample; the observed assignment first."""
        if chunk_size is None:
            chunk_size = max(16, _BLOCK_ELEMENTS // max(self.n, 1))
        remaining = n_permutations
        first = include_observed
        while remaining > 0 or first:
            b = min(chunk_size, remaining)
            block = self._draw(b, generator)
            if first:
                block = torch.cat([self.side[:, None], block], dim=1)
                first = False
            remaining -= b
            yield block.to(torch.float32)

    def _draw(self, b: int, generator: torch.Generator) -> torch.Tensor:
        block = torch.zeros((self.n, b), dtype=torch.bool)
        if b == 0:
            return block
        if self._pure_studies.numel():
            labels = _shuffle_within_blocks(self._pure_blocks, self._pure_pattern, b, generator)
            block[self._pure_studies] = labels[:, self._pure_position].T
        if self._mixed_studies.numel():
            labels = _shuffle_within_blocks(self._mixed_blocks, self._mixed_pattern, b, generator)
            block[self._mixed_studies] = labels.T
        return block


def _shuffle_within_blocks(
    blocks: torch.Tensor, pattern: torch.Tensor, b: int, generator: torch.Generator
) -> torch.Tensor:
    """b rows, each ``pattern`` randomly permuted within runs of equal (sorted) ``blocks``."""
    size = pattern.numel()
    if size == 0:
        return torch.zeros((b, 0), dtype=torch.bool)
    if bool(blocks[0] == blocks[-1]):
        order = torch.stack([torch.randperm(size, generator=generator) for _ in range(b)])
    else:
        keys = blocks[None, :] + torch.rand((b, size), generator=generator, dtype=torch.float64)
        order = keys.argsort(dim=1)
    labels = torch.empty((b, size), dtype=torch.bool)
    labels.scatter_(1, order, pattern.expand(b, size))
    return labels


def keys_or_none(keys: Sequence[str] | None, *, n: int) -> list[str] | None:
    if keys is None:
        return None
    keys = list(keys)
    if len(keys) != n:
        raise ValidationError(f"keys has {len(keys)} entries for {n} studies", field="keys")
    return [str(key) for key in keys]
