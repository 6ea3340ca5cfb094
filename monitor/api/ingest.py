"""Ingestion routes: batches of inference events and radiologist reads, validated whole and
committed before the answer."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from monitor.api.auth import Ingester
from monitor.api.contract import ingestion_request_body
from monitor.api.errors import PayloadTooLarge
from monitor.collect.ingest import IngestResult, store_inferences, store_overrides
from monitor.errors import BatchValidationError
from monitor.runtime import Runtime
from monitor.schema import INFERENCES, OVERRIDES, BatchParser, TimestampBounds

router = APIRouter(tags=["ingest"])


async def read_body(request: Request, max_bytes: int) -> bytearray:
    """The request body, refusing bodies over ``max_bytes`` (413) before reading them whole.
    Read into one buffer: a 2.7 MB batch is not copied again by a join."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > max_bytes:
            raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes")
        body += chunk
    return body


async def _ingest(request: Request, parser: BatchParser, store: Callable[..., IngestResult]
                  ) -> dict[str, int]:
    runtime: Runtime = request.app.state.runtime
    settings = runtime.settings
    body = await read_body(request, settings.max_body_bytes)

    def validate_and_store() -> IngestResult:
        batch = parser.from_json(body, TimestampBounds.from_settings(settings))
        if len(batch) > settings.max_batch_events:
            raise BatchValidationError([{
                "index": None, "field": "body",
                "message": f"batch of {len(batch)} events exceeds the limit of "
                f"{settings.max_batch_events} (MONITOR_MAX_BATCH_EVENTS)",
            }])
        return store(runtime, batch)

    result = await run_in_threadpool(validate_and_store)  # committed before we answer
    return {"accepted": result.accepted, "new": result.new, "duplicates": result.duplicates}


@router.post("/v1/inferences", summary="Log a batch of inference events",
             openapi_extra=ingestion_request_body("inferences"))
async def post_inferences(request: Request, _actor: Ingester) -> dict[str, int]:
    """A JSON list of inference events (see the README's event contract). All or nothing:
    one invalid item rejects the batch with 422 naming its index and field."""
    return await _ingest(request, INFERENCES, store_inferences)


@router.post("/v1/overrides", summary="Log a batch of radiologist reads",
             openapi_extra=ingestion_request_body("overrides"))
async def post_overrides(request: Request, _actor: Ingester) -> dict[str, int]:
    return await _ingest(request, OVERRIDES, store_overrides)
