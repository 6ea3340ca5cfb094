"""The latent model behind the simulated embeddings.

One study's embedding (length D, float32) is a sum of fixed, seeded effects plus noise::

    x = mean + version effect + finding effect + site effect + scanner effect
        + software-version effect + view effect + patient effect + noise

* Every effect is ``scale * u`` for a unit direction ``u``; all directions are mutually
  orthogonal (columns of the Q of a seeded Gaussian matrix), so a mean projected on one
  direction reads that effect alone. Scales are in ``EFFECT_SCALES``: finding 2.5 per finding
  present (pneumothorax, effusion), site 2.0, scanner 3.0, software version 1.0, view 2.5,
  paediatric (age < 18) 3.0, model version 2.0 (both versions share the space, each with its own
  offset, so a baseline must never mix versions).
* The ``software-update`` episode adds ``SOFTWARE_UPDATE_SHIFT * magnitude`` (4.0) along the
  updated scanner's own direction, on top of the new version's own software effect.
* An image whose pixels were inverted upstream (``photometric-inversion``) lies
  ``INVERSION_SHIFT`` (16.0, more than the noise norm) along a direction of its own,
  ``directions["inverted"]``, orthogonal to every effect: inverted images sit together, far
  from every upright one, whatever unit took them. It is drawn from a stream of its own
  (``with_direction``), so adding it moves none of the other directions.
* ``gradual-drift`` grows the drifting site's effect at a fixed rate per day.
* ``mean`` is a seeded N(0, 0.5²) vector (not orthogonal to the directions).
* Noise is Gaussian with covariance ``Σ = V diag(λ) Vᵀ + 0.5² I``: ``V`` a seeded orthonormal
  basis of 32 factors with ``λ_j = 9 / j``, so the embeddings have a few dominant directions
  as real ones do. The noise norm is about 12.8 for D = 512.
* Patient effect: a patient's studies share half the noise variance. Study noise is
  ``sqrt(ρ) e_patient + sqrt(1 - ρ) e_study`` with ``ρ = PATIENT_SHARE = 0.5``, both draws from
  the noise law, so every study has the same marginal law and two studies of one patient are
  correlated ρ in every coordinate. Studies of patients seen once use a single draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

EFFECT_SCALES: dict[str, float] = {
    "finding": 2.5,
    "site": 2.0,
    "scanner": 3.0,
    "software": 1.0,
    "view": 2.5,
    "paediatric": 3.0,
    "version": 2.0,
}
SOFTWARE_UPDATE_SHIFT = 4.0
INVERSION_SHIFT = 16.0
INVERSION_KEY = "inverted"
MEAN_SD = 0.5
NOISE_FACTORS = 32
NOISE_FACTOR_VARIANCE = 9.0
ISOTROPIC_SD = 0.5
PATIENT_SHARE = 0.5


@dataclass(frozen=True)
class LatentModel:
    """The seeded pieces of the embedding model.

    ``directions`` maps keys such as ``"scanner:XR-SOUTH-1"``, ``"site:north"``,
    ``"software:XR-SOUTH-1:VF12B"``, ``"view:AP"``, ``"finding:pneumothorax"``,
    ``"version:1.4.0"`` and ``"paediatric"`` to unit vectors.
    """

    mean: np.ndarray
    directions: dict[str, np.ndarray]
    noise_basis: np.ndarray
    noise_factor_sd: np.ndarray
    isotropic_sd: float
    patient_share: float

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def direction(self, key: str) -> np.ndarray:
        return self.directions[key]

    def noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws from the noise law, float32, shape (n, D)."""
        k = self.noise_basis.shape[1]
        factors = rng.standard_normal((n, k), dtype=np.float32) * self.noise_factor_sd
        out = rng.standard_normal((n, self.dim), dtype=np.float32)
        out *= np.float32(self.isotropic_sd)
        out += factors @ self.noise_basis.T
        return out

    def noise_variance_along(self, direction: np.ndarray) -> float:
        """Variance of the noise projected on a unit vector (for tests and tolerances)."""
        proj = self.noise_basis.T @ direction
        return float(np.sum(self.noise_factor_sd.astype(float) ** 2 * proj**2)
                     + self.isotropic_sd**2)


def build_latent_model(
    rng: np.random.Generator, *, dim: int, direction_keys: Sequence[str]
) -> LatentModel:
    gaussian = rng.standard_normal((dim, len(direction_keys)))
    q, _ = np.linalg.qr(gaussian)
    directions = {
        key: np.ascontiguousarray(q[:, i], dtype=np.float32)
        for i, key in enumerate(direction_keys)
    }
    k = min(NOISE_FACTORS, dim)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, k)))
    factor_sd = np.sqrt(NOISE_FACTOR_VARIANCE / np.arange(1, k + 1))
    mean = rng.normal(0.0, MEAN_SD, size=dim)
    return LatentModel(
        mean=mean.astype(np.float32),
        directions=directions,
        noise_basis=basis.astype(np.float32),
        noise_factor_sd=factor_sd.astype(np.float32),
        isotropic_sd=ISOTROPIC_SD,
        patient_share=PATIENT_SHARE,
    )


def with_direction(latent: LatentModel, key: str, rng: np.random.Generator) -> LatentModel:
    """The model with one more unit direction ``key``, orthogonal to every other direction
    (a seeded Gaussian vector with its projections on them removed)."""
    others = np.stack(list(latent.directions.values())).astype(float)
    vector = rng.standard_normal(latent.dim)
    vector -= others.T @ (others @ vector)
    vector -= others.T @ (others @ vector)  # a second pass against rounding
    vector /= np.linalg.norm(vector)
    directions = {**latent.directions, key: vector.astype(np.float32)}
    return replace(latent, directions=directions)
