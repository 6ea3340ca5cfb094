"""Attribution: the scanner whose studies moved is named first; a new vendor is named first."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitor.detect.attribution import Attribution, attribute
from monitor.errors import ValidationError
from tests.detect.support import rate

# Scanner model: (vendor, software version, share of studies, site probabilities).
SCANNERS = {
    "Optima XR240amx": ("GE Healthcare", "DM 5.2", 0.20, [0.6, 0.2, 0.2]),
    "Discovery XR656": ("GE Healthcare", "DM 5.2", 0.25, [0.2, 0.4, 0.4]),
    "Ysio Max": ("Siemens", "VF10", 0.30, [0.3, 0.4, 0.3]),
    "DigitalDiagnost": ("Philips", "4.1", 0.25, [0.3, 0.3, 0.4]),
}
SITES = np.array(["north", "south", "east"])
DIMENSION = 32


def fleet_embeddings(
    rng: np.random.Generator,
    n: int,
    *,
    offsets: dict[str, np.ndarray],
    moved: str | None = None,
    shift: np.ndarray | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Studies with metadata and embeddings: unit noise plus a site and a scanner offset;
    studies of scanner ``moved`` also get ``shift``."""
    names = list(SCANNERS)
    shares = np.array([SCANNERS[s][2] for s in names])
    scanner = np.array(names, dtype=object)[rng.choice(len(names), n, p=shares)]
    site = np.empty(n, dtype=object)
    for name, (_, _, _, site_probs) in SCANNERS.items():
        rows = scanner == name
        site[rows] = SITES[rng.choice(SITES.size, rows.sum(), p=site_probs)]
    embeddings = rng.normal(size=(n, DIMENSION))
    embeddings += np.stack([offsets[s] for s in site]) + np.stack([offsets[s] for s in scanner])
    if moved is not None and shift is not None:
        embeddings[scanner == moved] += shift
    frame = pd.DataFrame(
        {
            "site": site,
            "scanner_model": scanner,
            "vendor": [SCANNERS[s][0] for s in scanner],
            "software_version": [SCANNERS[s][1] for s in scanner],
        }
    )
    return frame, embeddings


def group_offsets(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {name: rng.normal(0.0, 0.3, DIMENSION) for name in [*SITES, *SCANNERS]}


def test_embedding_shares_sum_to_one_per_field_and_fields_are_checked():
    rng = np.random.default_rng(0)
    offsets = group_offsets(rng)
    reference, e_ref = fleet_embeddings(rng, 800, offsets=offsets)
    shift = np.full(DIMENSION, 0.3)
    current, e_cur = fleet_embeddings(rng, 300, offsets=offsets, moved="Ysio Max", shift=shift)
    current.loc[:9, "site"] = None
    ranked = attribute(reference, current, embeddings_ref=e_ref, embeddings_cur=e_cur)
    assert all(isinstance(a, Attribution) and a.basis == "embedding" for a in ranked)
    for field in ("site", "scanner_model", "software_version", "vendor"):
        shares = [a.explained_share for a in ranked if a.field == field]
        assert sum(shares) == pytest.approx(1.0)
    assert any(a.value == "(missing)" and a.n_current == 10 for a in ranked)
    contributions = [a.contribution for a in ranked]
    assert contributions == sorted(contributions, reverse=True)
    with pytest.raises(ValidationError):
        attribute(reference, current, embeddings_ref=e_ref)
    with pytest.raises(ValidationError):
        attribute(reference, current, embeddings_ref=e_ref, embeddings_cur=e_cur[:, :5])
    assert attribute(reference.iloc[:0], current) == []


def test_shifted_scanner_ranks_first(record_property):
    """Optima studies (20% of the window, 60% of them at site north) move by 0.25 reference
    standard deviations in every one of 32 dimensions; reference 1500, window 500 studies.
    Its site, its vendor and its software version contain it and must rank below."""
    first = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        offsets = group_offsets(rng)
        shift = np.full(DIMENSION, 0.25)
        reference, e_ref = fleet_embeddings(rng, 1500, offsets=offsets)
        current, e_cur = fleet_embeddings(
            rng, 500, offsets=offsets, moved="Optima XR240amx", shift=shift
        )
        ranked = attribute(reference, current, embeddings_ref=e_ref, embeddings_cur=e_cur)
        first.append((ranked[0].field, ranked[0].value) == ("scanner_model", "Optima XR240amx"))
    # measured: 0.99 (0.83 at a 0.15 sd shift; by explained share alone: 0.01)
    assert rate(record_property, "share_ranked_first", first) >= 0.95


def test_new_vendor_ranks_first_by_composition(record_property):
    """A Canon scanner at site north sends 5% of a 500-study window; no embeddings."""
    first = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        offsets = group_offsets(rng)
        reference, _ = fleet_embeddings(rng, 1500, offsets=offsets)
        current, _ = fleet_embeddings(rng, 500, offsets=offsets)
        canon = rng.random(500) < 0.05
        current.loc[canon, ["site", "scanner_model", "vendor", "software_version"]] = [
            "north",
            "CXDI-710C",
            "Canon Medical",
            "V3.0",
        ]
        ranked = attribute(reference, current)
        assert all(a.basis == "composition" for a in ranked)
        canon_vendor = next(a for a in ranked if a.value == "Canon Medical")
        # Scanner model and software version hold the same studies: a tie at the top.
        first.append(canon_vendor.contribution == ranked[0].contribution)
        assert canon_vendor.n_reference == 0 and canon_vendor.share_current > 0
    # measured: 1.0
    assert rate(record_property, "share_ranked_first", first) >= 0.95
