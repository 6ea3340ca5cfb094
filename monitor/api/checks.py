"""Check and baseline routes: run a check, list and read stored results, serve a check's
Evidently report, create and list baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from monitor.api.auth import Operator, Reader
from monitor.api.params import Name, Offset, PathId, QueryName, UtcTime
from monitor.checks import run_check
from monitor.checks.baselines import create_baseline
from monitor.checks.reports import report_policy
from monitor.checks.run import resolve_report_path
from monitor.errors import NotFoundError
from monitor.runtime import Runtime
from monitor.store import results
from monitor.store.audit import record_audit
from monitor.store.db import session_scope

router = APIRouter(tags=["checks"])
NO_SNIFF = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
MAX_STUDIES = 10_000_000


class CheckRequest(BaseModel):
    """``window`` is a label (1d, 7d, 12h, last:500) ending at ``now`` (default: just after
    the version's newest inference); or give ``start`` and ``end``."""

    model: Name
    version: Name | None = None
    window: Name | None = "1d"
    start: UtcTime = None
    end: UtcTime = None
    now: UtcTime = None


class BaselineRequest(BaseModel):
    """A time range (``start`` and ``end``) or the newest ``last`` studies."""

    model: Name
    version: Name | None = None
    start: UtcTime = None
    end: UtcTime = None
    last: int | None = Field(default=None, ge=1, le=MAX_STUDIES)
    max_studies: int | None = Field(default=None, ge=1, le=MAX_STUDIES)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@router.post("/v1/checks", summary="Run every detector over a window and store the results "
             "(operator; replaces a stored run of the same window; audited)")
def post_check(body: CheckRequest, request: Request, actor: Operator) -> dict[str, Any]:
    runtime = _runtime(request)
    window = None if body.start is not None or body.end is not None else body.window
    outcome = run_check(runtime, model=body.model, version=body.version, window=window,
                        start=body.start, end=body.end, now=body.now,
                        hooks=request.app.state.check_hooks)
    with session_scope(runtime.sessions) as session:
        run = results.get_check_run(session, outcome.check_run_id)
        record_audit(session, actor=actor, action="run_check", model=run.model,
                     model_version=run.version,
                     details={"check_run_id": run.id, "window": run.window_label,
                              "replaced": outcome.replaced})
    return {**run.to_dict(), "replaced": outcome.replaced,
            "attribution": [vars(a) for a in outcome.attribution[:3]]}


@router.get("/v1/checks", summary="Stored check results, newest window first")
def list_results(
    request: Request,
    _actor: Reader,
    model: QueryName = None,
    version: QueryName = None,
    detector: QueryName = None,
    feature: QueryName = None,
    drift: bool | None = None,
    start: UtcTime = None,
    end: UtcTime = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    """Filtered by model, version, detector, feature, verdict, and the window's end in
    (start, end]."""
    with session_scope(_runtime(request).sessions) as session:
        found = results.list_check_results(
            session, model=model, version=version, detector=detector, feature=feature,
            drift=drift, start=start, end=end, limit=limit, offset=offset)
        return [r.to_dict() for r in found]


@router.get("/v1/checks/runs", summary="Check runs (without results), newest window first")
def list_runs(
    request: Request,
    _actor: Reader,
    model: QueryName = None,
    version: QueryName = None,
    start: UtcTime = None,
    end: UtcTime = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    with session_scope(_runtime(request).sessions) as session:
        runs = results.list_check_runs(session, model=model, version=version, start=start,
                                       end=end, limit=limit, offset=offset)
        return [r.to_dict(with_results=False) for r in runs]


@router.get("/v1/checks/{check_id}", summary="One check run with its results")
def get_check(check_id: PathId, request: Request, _actor: Reader) -> dict[str, Any]:
    with session_scope(_runtime(request).sessions) as session:
        return results.get_check_run(session, check_id).to_dict()


@router.get("/v1/checks/{check_id}/report", summary="The check's Evidently report (HTML)",
            response_class=FileResponse)
def get_report(check_id: PathId, request: Request, _actor: Reader) -> FileResponse:
    runtime = _runtime(request)
    with session_scope(runtime.sessions) as session:
        run = results.get_check_run(session, check_id, with_results=False)
    if not run.report_path:
        raise NotFoundError(f"check run id {check_id} has no report"
                            + (f" ({run.error})" if run.error else ""))
    path = resolve_report_path(runtime.settings.reports_dir, run.report_path)
    if not path.is_file():
        raise NotFoundError(f"the report of check run id {check_id} is missing: {path.name}")
    return FileResponse(path, media_type="text/html; charset=utf-8",
                        headers=report_headers(path, check_id))


def report_headers(path: Path, check_id: int) -> dict[str, str]:
    """A report renders inline under the policy written into it (only its own scripts, by
    hash; nothing fetched), in a sandbox (an opaque origin: no access to this API's
    origin) and in no frame. A report written without a policy (by an earlier version) is
    served as an attachment with no script at all: re-run its check to view it here."""
    policy = report_policy(path)
    name = f"check-{check_id}-report.html"
    if policy is None:
        return {"Content-Security-Policy": "default-src 'none'; sandbox; "
                                           "frame-ancestors 'none'",
                "Content-Disposition": f'attachment; filename="{name}"',
                **NO_SNIFF}
    return {"Content-Security-Policy": f"{policy}; frame-ancestors 'none'; "
                                       "sandbox allow-scripts",
            "Content-Disposition": f'inline; filename="{name}"', **NO_SNIFF}


@router.post("/v1/baselines", summary="Create a baseline for a model version (operator; "
             "audited)")
def post_baseline(body: BaselineRequest, request: Request, actor: Operator) -> dict[str, Any]:
    runtime = _runtime(request)
    info = create_baseline(runtime, model=body.model, version=body.version,
                           start=body.start, end=body.end, last=body.last,
                           max_studies=body.max_studies, created_by=actor, seed=body.seed)
    with session_scope(runtime.sessions) as session:
        record_audit(session, actor=actor, action="create_baseline", model=info.model,
                     model_version=info.version,
                     details={"baseline_id": info.id, "n_studies": info.n_studies})
    return info.to_dict()


@router.get("/v1/baselines", summary="Baselines, newest first")
def list_baselines(request: Request, _actor: Reader, model: QueryName = None,
                   version: QueryName = None) -> list[dict[str, Any]]:
    with session_scope(_runtime(request).sessions) as session:
        return [b.to_dict() for b in results.list_baselines(session, model=model,
                                                             version=version)]
