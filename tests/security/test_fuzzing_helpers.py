"""The fuzz harness reads schemathesis's console and the server's log: these readers must see
every server error, once."""

from __future__ import annotations

from tests.security.fuzzing import (
    Seeded,
    console_failures,
    response_statuses,
    server_errors,
    with_examples,
)

SERVER_LOG = """\
INFO:     127.0.0.1:40000 - "GET /v1/checks/1 HTTP/1.1" 200 OK
2026-12-02 15:00:01,000 ERROR monitor.api.errors: unhandled error: DataError
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/starlette/routing.py", line 683, in __call__
    await self.middleware_stack(scope, receive, send)
  File "/work/main/monitor/store/results.py", line 238, in get_check_run
    row = session.get(CheckRun, check_id)
  File "/venv/lib/python3.11/site-packages/sqlalchemy/engine/base.py", line 1967, in _exec
    self.dialect.do_execute(
sqlalchemy.exc.DataError: (psycopg.errors.NumericValueOutOfRange) integer out of range
[SQL: SELECT check_run.id FROM check_run WHERE check_run.id = %(pk_1)s::INTEGER]
[parameters: {'pk_1': 9223372036854775806}]
(Background on this error at: https://sqlalche.me/e/21/9h9h)
INFO:     127.0.0.1:40000 - "GET /v1/checks/9223372036854775806 HTTP/1.1" 500 Internal Server Error
ERROR:    Exception in ASGI application
Traceback (most recent call last):
  File "/work/main/monitor/store/results.py", line 238, in get_check_run
    row = session.get(CheckRun, check_id)
sqlalchemy.exc.DataError: (psycopg.errors.NumericValueOutOfRange) integer out of range
(Background on this error at: https://sqlalche.me/e/21/9h9h)
INFO:     127.0.0.1:40002 - "QUERY /v1/checks HTTP/1.1" 405 Method Not Allowed
"""

CONSOLE = """\
=================================== FAILURES ===================================
__________________________ GET /v1/checks/{check_id} ___________________________
1. Test Case ID: dMqNT5

- ST101 Server error

[500] Internal Server Error:

Reproduce with:

    curl -X GET -H 'Authorization: [Filtered]' http://127.0.0.1:1/v1/checks/9223372036854775806

=================================== WARNINGS ===================================
_______________________________ not a failure __________________________________
- POST /v1/baselines
    curl -X GET http://127.0.0.1:1/nothing
"""


def test_one_traceback_per_error_with_its_exception_and_own_frame() -> None:
    errors = server_errors(SERVER_LOG)
    assert len(errors) == 1
    assert errors[0].count == 1  # logged by the handler and by uvicorn: one error
    assert errors[0].exception.startswith("sqlalchemy.exc.DataError: (psycopg.errors.Numeric")
    assert errors[0].where == "monitor/store/results.py:238 in get_check_run"


def test_response_codes_from_the_access_log() -> None:
    assert response_statuses(SERVER_LOG) == {200: 1, 500: 1, 405: 1}


def test_failures_are_read_from_the_failures_section_only() -> None:
    failures = console_failures(CONSOLE)
    assert [f.operation for f in failures] == ["GET /v1/checks/{check_id}"]
    assert failures[0].checks == ["ST101 Server error"]
    assert failures[0].requests == [
        "curl -X GET -H 'Authorization: [Filtered]' http://127.0.0.1:1/v1/checks/"
        "9223372036854775806"]


def test_examples_name_the_seeded_data_and_keep_the_schema_s_own() -> None:
    schema = {"paths": {
        "/v1/checks/{check_id}": {"get": {"parameters": [
            {"name": "check_id", "in": "path", "schema": {"type": "integer"}}]}},
        "/v1/inferences": {"post": {"requestBody": {"content": {"application/json": {
            "schema": {"type": "array"}}}}}},
        "/v1/overrides": {"post": {"requestBody": {"content": {"application/json": {
            "schema": {"type": "array"}, "example": [{"own": True}]}}}}},
    }}
    seeded = Seeded(parameters={"check_id": 7}, inference={"event_id": "e"}, override={})
    changed = with_examples(schema, seeded)
    paths = changed["paths"]
    assert paths["/v1/checks/{check_id}"]["get"]["parameters"][0]["example"] == 7
    assert paths["/v1/inferences"]["post"]["requestBody"]["content"]["application/json"][
        "example"] == [{"event_id": "e"}]
    assert paths["/v1/overrides"]["post"]["requestBody"]["content"]["application/json"][
        "example"] == [{"own": True}]
    assert "example" not in schema["paths"]["/v1/checks/{check_id}"]["get"]["parameters"][0]
