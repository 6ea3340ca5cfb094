"""A short human summary of a simulated deployment (what ``monitor demo`` prints first)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np

from monitor.simulate.fleet import SITES

if TYPE_CHECKING:
    from monitor.simulate.deployment import SimulatedDeployment


def describe(deployment: SimulatedDeployment) -> str:
    """Counts, versions, sites, units, reads and the episode calendar, one fact per line."""
    truth = deployment.truth
    n = truth.time_s.size
    last_day = deployment.end - timedelta(days=1)
    per_patient = np.bincount(truth.patient)
    lines = [
        f"simulated deployment of {deployment.model} (seed {deployment.seed})",
        f"  period {deployment.start:%Y-%m-%d} to {last_day:%Y-%m-%d} ({deployment.days} days);"
        f" clean baseline {deployment.baseline_start:%Y-%m-%d} to "
        f"{deployment.baseline_end - timedelta(days=1):%Y-%m-%d}",
        f"  {n} studies of {int((per_patient > 0).sum())} patients; "
        f"{int((per_patient > 1).sum())} patients imaged more than once "
        f"({int(per_patient[per_patient > 1].sum())} studies)",
    ]
    versions = ", ".join(
        f"{v} {int((truth.model_version == v).sum())}" for v in deployment.model_versions
    )
    lines.append(f"  model versions (fixed traffic split): {versions}")
    sites = ", ".join(f"{s.name} {int((truth.site == s.name).sum())}" for s in SITES)
    lines.append(f"  sites: {sites}")
    stations, counts = np.unique(truth.station, return_counts=True)
    units = {s.station: s for s in deployment.scanners}
    vendors = {units[s].manufacturer for s in stations.tolist()}
    lines.append(f"  scanners: {len(stations)} from {len(vendors)} vendors")
    for station, count in zip(stations.tolist(), counts.tolist(), strict=True):
        unit = units[station]
        lines.append(f"    {station:<11} {unit.manufacturer} {unit.model} "
                     f"({unit.modality}, {unit.site}): {count}")
    delays = (truth.read_time_s - truth.time_s)[truth.read]
    if delays.size:
        lines.append(
            f"  radiologist reads: {int(truth.read.sum())} ({100 * truth.read.mean():.1f}%), "
            f"delay median {np.median(delays) / 3600:.1f} h, "
            f"90th percentile {np.quantile(delays, 0.9) / 3600:.1f} h"
        )
    else:
        lines.append("  radiologist reads: none")
    if deployment.episodes:
        lines.extend(f"  {e.log_line()}" for e in deployment.episodes)
    else:
        lines.append("  no episodes: no shift at any time")
    return "\n".join(lines)
