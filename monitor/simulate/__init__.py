"""A seeded, simulated deployment of a chest X-ray triage model, for the demo and the tests."""

from monitor.schema import decode_embedding, encode_embedding
from monitor.simulate.deployment import (
    DEFAULT_START,
    EventBatch,
    SimulatedDeployment,
    StudyTruth,
    describe,
    simulate_deployment,
)
from monitor.simulate.episodes import (
    BASELINE_DAYS,
    CATALOGUE,
    DEFAULT_EPISODES,
    Episode,
    EpisodeSpec,
)
from monitor.simulate.latent import EFFECT_SCALES, SOFTWARE_UPDATE_SHIFT, LatentModel

__all__ = [
    "BASELINE_DAYS",
    "CATALOGUE",
    "DEFAULT_EPISODES",
    "DEFAULT_START",
    "EFFECT_SCALES",
    "SOFTWARE_UPDATE_SHIFT",
    "Episode",
    "EpisodeSpec",
    "EventBatch",
    "LatentModel",
    "SimulatedDeployment",
    "StudyTruth",
    "decode_embedding",
    "describe",
    "encode_embedding",
    "simulate_deployment",
]
