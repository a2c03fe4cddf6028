"""A support tool's path: ask by customer id, log new interactions, and the next score sees them.

The session server reads its event store (SQLite, `served_models.event_store`); the one-truth test
(`test_skew.py`) checks by-id answers against the training frame on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from tests.served_models import pick_customers, request_for

pytestmark = pytest.mark.slow


def _score_fields(answer: dict) -> tuple:
    return (
        answer["churn_risk"],
        answer["risk_band"],
        [(r["feature"], r["value"], r["contribution"]) for r in answer["reasons"]],
        answer["base_value"],
        answer["other_contribution"],
    )


def test_by_id_equals_the_full_payload_with_and_without_texts(http, canonical):
    customers, events, as_of = canonical
    texted = pick_customers(events, as_of, 3)
    before = events[events["timestamp"] < pd.Timestamp(as_of)]
    silent = sorted(
        set(before["customer_id"].astype(str))
        - set(before.dropna(subset=["text"])["customer_id"].astype(str))
    )
    assert silent, "the simulator has customers without any text"
    for customer_id in [*texted, *silent[:2]]:
        body = request_for(customers, events, customer_id, as_of)
        full = http.post("/churn_risk", json=body)
        by_id = http.post("/churn_risk", json={"customer_id": customer_id, "as_of": body["as_of"]})
        assert full.status_code == by_id.status_code == 200, (full.text, by_id.text)
        assert _score_fields(by_id.json()) == _score_fields(full.json()), customer_id
        assert by_id.json()["customer_id"] == customer_id


def test_a_logged_ticket_is_seen_by_the_next_score_and_is_stored_once(http, canonical):
    customers, events, as_of = canonical
    # After every snapshot date the other server tests score: what they see of this customer is unchanged.
    when = dt.datetime.combine(as_of, dt.time(9, 30)) + dt.timedelta(days=30)
    later = when + dt.timedelta(hours=2)
    for customer_id in pick_customers(events, as_of, 10):  # one whose history fits the test server's limits
        body = request_for(customers, events, customer_id, later)
        if sum("text" in e for e in body["events"]) < 15:
            break
    by_id = {"customer_id": customer_id, "as_of": body["as_of"]}
    before = http.post("/churn_risk", json=by_id).json()
    ticket = {
        "customer_id": customer_id,
        "event_id": f"ticket-{customer_id}-1",
        "timestamp": when.isoformat(),
        "type": "support_ticket",
        "text": "third time I call, still broken, I want to cancel",
    }
    stored = http.post("/events", json={"events": [ticket]})
    assert stored.status_code == 200 and stored.json() == {"stored": 1, "duplicates": 0}, stored.text
    again = http.post("/events", json={"events": [ticket]})
    assert again.json() == {"stored": 0, "duplicates": 1}
    after = http.post("/churn_risk", json=by_id).json()
    # Seen: one more text, and it is the newest. (Whether the risk moves is the model's business: a small tree
    # model may not split on what one ticket changes, so the test does not ask for that.)
    assert after["sentiment"]["count"] == before["sentiment"]["count"] + 1
    alone = http.post("/churn_risk", json={"customer": {**body["customer"]}, "events": [
        {k: ticket[k] for k in ("timestamp", "type", "text")}], "as_of": body["as_of"]}).json()  # fmt: skip
    assert after["sentiment"]["last"] == alone["sentiment"]["last"]
    # The same answer as a caller sending the whole history with the ticket in it.
    body["events"].append({k: ticket[k] for k in ("timestamp", "type", "text")})
    full = http.post("/churn_risk", json=body)
    assert full.status_code == 200, full.text
    assert _score_fields(after) == _score_fields(full.json())


def test_unknown_customers_are_a_404_and_nothing_is_stored(http, canonical):
    customers, events, as_of = canonical
    known = str(customers["customer_id"].iloc[0])
    response = http.post("/churn_risk", json={"customer_id": "x' OR 1=1 --"})
    assert response.status_code == 404 and "not in the event store" in response.json()["error"]
    mixed = [
        {"customer_id": known, "timestamp": "2031-01-02T00:00:00Z", "type": "call", "event_id": "half-1"},
        {"customer_id": "nobody", "timestamp": "2031-01-02T00:00:00Z", "type": "call", "event_id": "half-2"},
    ]
    response = http.post("/events", json={"events": mixed})
    assert response.status_code == 404 and "'nobody'" in response.text
    # All or nothing: the known customer's event was not stored either.
    retry = http.post("/events", json={"events": mixed[:1]})
    assert retry.json() == {"stored": 1, "duplicates": 0}


def test_the_internal_hop_is_not_served_and_not_in_the_spec(http):
    assert http.post("/classify_texts", json={"texts": ["hi"]}).status_code == 404
    paths = http.get("/docs.json").json()["paths"]
    assert "/classify_texts" not in paths and "/events" in paths
    assert "404" in paths["/churn_risk"]["post"]["responses"]
