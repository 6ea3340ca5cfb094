"""The simulated hospital network: model versions, sites, scanners and radiologists.

Three sites share one chest X-ray triage model. ``north`` and ``south`` are hospitals with an
intensive care unit whose daily films are taken on a mobile unit (AP view); ``east`` is an
outpatient centre with a paediatric clinic. Six scanners from four vendors are live from the
start; a seventh (a vendor not seen before) appears at ``east`` only through the ``new-vendor``
episode, and ``XR-SOUTH-1`` gets a second software version only through ``software-update``.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL = "cxr-triage"
FINDING = "pneumothorax"
THRESHOLD = 0.5


@dataclass(frozen=True)
class ModelVersion:
    """One live version of the model and how its scores are made.

    ``logit(pneumothorax score) = intercept + separation * truth + scanner bias + ...``
    (the full formula is in ``monitor.simulate.deployment``). ``traffic_share`` is the fixed
    share of studies routed to this version for the whole deployment.
    """

    version: str
    traffic_share: float
    intercept: float
    separation: float
    latency_median_ms: float


MODEL_VERSIONS: tuple[ModelVersion, ...] = (
    ModelVersion("1.3.0", traffic_share=0.25, intercept=-1.6, separation=2.4,
                 latency_median_ms=65.0),
    ModelVersion("1.4.0", traffic_share=0.75, intercept=-1.7, separation=2.8,
                 latency_median_ms=80.0),
)


@dataclass(frozen=True)
class Site:
    """A site's share of ordinary (non-ICU) studies, its ICU share and its readers."""

    name: str
    study_share: float
    icu_share: float
    paediatric_share: float
    readers: tuple[str, ...]


SITES: tuple[Site, ...] = (
    Site("north", study_share=0.37, icu_share=0.6, paediatric_share=0.0,
         readers=("r01", "r02", "r03", "r04", "r05")),
    Site("south", study_share=0.33, icu_share=0.4, paediatric_share=0.0,
         readers=("r06", "r07", "r08", "r09")),
    Site("east", study_share=0.30, icu_share=0.0, paediatric_share=0.25,
         readers=("r10", "r11", "r12")),
)


@dataclass(frozen=True)
class Scanner:
    """One X-ray unit: its DICOM identity, nominal chest protocol and routing.

    ``site_share`` is the share of the site's ordinary studies it takes (mobile units also take
    every ICU film of their site). ``score_bias`` is a fixed logit offset of the model on this
    unit's images (portable AP films look worse to the model, CR plates a little different).
    """

    station: str
    manufacturer: str
    model: str
    site: str
    modality: str
    software_version: str
    kvp: float
    exposure_mas: float
    pixel_spacing_mm: float
    mobile: bool
    site_share: float
    score_bias: float

    @property
    def vendor(self) -> str:
        return self.manufacturer


BASE_FLEET: tuple[Scanner, ...] = (
    Scanner("XR-NORTH-1", "GE Healthcare", "Discovery XR656", "north", "DX", "DM_Platform 5.2",
            kvp=120.0, exposure_mas=2.0, pixel_spacing_mm=0.2, mobile=False, site_share=0.85,
            score_bias=0.0),
    Scanner("XR-NORTH-2", "GE Healthcare", "Optima XR240amx", "north", "DX", "DM_Platform 5.1",
            kvp=90.0, exposure_mas=3.2, pixel_spacing_mm=0.139, mobile=True, site_share=0.15,
            score_bias=0.2),
    Scanner("XR-SOUTH-1", "SIEMENS", "Ysio Max", "south", "DX", "VF10E",
            kvp=125.0, exposure_mas=1.8, pixel_spacing_mm=0.148, mobile=False, site_share=0.85,
            score_bias=0.0),
    Scanner("XR-SOUTH-2", "Philips Medical Systems", "MobileDiagnost wDR", "south", "DX", "2.2.1",
            kvp=85.0, exposure_mas=3.0, pixel_spacing_mm=0.16, mobile=True, site_share=0.15,
            score_bias=0.15),
    Scanner("XR-EAST-1", "Philips Medical Systems", "DigitalDiagnost C90", "east", "DX", "1.1.3",
            kvp=117.0, exposure_mas=2.2, pixel_spacing_mm=0.148, mobile=False, site_share=0.6,
            score_bias=-0.05),
    Scanner("XR-EAST-2", "Carestream Health", "DirectView CR 975", "east", "CR", "5.7.412",
            kvp=110.0, exposure_mas=3.2, pixel_spacing_mm=0.168, mobile=False, site_share=0.4,
            score_bias=-0.2),
)

# Appears at east with the "new-vendor" episode and then takes NEW_VENDOR_EAST_SHARE of east's
# studies (times the episode's magnitude, at most 0.9), the other east units the rest pro rata.
NEW_VENDOR_SCANNER = Scanner(
    "XR-EAST-3", "FUJIFILM Corporation", "FDR Smart X", "east", "DX", "V10.2",
    kvp=115.0, exposure_mas=2.0, pixel_spacing_mm=0.15, mobile=False, site_share=0.0,
    score_bias=-0.35,
)
NEW_VENDOR_EAST_SHARE = 0.4


@dataclass(frozen=True)
class SoftwareUpdate:
    """What the ``software-update`` episode changes on its scanner."""

    station: str
    new_version: str
    kvp: float
    exposure_mas: float
    pixel_spacing_mm: float


SOFTWARE_UPDATE = SoftwareUpdate(
    "XR-SOUTH-1", new_version="VF12B", kvp=110.0, exposure_mas=2.6, pixel_spacing_mm=0.148,
)

ALL_SCANNERS: tuple[Scanner, ...] = (*BASE_FLEET, NEW_VENDOR_SCANNER)
VIEWS: tuple[str, ...] = ("PA", "AP", "LATERAL")


def scanner_index(station: str) -> int:
    """Position of a station in ``ALL_SCANNERS``."""
    return [s.station for s in ALL_SCANNERS].index(station)


def site_index(name: str) -> int:
    """Position of a site in ``SITES``."""
    return [s.name for s in SITES].index(name)
