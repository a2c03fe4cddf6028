"""Evidence behind reasons: the events a feature was made of, checked against the feature engine's own values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.columns import ASPECT, SENTIMENT, TEXT, TIMESTAMP
from features.engine import DAY_NS, build_customer_features, infer_schema, to_timestamp_ns
from features.evidence import EvidenceFinder, rules_for
from features.pipeline import load_data
from features.spec import load_spec

AS_OF = "2024-10-01"


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Simulated customers and events, texts given a sentiment score, features and evidence of every event
    feature for every customer."""
    from features.simulate import write_demo_data

    folder: Path = tmp_path_factory.mktemp("evidence")
    write_demo_data(folder, n_customers=400, seed=5)
    spec = load_spec(folder / "spec.yaml")
    data = load_data(spec, with_text=True)
    events = data.events.copy()
    texts = events[TEXT].astype("string")
    # A deterministic score per text (a stand-in for the sentiment model): the engine only reads the column.
    lengths = texts.str.len().to_numpy(dtype="float64", na_value=np.nan)
    events[SENTIMENT] = np.where(np.isnan(lengths), np.nan, np.sin(np.nan_to_num(lengths)))
    # And a deterministic aspect (a stand-in for the aspect model): three names, the model's "none", and a
    # missing one, so the aspect counts meet every case.
    choices = np.array(["billing", "Late Flight", "network", "none", None], dtype=object)
    events[ASPECT] = pd.array(
        np.where(np.isnan(lengths), None, choices[np.nan_to_num(lengths).astype(int) % 5]), dtype="str"
    )
    schema = infer_schema(
        data.customers,
        events,
        value_columns=tuple(spec.events.values),
        exclude_event_types=(spec.events.churn_event,),
        aspects=("billing", "Late Flight", "network"),
    )
    assert schema.use_sentiment and schema.lifetime and schema.value_columns
    assert "n_negative_about_late_flight_90d" in schema.feature_names()
    features = build_customer_features(events, AS_OF, schema, customers=data.customers)
    names = list(rules_for(schema))
    reasons = {str(c): [{"feature": n} for n in names] for c in features.index}
    evidence = EvidenceFinder(schema).find(events, AS_OF, reasons)
    return {"schema": schema, "features": features, "names": names, "evidence": evidence, "events": events}


def _by_feature(scored: dict, feature: str) -> tuple[pd.Series, list[dict]]:
    position = scored["names"].index(feature)
    values = scored["features"][feature]
    return values, [scored["evidence"][str(c)][position] for c in values.index]


def test_every_event_feature_has_a_rule_and_profile_features_have_none(scored):
    schema = scored["schema"]
    event_features = [n for n in schema.event_feature_names()]
    assert set(event_features) == set(scored["names"])
    finder = EvidenceFinder(schema)
    found = finder.find(scored["events"], AS_OF, {"C0000001": [{"feature": "tenure_days"}]})
    assert found["C0000001"] == [None]


def test_a_count_feature_has_exactly_its_events(scored):
    schema = scored["schema"]
    counts = [n for n in scored["names"] if n.startswith("n_")]
    assert any(n.endswith("_all") for n in counts) and "n_texts_90d" in counts
    nonzero = 0
    for feature in counts:
        values, evidence = _by_feature(scored, feature)
        nonzero += int(values.sum() > 0)
        totals = np.array([e["total"] for e in evidence], dtype="float64")
        np.testing.assert_array_equal(totals, values.to_numpy(), err_msg=feature)
        for item, value in zip(evidence, values, strict=True):
            assert len(item["events"]) == min(3, int(value))
    assert nonzero >= len(counts) // 2  # not a test of zeros (rare types may be absent at this as_of)
    assert all(scored["features"][n].sum() > 0 for n in ("n_events_90d", "n_texts_90d", "n_events_all"))
    # Negative texts about an aspect: each listed one is negative and about it.
    values, evidence = _by_feature(scored, "n_negative_about_late_flight_90d")
    assert values.sum() > 0
    listed = [e for item in evidence for e in item["events"]]
    assert listed and all(
        e["aspect"] == "Late Flight" and e["sentiment"] < -0.3 and e["text"] for e in listed
    )
    # The listed events are the newest, newest first, and all of the counted type within the window.
    _, evidence = _by_feature(scored, f"n_{schema.event_types[0]}_30d")
    for item in evidence:
        times = [pd.Timestamp(e["timestamp"].rstrip("Z")) for e in item["events"]]
        assert times == sorted(times, reverse=True)
        assert all(e["type"] == schema.event_types[0] for e in item["events"])
        assert all(pd.Timestamp(AS_OF) - t <= pd.Timedelta(days=30) for t in times)


def test_a_recency_feature_points_at_the_event_it_measures_from(scored):
    as_of_ns = to_timestamp_ns(AS_OF)
    recency = [n for n in scored["names"] if n.startswith("days_since_")]
    assert "days_since_last_event" in recency and "days_since_first_event" in recency
    for feature in recency:
        values, evidence = _by_feature(scored, feature)
        for item, value in zip(evidence, values, strict=True):
            if np.isnan(value):
                assert item == {"total": 0, "events": []}, feature
                continue
            (event,) = item["events"]
            stamp = pd.Timestamp(event["timestamp"].rstrip("Z")).value
            assert (as_of_ns - stamp) / DAY_NS == value, feature


def test_lowest_and_newest_texts_and_highest_values_lead_their_lists(scored):
    schema = scored["schema"]
    values, evidence = _by_feature(scored, "sentiment_min_90d")
    for item, value in zip(evidence, values, strict=True):
        assert (not item["events"] and np.isnan(value)) or item["events"][0]["sentiment"] == value
        assert all(e["text"] for e in item["events"])
    values, evidence = _by_feature(scored, "sentiment_last")
    for item, value in zip(evidence, values, strict=True):
        assert (not item["events"] and np.isnan(value)) or item["events"][0]["sentiment"] == value
    column = schema.value_columns[0]
    values, evidence = _by_feature(scored, f"max_{column}_90d")
    for item, value in zip(evidence, values, strict=True):
        assert (not item["events"] and np.isnan(value)) or item["events"][0][column] == value
    share, negative = _by_feature(scored, "sentiment_share_negative_90d")
    n_texts, _ = _by_feature(scored, "n_texts_90d")
    counted = np.array([e["total"] for e in negative], dtype="float64")
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(counted / n_texts.to_numpy(), share.to_numpy(), equal_nan=True)
    assert all(e["sentiment"] < -0.3 for item in negative for e in item["events"])


def test_future_events_are_never_evidence(scored):
    events = scored["events"]
    customer = str(events["customer_id"].iloc[0])
    future = events.iloc[[0]].assign(**{TIMESTAMP: pd.Timestamp(AS_OF)})
    more = pd.concat([events, future], ignore_index=True)
    reasons = {customer: [{"feature": n} for n in scored["names"]]}
    finder = EvidenceFinder(scored["schema"])
    assert finder.find(more, AS_OF, reasons) == finder.find(events, AS_OF, reasons)


def test_the_agent_view_quotes_the_evidence():
    from serving.smoke import agent_view

    answer = {
        "customer_id": "C1",
        "as_of": "2024-10-01T00:00:00Z",
        "churn_risk": 0.83,
        "risk_band": "critical",
        "reasons": [
            {
                "feature": "n_complaint_90d",
                "value": 5.0,
                "contribution": 2.15,
                "evidence": {
                    "total": 5,
                    "events": [
                        {"timestamp": "2024-09-28T10:00:00Z", "type": "complaint", "text": "still broken",
                         "sentiment": -0.92, "phrase": {"start": 6, "end": 12, "phrase": "broken",
                                                        "effect": -0.7}, "aspect": "device"},
                        {"timestamp": "2024-09-27T10:00:00Z", "type": "complaint", "sentiment": -0.5,
                         "text": "waited " * 30 + "and the refund never came", "phrase": {"start": 214,
                         "end": 235, "phrase": "the refund never came", "effect": -0.4}},
                        {"timestamp": "2024-09-20T09:30:00Z", "type": "complaint", "text": None, "sentiment": None,
                         "duration_s": 570.0},
                    ],
                },
            },
            {"feature": "plan", "value": "basic", "contribution": 0.4, "evidence": None},
        ],
    }  # fmt: skip
    view = agent_view(answer)
    assert "churn risk 83% (critical)" in view
    assert '2024-09-28 10:00  complaint (sentiment -0.92) about device "still **broken**"' in view
    # A long text is cut around its phrase, which stays whole.
    assert 'waited and **the refund never came**"' in view and '"...ited waited' in view
    assert "... and 2 more" in view and "a profile value" in view
    assert "2024-09-20 09:30  complaint [duration_s 570]" in view


def test_event_times_are_written_as_pandas_writes_them():
    """Evidence names each event by its time; the fast text for whole microseconds must be pandas' own."""
    import random

    from features.evidence import _iso

    rng = random.Random(3)
    stamps = [rng.randrange(-(2**63) + 1, 2**63) for _ in range(3000)]
    stamps += [s // 1000 * 1000 for s in stamps] + [0, 1_000, 1_714_521_600_000_000_000]
    for ns in stamps:
        assert _iso(ns) == pd.Timestamp(ns, unit="ns").isoformat() + "Z", ns
