"""A seeded, simulated deployment of a chest X-ray triage model, for the demo, the tests and the
surveillance benchmark."""

from monitor_client.codec import decode_embedding, encode_embedding

from monitor.simulate.deployment import (
    DEFAULT_START,
    STUDIES_PER_DAY,
    EventBatch,
    SimulatedDeployment,
    StudyTruth,
    simulate_deployment,
)
from monitor.simulate.episodes import (
    ACCEPTED_CHANGE,
    BASELINE_DAYS,
    CATALOGUE,
    DEFAULT_EPISODES,
    Cause,
    Episode,
    EpisodeSpec,
    episode_spec,
)
from monitor.simulate.latent import (
    EFFECT_SCALES,
    INVERSION_SHIFT,
    SOFTWARE_UPDATE_SHIFT,
    LatentModel,
)
from monitor.simulate.summary import describe

__all__ = [
    "ACCEPTED_CHANGE",
    "BASELINE_DAYS",
    "CATALOGUE",
    "DEFAULT_EPISODES",
    "DEFAULT_START",
    "EFFECT_SCALES",
    "INVERSION_SHIFT",
    "SOFTWARE_UPDATE_SHIFT",
    "STUDIES_PER_DAY",
    "Cause",
    "Episode",
    "EpisodeSpec",
    "EventBatch",
    "LatentModel",
    "SimulatedDeployment",
    "StudyTruth",
    "decode_embedding",
    "describe",
    "encode_embedding",
    "episode_spec",
    "simulate_deployment",
]
