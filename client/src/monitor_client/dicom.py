"""The ``scanner`` and ``patient`` parts of an inference event, read from a DICOM header.

A header is a pydicom ``Dataset`` or a DICOM JSON object (PS3.18 F.2: a dict keyed by
8-hex-digit tags, ``{"00080070": {"vr": "LO", "Value": ["GE MEDICAL SYSTEMS"]}}``).

Privacy: only the tags in ``ALLOWED_TAGS`` are ever read; nothing else in the header is
looked at. Of the patient-level tags, ``PatientID`` is returned raw (the service turns it
into a keyed hash before storage, so repeat studies of one patient can be linked), and
``PatientSex`` is returned as is. ``PatientAge`` and ``PatientBirthDate`` are read only to
derive ``age_years``: the birth date itself is never returned. PatientName,
AccessionNumber, addresses and free-text comments are not in the allow-list, so they are
never read and never appear in anything this module returns. ``load_header`` drops every
other tag when it reads a file, so they do not even reach memory.

Errors: a header that is not a ``Dataset`` or a DICOM JSON dict, a JSON element of the
wrong shape, or a numeric tag (KVP, Exposure, pixel spacing) holding text that is not a
number raises ``monitor_client.errors.ValidationError`` naming the tag. A missing or empty tag
gives ``None``. Dates and ages are the exception: real archives are full of junk dates
("11111111", "1997.04.24", empty strings), so an unusable date or age string only makes
``age_years`` ``None``.
"""

from __future__ import annotations

import functools
import io
import json
import math
import numbers
import os
import re
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any, BinaryIO, Final

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from monitor_client.errors import ValidationError, clip

DicomHeader = Dataset | Mapping[str, Any]

# keyword -> DICOM JSON tag. The only tags this module reads (see the module docstring).
ALLOWED_TAGS: Final[Mapping[str, str]] = {
    "SpecificCharacterSet": "00080005",  # needed to decode text, not patient data
    "Manufacturer": "00080070",
    "ManufacturerModelName": "00081090",
    "StationName": "00081010",
    "InstitutionName": "00080080",
    "Modality": "00080060",
    "BodyPartExamined": "00180015",
    "ViewPosition": "00185101",
    "KVP": "00180060",
    "Exposure": "00181152",  # mAs
    "ExposureInmAs": "00189332",  # mAs, enhanced multi-frame objects
    "ExposureInuAs": "00181153",  # µAs
    "PixelSpacing": "00280030",
    "ImagerPixelSpacing": "00181164",
    "PhotometricInterpretation": "00280004",
    "SoftwareVersions": "00181020",
    "StudyInstanceUID": "0020000D",
    "StudyDate": "00080020",
    "AcquisitionDate": "00080022",
    "ContentDate": "00080023",
    "PatientID": "00100020",  # returned raw; pseudonymised by the service
    "PatientSex": "00100040",
    "PatientAge": "00101010",  # read only to derive age_years
    "PatientBirthDate": "00100030",  # read only to derive age_years, never returned
}

# Tags whose values must never be echoed in an error message.
_PATIENT_TAGS: Final = frozenset({"PatientID", "PatientSex", "PatientAge", "PatientBirthDate"})

VENDOR_MAX_LENGTH: Final = 64  # as the Manufacturer it comes from (LO)
MAX_AGE_YEARS: Final = 130  # a derived age above this is a junk date, not a patient
AGE_BANDS = ("0-17", "18-39", "40-64", "65-79", "80+")  # what age_band returns, youngest first
_AGE_STRING = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_DICOM_JSON_KEY = re.compile(r"^[0-9A-Fa-f]{8}$")
_SEXES: Final = frozenset({"F", "M", "O"})

# (predicate on the cleaned, upper-case name, vendor). Canon Medical Systems is the former
# Toshiba Medical Systems (bought by Canon in 2016, renamed 2018): same product lines and
# software lineage, so the two names are one vendor for grouping.
_VENDOR_RULES: Final[tuple[tuple[Callable[[str, str], bool], str], ...]] = (
    (lambda key, first: first in {"GE", "GEMS"} or key.startswith("GENERAL ELECTRIC"), "GE"),
    (lambda key, first: first.startswith("PHILIPS"), "Philips"),
    (lambda key, first: first.startswith("SIEMENS"), "Siemens"),
    (lambda key, first: first.startswith("FUJI"), "Fujifilm"),
    (lambda key, first: first.startswith(("TOSHIBA", "CANON")), "Canon/Toshiba"),
    (lambda key, first: first.startswith("CARESTREAM"), "Carestream"),
)


@functools.lru_cache(maxsize=4096)  # few spellings, called for every event
def normalise_manufacturer(manufacturer: str | None) -> str | None:
    """Vendor name for grouping: the many spellings of one manufacturer give one name.

    "GE MEDICAL SYSTEMS", "G.E. Medical Systems", "GE Healthcare" → "GE"; "Philips Medical
    Systems" → "Philips"; "SIEMENS", "Siemens Healthineers" → "Siemens"; "FUJI PHOTO FILM CO.
    LTD.", "FUJIFILM Corporation" → "Fujifilm"; "TOSHIBA_MEC", "Canon Medical Systems" →
    "Canon/Toshiba" (Canon bought Toshiba Medical Systems; one product lineage); any other
    name → its stripped, whitespace-collapsed title case ("SonoSite, Inc." → "Sonosite, Inc.").
    """
    if manufacturer is None:
        return None
    collapsed = " ".join(manufacturer.split())
    if not collapsed:
        return None
    key = re.sub(r"[^A-Z0-9]+", " ", collapsed.upper().replace(".", "")).strip()
    first = key.split(" ", 1)[0] if key else ""
    for matches, vendor in _VENDOR_RULES:
        if matches(key, first):
            return vendor
    # title case can lengthen a name ("ß" -> "Ss"); the vendor is at most a manufacturer's LO
    return collapsed.title()[:VENDOR_MAX_LENGTH]


def age_band(age_years: float | None) -> str | None:
    """The age band: "0-17", "18-39", "40-64", "65-79", "80+", or None when the age is unknown.

    The oldest patients have a band of their own, so a change that affects only them is not
    diluted by the 65-79 year olds (migration 0003 re-banded studies stored under "65+")."""
    if age_years is None:
        return None
    if isinstance(age_years, bool) or not isinstance(age_years, numbers.Real):
        raise ValidationError(
            f"age_years must be a number, got {type(age_years).__name__}", field="age_years"
        )
    if math.isnan(age_years):
        return None
    if age_years < 0:
        raise ValidationError(f"age_years {age_years} is negative", field="age_years")
    if age_years < 18:
        return "0-17"
    if age_years < 40:
        return "18-39"
    if age_years < 65:
        return "40-64"
    if age_years < 80:
        return "65-79"
    return "80+"


def scanner_from_dicom(
    header: DicomHeader, *, site: str | Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The event's ``scanner`` dict.

    ``site``: a string is used as the site as is; a mapping translates InstitutionName to a
    site name (an institution missing from it keeps its own name); None uses
    InstitutionName.
    """
    _check_header(header)
    manufacturer = _text(header, "Manufacturer")
    institution = _text(header, "InstitutionName")
    if isinstance(site, str):
        site_name: str | None = site
    elif isinstance(site, Mapping):
        site_name = site.get(institution, institution) if institution is not None else None
    elif site is None:
        site_name = institution
    else:
        raise ValidationError(
            f"site must be a string, a mapping or None, got {type(site).__name__}", field="site"
        )
    return {
        "manufacturer": manufacturer,
        "vendor": normalise_manufacturer(manufacturer),
        "model": _text(header, "ManufacturerModelName"),
        "station": _text(header, "StationName"),
        "site": site_name,
        "modality": _text(header, "Modality"),
        "body_part": _text(header, "BodyPartExamined"),
        "view": _text(header, "ViewPosition"),
        "kvp": _number(header, "KVP"),
        "exposure_mas": _exposure_mas(header),
        "pixel_spacing_mm": _pixel_spacing_mm(header),
        "photometric": _text(header, "PhotometricInterpretation"),
        "software_version": _software_version(header),
    }


def patient_from_dicom(header: DicomHeader) -> dict[str, Any]:
    """The event's ``patient`` dict: ``{"id", "sex", "age_years"}``.

    ``id`` is the raw PatientID (the service pseudonymises it before storage); ``sex`` is
    "F", "M", "O" or None; ``age_years`` is whole years from PatientAge, else from
    PatientBirthDate and the first valid StudyDate / AcquisitionDate / ContentDate, else None.
    """
    _check_header(header)
    sex = _text(header, "PatientSex")
    sex = sex.upper() if sex is not None else None
    return {
        "id": _text(header, "PatientID"),
        "sex": sex if sex in _SEXES else None,
        "age_years": _age_years(header),
    }


def study_uid_from_dicom(header: DicomHeader) -> str | None:
    """StudyInstanceUID, for the event's ``study_uid`` (pseudonymised by the service)."""
    _check_header(header)
    uid = _text(header, "StudyInstanceUID")
    if uid is None:
        return None
    return uid.rstrip("\x00") or None


def event_parts_from_dicom(
    header: DicomHeader, *, site: str | Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``{"scanner": ..., "patient": ..., "study_uid": ...}`` for an inference event."""
    return {
        "scanner": scanner_from_dicom(header, site=site),
        "patient": patient_from_dicom(header),
        "study_uid": study_uid_from_dicom(header),
    }


def restrict_to_allowed_tags(header: DicomHeader) -> DicomHeader:
    """A copy of the header holding only ``ALLOWED_TAGS`` (same type as the input)."""
    _check_header(header)
    if isinstance(header, Dataset):
        reduced = Dataset()
        for keyword in ALLOWED_TAGS:
            element = _dataset_element(header, keyword)
            if element is not None:
                reduced[element.tag] = element
        return reduced
    reduced_json: dict[str, Any] = {}
    for tag in ALLOWED_TAGS.values():
        for key in (tag, tag.lower()):
            if key in header:
                reduced_json[key] = header[key]
    return reduced_json


def load_header(
    source: str | os.PathLike[str] | bytes | BinaryIO | DicomHeader,
    *,
    only_allowed_tags: bool = True,
) -> DicomHeader:
    """A header from a DICOM file (path, bytes or binary file), a ``.json`` DICOM JSON file,
    a ``Dataset`` or a DICOM JSON dict.

    Files are read with ``stop_before_pixels=True``: pixel data is never read or decoded.
    With ``only_allowed_tags`` (the default) the result holds only ``ALLOWED_TAGS``, so
    names, birth dates and the rest of the header never reach memory from a file.
    """
    if isinstance(source, Dataset | Mapping):
        header: DicomHeader = source
    elif isinstance(source, str | os.PathLike) and Path(source).suffix.lower() == ".json":
        header = _load_json_file(Path(source))
    elif isinstance(source, str | os.PathLike | bytes | bytearray) or hasattr(source, "read"):
        return _read_dicom_file(source, only_allowed_tags=only_allowed_tags)  # already reduced
    else:
        raise ValidationError(
            f"DICOM header source must be a path, bytes, a binary file, a pydicom Dataset or "
            f"a DICOM JSON dict, got {type(source).__name__}",
            field="dicom",
        )
    _check_header(header)
    return restrict_to_allowed_tags(header) if only_allowed_tags else header


def _read_dicom_file(
    source: str | os.PathLike[str] | bytes | bytearray | BinaryIO, *, only_allowed_tags: bool
) -> Dataset:
    fp = io.BytesIO(bytes(source)) if isinstance(source, bytes | bytearray) else source
    tags = list(ALLOWED_TAGS) if only_allowed_tags else None
    try:
        return pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=tags)
    except InvalidDicomError as error:
        name = os.fspath(source) if isinstance(source, str | os.PathLike) else "<bytes>"
        raise ValidationError(f"{name} is not a DICOM file: {error}", field="dicom") from error


def _load_json_file(path: Path) -> Mapping[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValidationError(f"{path} is not valid JSON: {error}", field="dicom") from error
    if isinstance(loaded, list) and len(loaded) == 1:  # WADO-RS metadata: one instance
        loaded = loaded[0]
    if not isinstance(loaded, Mapping):
        raise ValidationError(
            f"{path} must hold one DICOM JSON object, got {type(loaded).__name__}", field="dicom"
        )
    return loaded


def _check_header(header: object) -> None:
    if isinstance(header, Dataset):
        return
    if not isinstance(header, Mapping):
        raise ValidationError(
            f"DICOM header must be a pydicom Dataset or a DICOM JSON dict, "
            f"got {type(header).__name__}",
            field="dicom",
        )
    for key in header:
        if not isinstance(key, str) or not _DICOM_JSON_KEY.match(key):
            raise ValidationError(
                f"DICOM JSON keys are 8 hex digits such as '00080070', got {clip(repr(key))}",
                field="dicom",
            )


def _label(keyword: str) -> str:
    tag = ALLOWED_TAGS[keyword]
    return f"{keyword} ({tag[:4]},{tag[4:]})"


def _dataset_element(header: Dataset, keyword: str) -> Any:
    try:
        return header.get(Tag(int(ALLOWED_TAGS[keyword], 16)))
    except (ValueError, TypeError, KeyError) as error:
        raise ValidationError(
            f"{_label(keyword)} cannot be read: {error}", field=keyword
        ) from error


def _values(header: DicomHeader, keyword: str) -> list[Any]:
    """The tag's values as a list; [] when the tag is missing or empty."""
    if isinstance(header, Dataset):
        element = _dataset_element(header, keyword)
        value = None if element is None else element.value
        if value is None or value == "":
            return []
        if isinstance(value, MultiValue | list | tuple):
            return list(value)
        return [value]
    tag = ALLOWED_TAGS[keyword]
    element = header.get(tag, header.get(tag.lower()))
    if element is None:
        return []
    if not isinstance(element, Mapping):
        raise ValidationError(
            f"{_label(keyword)} must be a DICOM JSON object with 'vr' and 'Value', "
            f"got {type(element).__name__}",
            field=keyword,
        )
    vr = element.get("vr")
    if vr is not None and not (isinstance(vr, str) and len(vr) == 2):
        raise ValidationError(f"{_label(keyword)} has an invalid vr {clip(repr(vr))}",
                              field=keyword)
    value = element.get("Value")
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(
            f"{_label(keyword)} 'Value' must be a list, got {type(value).__name__}",
            field=keyword,
        )
    return value


def _wrong_type(keyword: str, expected: str, value: Any) -> ValidationError:
    shown = type(value).__name__ if keyword in _PATIENT_TAGS else clip(repr(value))
    return ValidationError(f"{_label(keyword)} must be {expected}, got {shown}", field=keyword)


def _as_text(keyword: str, value: Any) -> str | None:
    if not isinstance(value, str):
        raise _wrong_type(keyword, "text", value)
    return value.strip() or None


def _text(header: DicomHeader, keyword: str) -> str | None:
    values = _values(header, keyword)
    return _as_text(keyword, values[0]) if values else None


def _as_number(keyword: str, value: Any) -> float | None:
    if isinstance(value, bool):
        raise _wrong_type(keyword, "a number", value)
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        if not value.strip():
            return None
        try:
            number = float(value)
        except ValueError:
            raise _wrong_type(keyword, "a number", value) from None
    else:
        raise _wrong_type(keyword, "a number", value)
    if not math.isfinite(number):
        raise _wrong_type(keyword, "a finite number", value)
    return number


def _number(header: DicomHeader, keyword: str) -> float | None:
    values = _values(header, keyword)
    return _as_number(keyword, values[0]) if values else None


def _exposure_mas(header: DicomHeader) -> float | None:
    for keyword in ("Exposure", "ExposureInmAs"):
        exposure = _number(header, keyword)
        if exposure is not None:
            return exposure
    exposure_uas = _number(header, "ExposureInuAs")
    return exposure_uas / 1000.0 if exposure_uas is not None else None


def _pixel_spacing_mm(header: DicomHeader) -> float | None:
    """Row spacing (the first value: distance between adjacent rows), in mm."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = _number(header, keyword)
        if spacing is not None:
            return spacing
    return None


def _software_version(header: DicomHeader) -> str | None:
    parts = [_as_text("SoftwareVersions", v) for v in _values(header, "SoftwareVersions")]
    joined = "/".join(p for p in parts if p)
    return joined or None


def _age_years(header: DicomHeader) -> int | None:
    age_string = _text(header, "PatientAge")
    if age_string is not None:
        from_age_string = _years_from_age_string(age_string)
        if from_age_string is not None:
            return from_age_string
    birth = _date(_text(header, "PatientBirthDate"))
    if birth is None:
        return None
    for keyword in ("StudyDate", "AcquisitionDate", "ContentDate"):
        reference = _date(_text(header, keyword))
        if reference is not None:
            before_birthday = (reference.month, reference.day) < (birth.month, birth.day)
            return _plausible(reference.year - birth.year - before_birthday)
    return None


def _years_from_age_string(age_string: str) -> int | None:
    """Whole years from a DICOM AS value ("054Y", "006M", "012W", "003D"); None if unusable."""
    match = _AGE_STRING.match(age_string)
    if match is None:
        return None
    count, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    if unit == "Y":
        years = count
    elif unit == "M":
        years = count // 12
    else:  # whole years from days, 1461 days per 4 years (integer arithmetic, no rounding)
        days = count * 7 if unit == "W" else count
        years = days * 4 // 1461
    return _plausible(years)


def _plausible(years: int) -> int | None:
    return years if 0 <= years <= MAX_AGE_YEARS else None


def _date(text: str | None) -> date | None:
    """A DA value ("20040826"; the old "2004.08.26" form too); None if it is not a date."""
    if text is None:
        return None
    digits = text.replace(".", "").replace("-", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None
