"""Schemathesis against the real server: a few hundred generated requests, checked against /docs.json.

Every operation of the published spec gets Schemathesis's coverage cases (each constraint's boundaries, valid and
not) and a seeded, capped number of random cases, valid and not. Each answer must have: no 5xx; a documented
status code and content type; a body that matches the documented schema for that status; and, for a request
the schema calls valid, no rejection. So the spec is what a client can rely on: its limits, required fields and
error bodies are the server's own (`serving.schemas`, `serving.guard`).

A few rules are beyond what an OpenAPI 3.0 schema can state (`UNSTATED_RULES`, written in the field
descriptions instead). A schema-valid request that breaks only those is rightly a 400, and for that request alone
the "valid input is accepted" check (`positive_data_acceptance`) is left out; every other check still applies.

Seeded and with no example database, every run sends the same requests. Schemathesis 4 has no telemetry or
upload of any kind, so there is nothing to turn off. A longer run against a served Bento, from the command line:
README.md, "Fuzzing the API".
"""

from __future__ import annotations

from collections import Counter

import pytest
import requests
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

from serving.schemas import EARLIEST, LATEST

SEED = 20240611
MAX_EXAMPLES = 25  # random cases per operation; with the coverage phase's ~570 requests in all, ~10 s
CONFIG = {
    "seed": SEED,
    "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
    "checks": {
        "enabled": False,
        "not_a_server_error": {"enabled": True},
        "status_code_conformance": {"enabled": True},
        "content_type_conformance": {"enabled": True},
        "response_schema_conformance": {"enabled": True},
        "positive_data_acceptance": {"enabled": True},
    },
}
# Rules on values or across fields that OpenAPI 3.0 cannot express (the 400's `msg` says which).
UNSTATED_RULES = (
    "give either customer (with its events) or customer_id alone",  # one of two shapes (no oneOf in the spec)
    "no event store",  # by-id requests on a server without CHURNSENSE_STORE_URL
    f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}",  # a date-time's range (pandas' nanoseconds)
    "is after as_of",  # events and signup_date come before as_of
    "customer_id values repeat",  # each customer once in a batch
    "event texts",  # texts over all events (CHURNSENSE_MAX_TEXTS; in a batch CHURNSENSE_BATCH_MAX_TEXTS)
    "events in all",  # events over a batch (CHURNSENSE_BATCH_MAX_EVENTS)
    "it needs evidence true",  # phrases quote evidence texts: no phrases without evidence
    "has no aspect model",  # /sentiment aspects on a Bento built without an aspect champion
)
GUARDED = ("/sentiment", "/churn_risk", "/churn_risk_batch", "/events")
ACCEPTING = ("/sentiment", "/churn_risk", "/churn_risk_batch")  # /events needs customers the store holds
ANSWERED: Counter[tuple[str, int]] = Counter()  # (operation, status) of every fuzzed request


@pytest.fixture(scope="module")
def api(server):
    return schemathesis.openapi.from_url(
        f"{server.url}/docs.json", config=schemathesis.Config.from_dict(CONFIG)
    )


@pytest.fixture(scope="module")
def session():
    with requests.Session() as client:
        yield client


@pytest.fixture
def node_id_for_schemathesis(request):
    """Schemathesis 4.32 names each operation's subtest through `node._nodeid`, which pytest 9.2 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def breaks_only_unstated_rules(response) -> bool:
    """A 400 whose every error is one of `UNSTATED_RULES`, or a 404 for a customer the event store does not hold
    (schema-valid ids the store lacks: the spec declares the 404)."""
    if response.status_code == 404:
        return "not in the event store" in response.text
    if response.status_code != 400:
        return False
    detail = response.json().get("detail") or [{}]
    return all(any(rule in item.get("msg", "") for rule in UNSTATED_RULES) for item in detail)


schema = schemathesis.pytest.from_fixture("api")


@pytest.mark.slow
@pytest.mark.usefixtures("node_id_for_schemathesis")
@schema.parametrize()
def test_the_server_keeps_to_its_published_spec(case, session):
    response = case.call(session=session, timeout=30)
    ANSWERED[case.operation.label, response.status_code] += 1
    # Valid by the schema but against a rule it cannot state: the 400 is right (see UNSTATED_RULES).
    excluded = [positive_data_acceptance] if breaks_only_unstated_rules(response) else []
    case.validate_response(response, excluded_checks=excluded)


@pytest.mark.slow
def test_the_fuzzing_got_answers_not_only_rejections():
    """Each endpoint answered some generated requests with 200: the spec leads to requests the server takes."""
    if not ANSWERED:
        pytest.skip("the fuzzing test did not run")
    for path in ACCEPTING:
        assert ANSWERED[f"POST {path}", 200] >= 3, (path, sorted(ANSWERED.items()))


# --- the spec itself, and what the fuzzing found ---------------------------------------------------------


def test_the_spec_documents_every_4xx_answer_and_its_body(http):
    spec = http.get("/docs.json").json()
    error = spec["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"] and error["properties"]["detail"]["type"] == "array"
    for path in GUARDED:
        operation = spec["paths"][path]["post"]
        assert operation["requestBody"]["required"] is True
        for status in ("400", "413", "415"):
            body = operation["responses"][status]["content"]["application/json"]["schema"]
            assert body == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)


def test_the_spec_states_the_served_model_fields_and_the_server_limits(http, models):
    from tests.served_models import SERVER_LIMITS

    churn, _ = models
    schemas = http.get("/docs.json").json()["components"]["schemas"]
    customer, event = schemas["Customer"], schemas["Event"]
    profile = [*churn.schema.profile_numeric, *churn.schema.profile_categorical]
    assert (
        profile and set(profile) <= set(customer["required"]) and set(profile) <= set(customer["properties"])
    )
    assert set(churn.schema.value_columns) <= set(event["properties"])
    texts = schemas["SentimentRequestIODescriptor"]["properties"]["texts"]
    assert texts["maxItems"] == int(SERVER_LIMITS["CHURNSENSE_MAX_TEXTS"])
    assert texts["items"]["maxLength"] == int(SERVER_LIMITS["CHURNSENSE_MAX_TEXT_CHARS"])


@pytest.mark.parametrize("stamp", ["0001-01-01T00:03:00+01:04", "9999-12-31T23:59:00-01:00"])
def test_a_time_beyond_pythons_utc_range_is_a_400_not_a_500(http, stamp: str):
    # Found by the fuzzing: converting these to UTC overflowed datetime and the server answered 500.
    body = {"customer": {"customer_id": "c1", "signup_date": stamp}}
    response = http.post("/churn_risk", json=body)
    assert response.status_code == 400, response.text
    assert "signup_date" in str(response.json()["detail"][0]["loc"])
