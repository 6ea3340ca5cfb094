"""Fixtures of the embedding-detector tests: simulated windows with and without repeat studies,
and embeddings of real chest X-rays from the shared test data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import SHARED_DATA


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The statistical tests run thousands of small problems, where a second thread only
    adds synchronisation (and the machine's two cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class Windows:
    reference: np.ndarray
    current: np.ndarray
    reference_groups: np.ndarray
    current_groups: np.ndarray


def independent_windows(
    rng: np.random.Generator, n: int, d: int, *, n_current: int | None = None
) -> Windows:
    """Studies drawn independently from N(0, I_d); one patient per study."""
    n_current = n if n_current is None else n_current
    reference = rng.normal(size=(n, d)).astype(np.float32)
    current = rng.normal(size=(n_current, d)).astype(np.float32)
    return Windows(
        reference,
        current,
        np.array([f"r{i}" for i in range(n)]),
        np.array([f"c{i}" for i in range(n_current)]),
    )


def repeat_study_windows(
    rng: np.random.Generator,
    n: int,
    d: int,
    *,
    n_current: int | None = None,
    repeat_share: float = 0.5,
    studies_per_patient: tuple[int, int] = (3, 6),
    patient_sd: float = 0.7,
    shared_share: float = 0.1,
) -> Windows:
    """Both windows from one population of patients, no shift.

    A share ``repeat_share`` of patients has 3-6 studies (ICU follow-ups), each study being the
    patient's own effect vector (N(0, patient_sd² I)) plus independent N(0, I) noise. A share
    ``shared_share`` of these repeat patients has studies in both windows (a patient followed
    across the window boundary); every other patient lies wholly in one window.
    """
    n_current = n if n_current is None else n_current

    def patients(total: int, prefix: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        rows, ids, count, pid = [], [], 0, 0
        while count < total:
            k = rng.integers(studies_per_patient[0], studies_per_patient[1] + 1)
            k = int(min(k if rng.random() < repeat_share else 1, total - count))
            effect = rng.normal(scale=patient_sd, size=d)
            rows.append(effect + rng.normal(size=(k, d)))
            ids.append(np.array([f"{prefix}{pid}"] * k))
            count += k
            pid += 1
        return rows, ids

    ref_rows, ref_ids = patients(n, "r")
    cur_rows, cur_ids = patients(n_current, "c")
    # Some repeat patients of the reference continue into the current window.
    for i, rows in enumerate(ref_rows):
        if rows.shape[0] > 1 and rng.random() < shared_share:
            moved = rng.random(rows.shape[0]) < 0.5
            if 0 < moved.sum() < rows.shape[0]:
                cur_rows.append(rows[moved])
                cur_ids.append(ref_ids[i][moved])
                ref_rows[i], ref_ids[i] = rows[~moved], ref_ids[i][~moved]
    return Windows(
        np.concatenate(ref_rows).astype(np.float32),
        np.concatenate(cur_rows).astype(np.float32),
        np.concatenate(ref_ids),
        np.concatenate(cur_ids),
    )


def subspace_shift(current: np.ndarray, *, size: float, dims: int = 8) -> np.ndarray:
    """Mean shift of Euclidean length ``size`` spread over the first ``dims`` coordinates (a
    scanner software update moving a few features)."""
    shifted = current.copy()
    shifted[:, :dims] += size / np.sqrt(dims)
    return shifted


# Real images -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    root = SHARED_DATA
    if not (root / "pneumoniamnist" / "pneumoniamnist.npz").exists():
        pytest.skip(f"shared test data not found at {root}")
    return root


def embed_images(images: np.ndarray, *, size: int = 28, seed: int = 0) -> np.ndarray:
    """512-d embeddings of grey-scale uint8 images without model weights.

    Images are scaled to [0, 1] and area-resampled to ``size`` x ``size``, then passed through
    a fixed, seeded, untrained two-layer conv net (16 5x5 filters, stride 2, ReLU; 32 3x3
    filters, stride 2, ReLU; 4x4 average pooling): random conv features keep local contrast
    and texture, which is enough for a drift detector to tell sources apart, and a
    photometric inversion (MONOCHROME1 shown as MONOCHROME2) changes them non-linearly.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None] / 255.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    w1 = torch.randn(16, 1, 5, 5, generator=generator) / 5.0
    w2 = torch.randn(32, 16, 3, 3, generator=generator) / np.sqrt(16 * 9)
    with torch.no_grad():
        h = F.relu(F.conv2d(x, w1, stride=2, padding=2))
        h = F.relu(F.conv2d(h, w2, stride=2, padding=1))
        return F.adaptive_avg_pool2d(h, 4).flatten(1).numpy()


@pytest.fixture(scope="session")
def pneumonia_images(shared_data_root: Path) -> np.ndarray:
    return np.load(shared_data_root / "pneumoniamnist" / "pneumoniamnist.npz", allow_pickle=False)[
        "images"
    ]


@pytest.fixture(scope="session")
def nih_images(shared_data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """NIH images (1000, 64, 64) and their patient ids."""
    import pandas as pd

    images = np.load(shared_data_root / "nih_cxr14" / "images.npz", allow_pickle=False)["images"]
    meta = pd.read_csv(shared_data_root / "nih_cxr14" / "metadata.csv")
    return images, meta["patient_id"].to_numpy().astype(str)
