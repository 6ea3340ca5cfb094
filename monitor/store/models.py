"""The tables. SQLAlchemy 2 typed models; the same code runs on SQLite and PostgreSQL.

Schema changes go through Alembic (``monitor/store/migrations``); the service refuses a
database that is not at the migrations' head (``monitor.store.db.head_revision``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from monitor.vocabulary import PRODUCTION

# Named constraints, so migrations match on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (which keeps no offset) and PostgreSQL alike.
    A naive datetime is taken to be UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: UTCDateTime(),
    }


class ModelVersion(Base):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model", "version", name="uq_model_version_model_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    # candidate | shadow | active | retired | rolled_back
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    # Registered by the first accepted embedding; later events must match it.
    embedding_dim: Mapped[int | None] = mapped_column(Integer)
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ModelAlias(Base):
    """(model, alias) -> version; moving ``production`` is one row update (rollback)."""

    __tablename__ = "model_alias"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    updated_at: Mapped[datetime]


class Inference(Base):
    __tablename__ = "inference"
    __table_args__ = (
        Index("ix_inference_version_ts", "model_version_id", "ts"),  # time windows
        Index("ix_inference_model_study", "model", "study_key"),  # override join
        Index("ix_inference_model_ts", "model", "ts"),  # per-model summaries
        # idempotency key: one event per (model, event_id); another model's id is its own
        UniqueConstraint("model", "event_id", name="uq_inference_model_event_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    model: Mapped[str] = mapped_column(String(128))
    ts: Mapped[datetime]
    received_at: Mapped[datetime]
    study_key: Mapped[str] = mapped_column(String(32))  # HMAC of the study UID
    patient_key: Mapped[str | None] = mapped_column(String(32))  # HMAC of the patient ID
    sex: Mapped[str | None] = mapped_column(String(1))
    age_years: Mapped[float | None] = mapped_column(Float)  # capped at 90 (safe harbour)
    age_band: Mapped[str | None] = mapped_column(String(8))
    manufacturer: Mapped[str | None] = mapped_column(String(128))
    vendor: Mapped[str | None] = mapped_column(String(64))  # normalised manufacturer
    scanner_model: Mapped[str | None] = mapped_column(String(128))
    station: Mapped[str | None] = mapped_column(String(128))
    site: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    view: Mapped[str | None] = mapped_column(String(32))
    kvp: Mapped[float | None] = mapped_column(Float)
    exposure_mas: Mapped[float | None] = mapped_column(Float)
    pixel_spacing_mm: Mapped[float | None] = mapped_column(Float)
    photometric: Mapped[str | None] = mapped_column(String(32))
    software_version: Mapped[str | None] = mapped_column(String(512))
    tags: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)
    score: Mapped[float | None] = mapped_column(Float)  # the first (primary) finding's score
    positive: Mapped[bool | None] = mapped_column(Boolean)
    threshold: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    # During a key rotation the keys above stay under the previous key (so joins and repeat
    # studies keep linking) and these hold the new key's pseudonyms; finishing the rotation
    # moves them into place (``monitor rotate-key --finish``).
    study_key_next: Mapped[str | None] = mapped_column(String(32))
    patient_key_next: Mapped[str | None] = mapped_column(String(32))
    # float32 little-endian; last column so scans of the others skip its overflow pages
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)


class Override(Base):
    """A radiologist read. Joined to inferences by (model, study_key) at query time, so a read
    that arrives before its inference is kept and joins as soon as the inference lands."""

    __tablename__ = "override"
    __table_args__ = (
        Index("ix_override_model_study", "model", "study_key"),  # join to inference
        Index("ix_override_model_ts", "model", "ts"),
        UniqueConstraint("model", "event_id", name="uq_override_model_event_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(128))
    study_key: Mapped[str] = mapped_column(String(32))
    ts: Mapped[datetime]
    received_at: Mapped[datetime]
    radiologist_positive: Mapped[bool] = mapped_column(Boolean)
    finding: Mapped[str | None] = mapped_column(String(128))
    agrees_with_model: Mapped[bool | None] = mapped_column(Boolean)
    reader_key: Mapped[str | None] = mapped_column(String(32))
    study_key_next: Mapped[str | None] = mapped_column(String(32))  # see Inference
    reader_key_next: Mapped[str | None] = mapped_column(String(32))


class Baseline(Base):
    """A model version's reference: its member studies and the detectors' fitted state."""

    __tablename__ = "baseline"
    __table_args__ = (Index("ix_baseline_version", "model_version_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(128))
    window_start: Mapped[datetime | None]
    window_end: Mapped[datetime | None]
    n_studies: Mapped[int] = mapped_column(Integer)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # rates, frequencies, ...
    fitted_state: Mapped[bytes | None] = mapped_column(LargeBinary)  # npz of arrays


class BaselineMember(Base):
    __tablename__ = "baseline_member"

    baseline_id: Mapped[int] = mapped_column(
        ForeignKey("baseline.id", ondelete="CASCADE"), primary_key=True
    )
    inference_id: Mapped[int] = mapped_column(ForeignKey("inference.id"), primary_key=True)


class CheckRun(Base):
    """One run of every detector over one window of one model version."""

    __tablename__ = "check_run"
    __table_args__ = (
        # idempotent per window: re-running a window replaces its results
        UniqueConstraint("model_version_id", "window_start", "window_end", "window_kind",
                         name="uq_check_run_window"),
        Index("ix_check_run_version_end", "model_version_id", "window_end"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    baseline_id: Mapped[int | None] = mapped_column(ForeignKey("baseline.id"))
    window_kind: Mapped[str] = mapped_column(String(16))  # time | count
    window_label: Mapped[str] = mapped_column(String(64))  # 1d, 7d, last:500
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | ok | failed
    n_studies: Mapped[int] = mapped_column(Integer, default=0)
    health_score: Mapped[float | None] = mapped_column(Float)
    health_status: Mapped[str | None] = mapped_column(String(8))
    report_path: Mapped[str | None] = mapped_column(String(512))
    error: Mapped[str | None] = mapped_column(Text)


class CheckResult(Base):
    __tablename__ = "check_result"
    __table_args__ = (
        UniqueConstraint("check_run_id", "detector", "feature", name="uq_check_result_key"),
        Index("ix_check_result_detector", "detector", "feature"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    check_run_id: Mapped[int] = mapped_column(ForeignKey("check_run.id", ondelete="CASCADE"))
    detector: Mapped[str] = mapped_column(String(64))
    feature: Mapped[str] = mapped_column(String(256))
    statistic: Mapped[float] = mapped_column(Float)
    p_value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    drift: Mapped[bool] = mapped_column(Boolean)
    n_reference: Mapped[int] = mapped_column(Integer)
    n_current: Mapped[int] = mapped_column(Integer)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Alert(Base):
    """Alert state, deduplicated by a stable key (rule + labels)."""

    __tablename__ = "alert"
    __table_args__ = (Index("ix_alert_state", "state", "severity"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(128), unique=True)
    rule: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(128))
    severity: Mapped[str] = mapped_column(String(16))  # info | warning | critical
    state: Mapped[str] = mapped_column(String(16))  # pending | firing | resolved
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    summary: Mapped[str | None] = mapped_column(Text)
    consecutive: Mapped[int] = mapped_column(Integer, default=0)  # windows with the condition
    firing_windows: Mapped[int] = mapped_column(Integer, default=0)  # of them, while firing
    last_window_end: Mapped[datetime | None]  # newest window counted (re-checks don't count)
    started_at: Mapped[datetime]
    fired_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    acknowledged_at: Mapped[datetime | None]
    silenced_until: Mapped[datetime | None]
    last_check_run_id: Mapped[int | None] = mapped_column(ForeignKey("check_run.id"))
    # The incident this finding belongs to (its cause's); kept after the alert resolves.
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incident.id"))


# An open incident is unique per (model, version, cause): a partial unique index, which
# SQLite and PostgreSQL both enforce (``monitor.alerting.incidents`` also looks before it adds).
OPEN_INCIDENT = "state = 'open'"


class Incident(Base):
    """Findings (alerts) of one model version that share a cause: what notifies, once when it
    opens, again on escalation (warning -> critical) and when it resolves or is accepted."""

    __tablename__ = "incident"
    __table_args__ = (
        Index("ix_incident_state", "state", "severity"),
        Index("ix_incident_version", "model", "model_version", "state"),
        Index("uq_incident_open_cause", "model", "model_version", "cause_field", "cause_value",
              unique=True, sqlite_where=text(OPEN_INCIDENT),
              postgresql_where=text(OPEN_INCIDENT)),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128))
    # station | scanner_model | software_version | site | vendor | a subgroup's field
    # (age_band, sex, view, ...) | version
    cause_field: Mapped[str] = mapped_column(String(64))
    cause_value: Mapped[str] = mapped_column(String(512))
    cause_label: Mapped[str] = mapped_column(Text)  # in words: "XR-SOUTH-1 (SIEMENS Ysio Max)"
    state: Mapped[str] = mapped_column(String(16))  # open | resolved | accepted
    severity: Mapped[str] = mapped_column(String(16))  # warning | critical
    opened_at: Mapped[datetime]
    first_evidence_day: Mapped[date | None] = mapped_column(Date)  # earliest ``since``
    paged_at: Mapped[datetime | None]
    escalated_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    # cause gone | rolled back | no longer live | accepted
    resolved_reason: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)
    # per finding: rule, detector, feature, family, level, statistic, since, effect, ...
    evidence: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # grid windows in a row in which none of its alerts was pending or firing (hysteresis)
    quiet_windows: Mapped[int] = mapped_column(Integer, default=0)
    last_check_run_id: Mapped[int | None] = mapped_column(ForeignKey("check_run.id"))
    last_window_end: Mapped[datetime | None]
    accepted_by: Mapped[str | None] = mapped_column(String(128))
    accepted_at: Mapped[datetime | None]
    accept_reason: Mapped[str | None] = mapped_column(Text)
    accepted_since: Mapped[date | None] = mapped_column(Date)
    updated_at: Mapped[datetime]


class Notification(Base):
    """One delivery of an incident's event (opened, escalated, resolved) to one channel;
    failures are retried and recorded here. ``alert_id`` is set on rows written before
    incidents (revision 0004), which notified per alert."""

    __tablename__ = "notification"
    __table_args__ = (Index("ix_notification_status", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alert.id"))
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incident.id"))
    channel: Mapped[str] = mapped_column(String(32))  # alertmanager | webhook | email
    target: Mapped[str] = mapped_column(String(512))
    event: Mapped[str] = mapped_column(String(16))  # firing | escalated | resolved
    status: Mapped[str] = mapped_column(String(16))  # pending | sent | failed | silenced
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]


class RollbackRecommendation(Base):
    __tablename__ = "rollback_recommendation"
    __table_args__ = (Index("ix_rollback_model_status", "model", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    from_version: Mapped[str] = mapped_column(String(128))
    to_version: Mapped[str] = mapped_column(String(128))
    policy: Mapped[str] = mapped_column(String(128))
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alert.id"))
    # pending | executed | rejected (a manual rollback is recorded as executed, policy "manual")
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[datetime | None]
    decision_reason: Mapped[str | None] = mapped_column(Text)
    hook_status: Mapped[str | None] = mapped_column(String(16))  # pending | sent | failed
    hook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    hook_error: Mapped[str | None] = mapped_column(Text)
    hook_next_attempt_at: Mapped[datetime | None]
    alias: Mapped[str] = mapped_column(String(64), default=PRODUCTION)


class AuditEntry(Base):
    """Append-only: the migration installs triggers that refuse UPDATE and DELETE."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_model_ts", "model", "ts"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ts: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    alert_id: Mapped[int | None] = mapped_column(Integer)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ApiToken(Base):
    """A bearer token. Only its SHA-256 digest is stored; ``prefix`` (the first characters of
    the token, not secret on their own) finds the row without a scan. Tokens are 32+ random
    bytes, so a fast hash is enough: there is nothing to brute-force."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # ingest | read | operator | admin
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    digest: Mapped[str] = mapped_column(String(64))  # hex SHA-256 of the whole token
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None]


class PseudonymKey(Base):
    """Fingerprints of the pseudonymisation keys this database's keys were made with, so a
    different key is refused at start-up instead of silently breaking every join. ``state``:
    current | previous (a rotation in progress: events get both pseudonyms) | retired."""

    __tablename__ = "pseudonym_key"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    retired_at: Mapped[datetime | None]
