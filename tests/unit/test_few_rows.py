"""The few-rows shortcuts of a single request (dict lookups, one object conversion) give what the general
paths give, bit for bit: a customer scored alone must be scored as in a batch of millions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import features.event_block as event_block
import features.text_features as text_features
import models.tree_input as tree_input
from features.columns import ASPECT, CUSTOMER_ID, EVENT_TYPE, SENTIMENT, SIGNUP_DATE, TIMESTAMP
from features.engine import FeatureSchema, build_customer_features
from features.event_block import few_codes

AS_OF = pd.Timestamp("2024-10-01")
SCHEMA = FeatureSchema(  # counted, excluded and unseen types, values, texts and aspects, profiles
    event_types=("login", "ticket"),
    value_columns=("amount",),
    profile_numeric=("seats",),
    profile_categorical=("plan",),
    excluded_event_types=("churn",),
    use_sentiment=True,
    lifetime=True,
    aspects=("billing", "delay"),
)


@pytest.mark.parametrize("dtype", ["string", "str"])
def test_few_codes_equal_pandas_lookup_with_missing_and_unknown_values(dtype: str) -> None:
    values = pd.Series(pd.array(["ticket", None, "login", "refund", "", "Ticket", "login"], dtype=dtype))
    categories = pd.Index(["login", "ticket", "churn"])
    expected = categories.get_indexer(values.astype(str)).astype(np.int32)
    got = few_codes(values, categories)
    assert got.dtype == np.int32
    assert got.tolist() == expected.tolist() == [1, -1, 0, -1, -1, -1, 0]


def test_few_codes_refuse_repeated_categories_as_pandas_does() -> None:
    values = pd.Series(pd.array(["a", "b"], dtype="string"))
    with pytest.raises(pd.errors.InvalidIndexError):
        few_codes(values, pd.Index(["a", "a", "b"]))


def _events(rng: np.random.Generator, n: int, customers: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = [f"c{i}" for i in range(customers)]
    kinds = np.array(["login", "ticket", "refund", "churn", "never-seen", None], dtype=object)
    aspects = np.array(["billing", "delay", "none", "unknown-name", None], dtype=object)
    scores = rng.uniform(-1, 1, n)
    scores[rng.random(n) < 0.4] = np.nan
    events = pd.DataFrame(
        {
            CUSTOMER_ID: pd.array(rng.choice([*ids, None], n).tolist(), dtype="string"),
            TIMESTAMP: (AS_OF - pd.to_timedelta(rng.uniform(-5, 200, n), unit="D")).astype("datetime64[ns]"),
            EVENT_TYPE: pd.array(kinds[rng.integers(0, len(kinds), n)].tolist(), dtype="string"),
            "amount": np.where(rng.random(n) < 0.3, np.nan, rng.normal(20, 5, n)),
            SENTIMENT: scores,
            ASPECT: pd.array(aspects[rng.integers(0, len(aspects), n)].tolist(), dtype="str"),
        }
    )
    customers = pd.DataFrame(
        {
            CUSTOMER_ID: pd.array(ids, dtype="string"),
            SIGNUP_DATE: (AS_OF - pd.to_timedelta(rng.integers(1, 900, customers), unit="D")).astype(
                "datetime64[ns]"
            ),
            "plan": pd.array(rng.choice(["basic", "pro", None], customers).tolist(), dtype="str"),
            "seats": rng.integers(1, 50, customers).astype("float64"),
        }
    )
    return events, customers


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_request_sized_frame_gets_the_same_features_on_the_few_rows_shortcuts(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = SCHEMA
    events, customers = _events(np.random.default_rng(seed), 60, 3)
    fast = build_customer_features(events, AS_OF, schema, customers=customers)
    monkeypatch.setattr(event_block, "_FEW_VALUES", 0)
    monkeypatch.setattr(text_features, "_FEW_TEXTS", 0)
    general = build_customer_features(events, AS_OF, schema, customers=customers)
    pd.testing.assert_frame_equal(fast, general, check_exact=True)
    # Not vacuous: aspects and counted types were found on these events.
    assert fast[[c for c in fast.columns if "billing" in c or c.startswith("n_ticket")]].to_numpy().sum() > 0
    assert (fast["n_events_all"] < 60).all()  # excluded, missing-id and future events are not counted


def test_numeric_block_of_few_rows_equals_the_general_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = pd.DataFrame(
        {
            "a": np.array([1.5, np.nan, -0.0, 1e308]),
            "b": np.array([3, -7, 2**53 + 1, 0], dtype=np.int64),
            "text": pd.array(["x", None, "y", "z"], dtype="str"),
            "c": np.array([np.inf, 5e-324, 0.1, -2.5]),
        }
    )
    columns = ["c", "a", "b"]
    fast = tree_input.numeric_block(frame, columns)
    monkeypatch.setattr(tree_input, "_FEW_ROWS", 0)
    general = tree_input.numeric_block(frame, columns)
    assert fast.dtype == general.dtype == np.float64
    assert np.array_equal(fast.view(np.int64), general.view(np.int64))  # the same bits, -0.0 and NaN included
    with pytest.raises(KeyError, match="missing"):
        tree_input.numeric_block(frame, ["a", "missing"])


def test_few_rows_equal_the_general_conversions_or_step_aside() -> None:
    """`few_rows` gives `numeric_block` and `categorical_values` bit for bit, on every kind of column a frame can
    bring; on a value it cannot take as it is (a text among numbers, a number in a text column, pd.NA) it steps
    aside (None) and the general path decides."""
    plain = pd.DataFrame(
        {
            "a": np.array([1.5, np.nan, -0.0, 1e308]),
            "b": np.array([3, -7, 2**53 + 1, 0], dtype=np.int64),
            "o": pd.Series([1, 2.5, np.nan, 4], dtype=object),  # numbers in an object column
            "plan": pd.array(["pro", None, "free", "pro"], dtype="str"),
            "region": pd.Series(["eu", None, np.nan, "us"], dtype=object),
            "tier": pd.array(["x", pd.NA, "y", "x"], dtype="string"),
        }
    )
    numeric, categorical = ["a", "b", "o"], ["plan", "region", "tier"]
    few = tree_input.few_rows(plain, numeric, categorical)
    assert few is not None
    general = tree_input.numeric_block(plain.astype({"o": "float64"}), numeric)
    assert np.array_equal(few[0].view(np.int64), general.view(np.int64))
    for got, name in zip(few[1], categorical, strict=True):
        expected = tree_input.categorical_values(plain[name])
        assert got.dtype == object and got.tolist() == expected.tolist()
    for odd in (
        plain.assign(o=pd.Series([1, "2", 2.5, 3], dtype=object)),  # a text among numbers
        plain.assign(o=pd.Series([1, None, 2.5, 3], dtype=object)),  # None among numbers
        plain.assign(a=pd.array([1.0, None, 2.0, 3.0], dtype="Float64")),  # pd.NA
        plain.assign(b=np.array([True, False, True, True])),  # bools are no numbers here
        plain.assign(region=pd.Series([1, None, "eu", "us"], dtype=object)),  # a number in a text column
    ):
        assert tree_input.few_rows(odd, numeric, categorical) is None
    assert tree_input.few_rows(plain, [*numeric, "absent"], categorical) is None
    assert tree_input.few_rows(pd.concat([plain] * 20), numeric, categorical) is None  # not a few rows


@pytest.mark.parametrize("seed", [0, 1])
def test_evidence_reads_text_columns_as_it_reads_object_columns(seed: int) -> None:
    """Text (`str`/"string") columns are read as they are; object columns are converted first. Both give the same
    evidence, texts and aspects (missing ones included) alike."""
    from features.columns import TEXT
    from features.evidence import EvidenceFinder, rules_for

    schema = dataclasses.replace(SCHEMA, profile_numeric=(), profile_categorical=())
    events, _ = _events(np.random.default_rng(seed), 80, 3)
    events = events[events[CUSTOMER_ID].notna() & events[EVENT_TYPE].notna()].reset_index(drop=True)
    texts = np.array(["late again", None, " refund please ", "thanks"], dtype=object)
    events[TEXT] = pd.array(texts[np.arange(len(events)) % 4].tolist(), dtype="str")
    as_objects = events.astype({CUSTOMER_ID: object, EVENT_TYPE: object, ASPECT: object, TEXT: object})
    reasons = {f"c{i}": [{"feature": name} for name in rules_for(schema)] for i in range(3)}
    finder = EvidenceFinder(schema)
    text_path = finder.find(events, AS_OF, reasons)
    object_path = finder.find(as_objects, AS_OF, reasons)
    assert text_path == object_path
    about = [e.get("aspect") for rows in text_path.values() for r in rows if r for e in r["events"]]
    assert "billing" in about  # not vacuous: aspect evidence was found
