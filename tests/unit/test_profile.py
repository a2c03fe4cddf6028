"""Drift: a profile's bins, PSI, and how often an unchanged population is flagged (it should not be)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.profile import (
    OTHER,
    column_profile,
    drift_table,
    profile_frame,
    profiles_from_json,
    profiles_to_json,
    psi,
)


def population(seed: int, n: int = 2000, shift: dict[str, float] | None = None) -> pd.DataFrame:
    """Customers like the simulator's: a price, a count that is mostly 0, a plan, a sometimes-missing age."""
    shift = shift or {}
    rng = np.random.default_rng(seed)
    age = rng.normal(40 + shift.get("age", 0.0), 10, n)
    age[rng.random(n) < 0.05 + shift.get("age_missing", 0.0)] = np.nan
    return pd.DataFrame(
        {
            "price": rng.gamma(4.0, 10.0 * (1 + shift.get("price", 0.0)), n),
            "n_complaint_90d": rng.poisson(0.3 + shift.get("complaints", 0.0), n).astype("float64"),
            "plan": rng.choice(["basic", "standard", "premium"], n, p=[0.5, 0.3, 0.2]),
            "age": age,
        }
    )


NUMERIC, CATEGORICAL = ["price", "n_complaint_90d", "age"], ["plan"]


def test_bins_shares_and_psi_are_what_they_say():
    frame = population(0)
    profiles = profile_frame(frame, NUMERIC, CATEGORICAL)
    price = profiles["price"]
    assert len(price.edges) == 9 and np.isclose(sum(price.shares), 1.0)
    assert all(abs(s - 0.1) < 0.002 for s in price.shares[:-1])  # deciles: a tenth each
    assert price.shares[-1] == 0.0  # nothing missing
    assert len(profiles["n_complaint_90d"].edges) < 9  # ties collapse bins
    assert abs(profiles["age"].shares[-1] - frame["age"].isna().mean()) < 1e-12
    assert profiles["plan"].categories == ("basic", "premium", "standard")
    # Values never seen pool into (other); text in a numeric column counts as missing, not a crash.
    counts = profiles["plan"].counts(pd.Series(["basic", "gold", None]))
    assert counts.tolist() == [1, 0, 0, 1, 1] and profiles["plan"].labels()[3] == OTHER
    assert price.counts(pd.Series([1.0, "n/a", None])).tolist()[-1] == 2
    # PSI: zero for the same shares, and the textbook value for a known pair.
    assert psi(price.shares, price.shares) == 0.0
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * np.log(0.5) * -1 + 0.25 * np.log(1.5))
    # A profile survives its JSON round trip (it is logged with the churn run).
    assert profiles_from_json(profiles_to_json(profiles)) == profiles


def test_an_unchanged_population_is_not_flagged_over_many_seeds():
    """False alarms: 20 fresh samples of the same population against one reference; PSI stays under the
    warning threshold (0.1) on every column of every sample."""
    reference = profile_frame(population(0), NUMERIC, CATEGORICAL)
    worst = [drift_table(reference, population(seed))["psi"].max() for seed in range(1, 21)]
    assert max(worst) < 0.1, worst
    assert np.mean(worst) < 0.02


@pytest.mark.parametrize(
    ("shift", "drifted"),
    [
        ({"price": 0.5}, {"price"}),
        ({"complaints": 0.6}, {"n_complaint_90d"}),
        ({"age_missing": 0.4}, {"age"}),  # a column that starts arriving empty
    ],
)
def test_a_shifted_column_is_flagged_and_only_it(shift, drifted):
    reference = profile_frame(population(0), NUMERIC, CATEGORICAL)
    table = drift_table(reference, population(7, shift=shift)).set_index("feature")
    assert set(table.index[table["psi"] > 0.25]) == drifted, table
    assert (table.drop(index=list(drifted))["psi"] < 0.1).all(), table


def test_a_column_the_reference_never_saw_empty_is_reported_missing():
    reference = {"x": column_profile("x", pd.Series([1.0, 2.0, 3.0]), "numeric")}
    table = drift_table(reference, pd.DataFrame({"y": [1.0]}))
    assert np.isnan(table.loc[0, "psi"]) and table.loc[0, "n_now"] == 0


def test_the_event_window_reads_the_90_days_before_as_of_and_unseen_words_are_counted():
    from features.profile import recent_events, unseen_share, vocabulary

    events = pd.DataFrame(
        {
            "customer_id": ["a"] * 4,
            "timestamp": pd.to_datetime(
                ["2024-01-01 00:00", "2024-08-03 00:00", "2024-10-31 23:59", "2024-11-01 00:00"]
            ),
            "event_type": ["call", "chat", "chat", "call"],
            "text": [None, "  Late  flight ", "refund please", "after as_of"],
        }
    )
    window = recent_events(events, "2024-11-01")
    # [as_of - 90 days, as_of): 2024-08-03 is the first day in; as_of itself is out.
    assert window["event_type"].tolist() == ["chat", "chat"]
    assert window["text_length"].tolist() == [len("Late flight"), len("refund please")]  # normalised
    assert vocabulary(["late late flight", "Flight 9 refund"]) == ["flight", "late", "refund"]
    assert unseen_share(["late app", "new app"], ["late", "new"]) == 0.5
    assert np.isnan(unseen_share([None, "42 !!"], ["late"]))


def test_the_monitor_config_file_spells_out_the_defaults_and_bad_keys_are_named(tmp_path):
    from pathlib import Path

    from churnsense.errors import UserError
    from monitoring.monitor import MonitorConfig, load_monitor_config

    shipped = Path(__file__).resolve().parents[2] / "configs" / "monitor.yaml"
    assert load_monitor_config(shipped) == MonitorConfig()
    for text, named in (
        ("psi_alrt: 0.3\n", "psi_alrt"),
        ("psi_alert: -1\n", "psi_alert"),
        ("[1, 2]\n", "cannot read"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(UserError, match=named):
            load_monitor_config(bad)


def test_new_words_are_not_judged_without_texts_and_never_crash():
    from features.profile import recent_events
    from monitoring.monitor import MonitorConfig, unseen_words

    for events in (None, pd.DataFrame(columns=["customer_id", "timestamp", "event_type", "text"])):
        window = recent_events(events, "2024-11-01")
        assert unseen_words({"vocabulary": ["hello"], "unseen_share": 0.1}, window, MonitorConfig())[
            "status"
        ] == ("not judged")
