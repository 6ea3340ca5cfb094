"""Drift, performance and bias detectors: fitted on a reference, tested on a window, each
returning one ``DetectionResult``. Usable without the service::

    from monitor.detect import MMDDrift
    result = MMDDrift(seed=0).fit(reference_embeddings).test(current_embeddings)
"""

from monitor.detect.attribution import Attribution, attribute
from monitor.detect.bias import SubgroupBias
from monitor.detect.classifier import ClassifierDrift
from monitor.detect.health import HealthScore, health_score
from monitor.detect.metadata import CategoricalDrift, NumericDrift, new_categories
from monitor.detect.mmd import MMDDrift
from monitor.detect.novelty import NoveltyDrift
from monitor.detect.performance import PerformanceDrift, ReadRecord, performance_summary
from monitor.detect.prediction import PositiveRateDrift, ScoreDrift
from monitor.detect.result import DetectionResult, Detector

__all__ = [
    "Attribution",
    "CategoricalDrift",
    "ClassifierDrift",
    "DetectionResult",
    "Detector",
    "HealthScore",
    "MMDDrift",
    "NoveltyDrift",
    "NumericDrift",
    "PerformanceDrift",
    "PositiveRateDrift",
    "ReadRecord",
    "ScoreDrift",
    "SubgroupBias",
    "attribute",
    "health_score",
    "new_categories",
    "performance_summary",
]
