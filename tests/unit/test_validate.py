"""`churnsense validate`: every problem is reported at once, naming the file, the column and a count.

Each test starts from a small clean data set (customers, events, reviews; no problems at all), breaks one thing
and checks the report says exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from churnsense.cli import app
from features.validate import MIN_POSITIVES, Problem, ValidationReport, validate_spec_file
from tests.shared_data import shared_file

SPEC = """\
customers: {path: customers.csv, id: cid, signup_date: joined}
events: {path: events.csv, id: cid, time: at, type: kind, text: body, values: [amount], churn_event: cancel}
reviews: {path: reviews.csv, text: review, label: sentiment, classes: [negative, neutral, positive]}
labels: {as_of: [2024-01-01, 2024-03-01], horizon_days: 60}
"""
LAST_EVENT = pd.Timestamp(
    "2024-04-29 12:00"
)  # the last day of the newest label window (2024-03-01 + 59 days)


@dataclass
class Data:
    customers: pd.DataFrame
    events: pd.DataFrame
    reviews: pd.DataFrame
    spec: str = SPEC


def _clean() -> Data:
    rng = np.random.default_rng(0)
    n = 300
    ids = [f"C{i:04d}" for i in range(n)]
    customers = pd.DataFrame(
        {
            "cid": ids,
            "plan": rng.choice(["basic", "pro"], n),
            "monthly": rng.uniform(10, 100, n).round(2),
            "joined": pd.Timestamp("2023-06-01") + pd.to_timedelta(rng.integers(0, 60, n), unit="D"),
        }
    )
    start, end = pd.Timestamp("2023-09-01"), LAST_EVENT
    cancel = pd.Timestamp("2023-12-01") + pd.to_timedelta(rng.integers(0, 150, n), unit="D")
    cancels = rng.random(n) < 0.6
    rows = []
    for i, cid in enumerate(ids):
        stop = cancel[i] if cancels[i] else end
        times = start + (stop - start) * np.sort(rng.random(20))
        rows += [(cid, t, "login", float(rng.integers(1, 9)), f"hello {i}") for t in times]
        if cancels[i]:
            rows.append((cid, stop, "cancel", 0.0, "bye"))
    rows.append((ids[0], end, "login", 1.0, "still here"))
    events = pd.DataFrame(rows, columns=["cid", "at", "kind", "amount", "body"])
    reviews = pd.DataFrame(
        {"review": [f"review {i}" for i in range(30)], "sentiment": ["negative", "neutral", "positive"] * 10}
    )
    return Data(customers, events, reviews)


@pytest.fixture
def data() -> Data:
    return _clean()


def _write(folder: Path, data: Data) -> Path:
    data.customers.to_csv(folder / "customers.csv", index=False)
    data.events.to_csv(folder / "events.csv", index=False)
    data.reviews.to_csv(folder / "reviews.csv", index=False)
    spec = folder / "spec.yaml"
    spec.write_text(data.spec)
    return spec


def _validate(folder: Path, data: Data) -> ValidationReport:
    return validate_spec_file(_write(folder, data))


def _only(report: ValidationReport, severity: str, column: str | None) -> Problem:
    """The one problem of this severity about this column (fails listing the report otherwise)."""
    found = [p for p in report.problems if p.severity == severity and p.column == column]
    assert len(found) == 1, report.render()
    return found[0]


def test_the_clean_data_set_has_no_problems(tmp_path, data):
    report = _validate(tmp_path, data)
    assert report.problems == [], report.render()
    assert report.render() == f"OK {tmp_path / 'spec.yaml'}: no problems found"
    result = CliRunner().invoke(app, ["validate", "--spec", str(tmp_path / "spec.yaml")])
    assert result.exit_code == 0 and "no problems found" in result.output


def test_render_lists_errors_then_warnings_then_a_summary(tmp_path, data):
    data.events.loc[3, "body"] = "  "  # a warning
    data.customers = pd.concat([data.customers, data.customers.iloc[[4]]], ignore_index=True)  # an error
    report = _validate(tmp_path, data)
    lines = report.render().splitlines()
    assert lines[0] == (
        f"ERROR {tmp_path / 'customers.csv'} [cid]: 1 customer id appears more than once (1 extra row, only the first "
        "is kept): e.g. 'C0004' (rows 4, 300)"
    )
    assert lines[1] == (
        f"WARNING {tmp_path / 'events.csv'} [body]: 1 event with an empty (blank) text (of 6,184 with text)"
    )
    assert lines[-1] == f"FAILED {tmp_path / 'spec.yaml'}: 1 error, 1 warning"
    result = CliRunner().invoke(app, ["validate", "--spec", str(tmp_path / "spec.yaml")])
    assert result.exit_code == 1 and result.output.strip().splitlines() == lines


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "spec file not found"),
        ("customers: {path: c.csv, idd: x}\n", "customers.idd"),
        ("reviews: {path: r.csv, text: t, label: l, rating: r}\n", "give exactly one of `label`"),
        ("customers: [oops\n", "not valid YAML"),
    ],
)
def test_a_broken_spec_is_one_error_not_a_traceback(tmp_path, text, says):
    spec = tmp_path / "spec.yaml"
    if text is not None:
        spec.write_text(text)
    report = validate_spec_file(spec)
    assert len(report.problems) == 1 and report.errors[0].file == str(spec)
    assert says in report.errors[0].message
    assert report.render().splitlines()[-1] == f"FAILED {spec}: 1 error, 0 warnings"


def test_missing_and_unreadable_files_are_reported_with_the_other_sections_still_checked(tmp_path, data):
    data.spec = SPEC.replace("customers.csv", "nope.csv").replace("reviews.csv", "reviews.parquet")
    (tmp_path / "reviews.parquet").write_bytes(b"not parquet at all")
    data.events.loc[7, "body"] = " "
    report = _validate(tmp_path, data)
    missing = [p for p in report.errors if p.file == str(tmp_path / "nope.csv")]
    assert len(missing) == 1 and missing[0].message == "customers.path: file not found"
    unreadable = [p for p in report.errors if p.file == str(tmp_path / "reviews.parquet")]
    assert len(unreadable) == 1 and "cannot read the file" in unreadable[0].message
    assert _only(report, "warning", "body").message.startswith(
        "1 event with an empty (blank) text"
    )  # events still checked


def test_every_missing_column_in_every_section_is_reported(tmp_path, data):
    data.customers = data.customers.rename(columns={"joined": "signup"})
    data.events = data.events.rename(columns={"body": "message", "amount": "value"})
    data.reviews = data.reviews.rename(columns={"sentiment": "polarity"})
    data.spec = SPEC.replace("signup_date: joined}", "signup_date: joined, drop: [notes]}")
    report = _validate(tmp_path, data)
    missing = {(p.file, p.column): p.message for p in report.errors}
    assert set(missing) == {
        (str(tmp_path / "customers.csv"), "joined"),
        (str(tmp_path / "customers.csv"), "notes"),
        (str(tmp_path / "events.csv"), "body"),
        (str(tmp_path / "events.csv"), "amount"),
        (str(tmp_path / "reviews.csv"), "sentiment"),
    }, report.render()
    assert missing[(str(tmp_path / "events.csv"), "amount")].startswith(
        "column not found (spec key events.values[0])"
    )
    assert "signup" in missing[(str(tmp_path / "customers.csv"), "joined")]  # lists what the file has


def test_a_missing_precomputed_aspect_column_is_named_and_the_other_checks_still_run(tmp_path, data):
    data.events["score"] = -0.5
    data.events.loc[0, "kind"] = " "  # an empty event type: still found
    data.spec = SPEC.replace("churn_event: cancel}", "churn_event: cancel, sentiment: score, aspect: about}")
    report = _validate(tmp_path, data)
    missing = {(p.file, p.column): p.message for p in report.errors}
    assert missing[(str(tmp_path / "events.csv"), "about")].startswith(
        "column not found (spec key events.aspect)"
    )
    assert any("empty" in p.message and p.column == "kind" for p in report.problems), report.render()


def test_missing_key_columns_skip_the_checks_that_need_them(tmp_path, data):
    data.events = data.events.rename(columns={"at": "when"})
    data.events.loc[0, "cid"] = None  # would be an empty-id error, but the table cannot be loaded
    report = _validate(tmp_path, data)
    assert [(p.column, p.message[:16]) for p in report.problems] == [("at", "column not found")]


def test_unparseable_event_times_are_counted_with_examples(tmp_path, data):
    data.events["at"] = data.events["at"].astype(str)
    data.events.loc[[10, 20, 30, 40], "at"] = ["31/31/2024", "soon", "2024-02-30", "never"]
    problem = _only(_validate(tmp_path, data), "error", "at")
    assert problem.file == str(tmp_path / "events.csv")
    assert problem.message.startswith(
        "4 values missing or not parseable as dates (e.g. row 10 '31/31/2024', row 20 'soon', row 30"
    )
    assert ", ..." in problem.message


@pytest.mark.parametrize("column", ["joined", "left"])
def test_unparseable_customer_dates_are_counted_with_examples(tmp_path, data, column):
    data.customers["left"] = ""
    data.customers = data.customers.astype({"joined": str})
    data.customers.loc[[3, 8], column] = ["2024-13-01", "unknown"]
    data.spec = SPEC.replace("signup_date: joined}", "signup_date: joined, churn_date: left}")
    report = _validate(tmp_path, data)
    problem = _only(report, "error", column)
    assert problem.file == str(tmp_path / "customers.csv")
    assert problem.message.startswith(
        "2 values not parseable as dates (e.g. row 3 '2024-13-01', row 8 'unknown')"
    )


def test_duplicate_customer_ids_are_counted_with_examples(tmp_path, data):
    data.customers.loc[[10, 11, 12], "cid"] = "C0009"
    data.customers.loc[20, "cid"] = "C0019"
    problem = _only(_validate(tmp_path, data), "error", "cid")
    assert problem.file == str(tmp_path / "customers.csv")
    assert problem.message.startswith(
        "2 customer ids appear more than once (4 extra rows, only the first is kept)"
    )
    assert "'C0009' (rows 9, 10, 11)" in problem.message and "'C0019' (rows 19, 20)" in problem.message


def test_empty_customer_ids_are_counted_in_customers_and_events(tmp_path, data):
    data.customers.loc[[1, 2], "cid"] = ["", None]
    data.events.loc[[5, 6, 7], "cid"] = [" ", None, ""]
    report = _validate(tmp_path, data)
    customers = [p for p in report.errors if p.file == str(tmp_path / "customers.csv")]
    events = [p for p in report.errors if p.file == str(tmp_path / "events.csv")]
    assert len(customers) == 1 and customers[0].column == "cid"
    assert customers[0].message.startswith("2 rows with an empty customer id (e.g. row 1, row 2)")
    assert len(events) == 1 and events[0].column == "cid"
    assert events[0].message.startswith("3 events with an empty customer id (e.g. row 5, row 6, row 7)")


def _one_table(folder: Path, churn: list[str], positive: str | None = None) -> ValidationReport:
    n = len(churn)
    pd.DataFrame({"id": [f"x{i}" for i in range(n)], "age": np.arange(n) % 70, "Churn": churn}).to_csv(
        folder / "c.csv", index=False
    )
    extra = f"\n  positive: {positive}" if positive else ""
    (folder / "s.yaml").write_text(f"customers:\n  path: c.csv\n  id: id\n  label: Churn{extra}\n")
    return validate_spec_file(folder / "s.yaml")


def test_a_static_label_with_one_class_is_an_error(tmp_path):
    report = _one_table(tmp_path, ["Stayed"] * 80 + ["Left"] * 70)  # "Left" is not a known positive word
    problem = _only(report, "error", "Churn")
    assert problem.file == str(tmp_path / "c.csv")
    assert "all 150 customers are not churned" in problem.message
    assert "'Stayed' (80)" in problem.message and "'Left' (70)" in problem.message
    assert "customers.positive" in problem.message
    assert _one_table(tmp_path, ["Stayed"] * 80 + ["Left"] * 70, positive="Left").problems == []


def test_few_static_positives_is_a_warning(tmp_path):
    report = _one_table(tmp_path, ["No"] * 500 + ["Yes"] * (MIN_POSITIVES - 1))
    problem = _only(report, "warning", "Churn")
    assert report.errors == [] and problem.message.startswith(f"only {MIN_POSITIVES - 1} churned customers")
    assert _one_table(tmp_path, ["No"] * 500 + ["Yes"] * MIN_POSITIVES).problems == []


def test_blank_static_labels_are_a_warning(tmp_path):
    problem = _only(_one_table(tmp_path, ["No"] * 100 + ["Yes"] * 60 + [""] * 3), "warning", "Churn")
    assert problem.message == "3 blank labels will be read as not churned"


def test_a_static_label_beside_another_churn_definition_is_ignored(tmp_path, data):
    data.customers["Churn"] = "No"
    data.spec = SPEC.replace("signup_date: joined}", "signup_date: joined, label: Churn}")
    problem = _only(_validate(tmp_path, data), "warning", "Churn")
    assert "ignored" in problem.message and "events.churn_event" in problem.message


def test_labels_of_one_class_at_an_as_of_date_are_an_error(tmp_path, data):
    data.spec = SPEC.replace("as_of: [2024-01-01, 2024-03-01]", "as_of: [2023-10-01, 2024-01-01]")
    problem = _only(_validate(tmp_path, data), "error", "labels")
    assert problem.file == str(tmp_path / "spec.yaml")
    assert problem.message == (
        "labels are all one class at 1 of 2 as_of dates: 2023-10-01 (300 customers, all not churned)"
    )


def test_no_eligible_customers_at_an_as_of_date_is_an_error(tmp_path, data):
    data.spec = SPEC.replace("as_of: [2024-01-01, 2024-03-01]", "as_of: [2023-05-01, 2024-01-01]")
    problem = _only(_validate(tmp_path, data), "error", "labels.as_of")
    assert problem.message.startswith("no eligible customers at 1 as_of date (2023-05-01)")


def test_few_positives_from_the_labels_section_is_a_warning(tmp_path, data):
    data.spec = SPEC.replace(
        "as_of: [2024-01-01, 2024-03-01], horizon_days: 60", "as_of: 2024-04-20, horizon_days: 10"
    )
    report = _validate(tmp_path, data)
    problem = _only(report, "warning", "labels")
    positives = int(problem.message.split()[1])
    assert 0 < positives < MIN_POSITIVES and problem.message.startswith(
        f"only {positives} churned examples over 1"
    )


def test_a_label_window_beyond_the_data_is_an_error(tmp_path, data):
    data.spec = SPEC.replace("as_of: [2024-01-01, 2024-03-01]", "as_of: [2024-01-01, 2024-03-01, 2024-04-01]")
    problem = _only(_validate(tmp_path, data), "error", "at")
    assert problem.file == str(tmp_path / "events.csv")
    assert (
        "the newest event is 2024-04-29 12:00:00, but with horizon_days=60 the windows of 1 as_of date (2024-04-01) end"
        in problem.message
    )
    assert "censored" in problem.message and "on or before 2024-03-01" in problem.message


def test_events_after_the_last_label_window_are_counted_as_ignored(tmp_path, data):
    late = pd.DataFrame(
        {"cid": ["C0001"] * 5, "at": pd.Timestamp("2024-04-30"), "kind": "login", "amount": 1.0, "body": "x"}
    )
    data.events = pd.concat([data.events, late], ignore_index=True)
    problem = _only(_validate(tmp_path, data), "warning", "at")
    assert problem.file == str(tmp_path / "events.csv")
    assert problem.message.startswith(
        "5 events dated on or after 2024-04-30 (newest as_of 2024-03-01 + horizon_days=60)"
    )


def test_events_of_unknown_customers_are_a_warning(tmp_path, data):
    data.events.loc[[0, 1, 2], "cid"] = ["Z1", "Z1", "Z2"]
    problem = _only(_validate(tmp_path, data), "warning", "cid")
    assert problem.file == str(tmp_path / "events.csv")
    assert problem.message.startswith(
        "3 events of 2 customer ids absent from the customers table (e.g. 'Z1', 'Z2')"
    )


def test_blank_event_texts_are_a_warning_with_a_count(tmp_path, data):
    # A missing text is normal for events (usage, billing); a blank one present in the data is suspicious.
    data.events.loc[[1, 2, 3, 4], "body"] = ["\t", "   ", None, None]
    problem = _only(_validate(tmp_path, data), "warning", "body")
    assert problem.file == str(tmp_path / "events.csv") and problem.message.startswith(
        "2 events with an empty (blank) text (of 6,182 with text)"
    )


def test_non_numeric_declared_values_are_an_error(tmp_path, data):
    data.events["amount"] = data.events["amount"].astype(str)
    data.events.loc[[4, 9], "amount"] = ["12,50", "ten"]
    problem = _only(_validate(tmp_path, data), "error", "amount")
    assert problem.file == str(tmp_path / "events.csv")
    assert problem.message.startswith(
        "2 non-numeric values in a declared numeric value column (e.g. row 4 '12,50', row 9 'ten')"
    )


def test_a_churn_event_that_never_occurs_is_an_error(tmp_path, data):
    data.spec = SPEC.replace("churn_event: cancel", "churn_event: cancelled")
    report = _validate(tmp_path, data)
    problem = _only(report, "error", "kind")
    assert problem.message == "churn_event 'cancelled' never occurs; the types are: 'cancel', 'login'"
    assert "all one class" in _only(report, "error", "labels").message  # and so every label is 0


def test_blank_values_in_a_numeric_column_are_a_warning(tmp_path, data):
    data.customers["monthly"] = data.customers["monthly"].astype(str)
    data.customers.loc[[0, 5], "monthly"] = " "
    problem = _only(_validate(tmp_path, data), "warning", "monthly")
    assert problem.file == str(tmp_path / "customers.csv")
    assert problem.message == "2 blank values will be treated as missing (the other 298 are numbers)"


def test_text_in_a_mostly_numeric_column_is_a_warning_naming_examples(tmp_path, data):
    data.customers["monthly"] = data.customers["monthly"].astype(str)
    data.customers.loc[[7, 8, 50], "monthly"] = ["twelve", "unknown", " "]
    problem = _only(_validate(tmp_path, data), "warning", "monthly")
    assert problem.message.startswith(
        "2 non-numeric values in a mostly numeric column (e.g. row 7 'twelve', row 8 'unknown'): "
        "the column will be treated as categorical"
    )
    assert [
        p for p in _validate(tmp_path, data).problems if p.column == "plan"
    ] == []  # text columns are fine


def test_reviews_with_one_class_are_an_error(tmp_path, data):
    data.reviews["sentiment"] = "positive"
    problem = _only(_validate(tmp_path, data), "error", "sentiment")
    assert problem.file == str(tmp_path / "reviews.csv")
    assert (
        problem.message == "labels are all one class (only 'positive'): a sentiment model needs at least two"
    )


def test_unknown_review_labels_are_an_error_naming_them(tmp_path, data):
    data.reviews.loc[[0, 1, 2], "sentiment"] = ["pos", "pos", "angry"]
    problem = _only(_validate(tmp_path, data), "error", "sentiment")
    assert problem.message == (
        "3 labels not among reviews.classes ['negative', 'neutral', 'positive']: 'pos' (2), 'angry' (1)"
    )


def test_ratings_outside_one_to_five_are_an_error_with_a_count(tmp_path, data):
    data.reviews = pd.DataFrame(
        {"review": [f"r{i}" for i in range(10)], "stars": [1, 5, 0, 6, 3, 4, 2, 9, 2.5, None]}
    )
    data.spec = SPEC.replace("label: sentiment, classes: [negative, neutral, positive]", "rating: stars")
    report = _validate(tmp_path, data)
    problem = _only(report, "error", "stars")
    assert problem.message.startswith(
        "4 ratings outside 1-5 stars (e.g. row 2 '0.0', row 3 '6.0', row 7 '9.0', ...)"
    )
    assert _only(report, "warning", "stars").message == "1 row without a rating will be skipped"


def test_ratings_that_map_to_one_class_are_an_error(tmp_path, data):
    data.reviews = pd.DataFrame({"review": ["a", "b", "c"], "stars": [4, 5, 5]})
    data.spec = SPEC.replace("label: sentiment, classes: [negative, neutral, positive]", "rating: stars")
    assert "only 'positive'" in _only(_validate(tmp_path, data), "error", "stars").message


def test_empty_review_texts_warn_and_all_empty_is_an_error(tmp_path, data):
    data.reviews.loc[[3, 4], "review"] = ["", None]
    problem = _only(_validate(tmp_path, data), "warning", "review")
    assert problem.file == str(tmp_path / "reviews.csv") and problem.message == "2 empty texts (of 30)"
    data.reviews["review"] = " "
    assert _only(_validate(tmp_path, data), "error", "review").message == "all 30 texts are empty"


def test_events_without_as_of_dates_warn_that_training_needs_them(tmp_path, data):
    data.spec = SPEC.replace("labels: {as_of: [2024-01-01, 2024-03-01], horizon_days: 60}\n", "")
    report = _validate(tmp_path, data)
    assert report.errors == []
    assert _only(report, "warning", "labels.as_of").file == str(tmp_path / "spec.yaml")


def test_many_problems_are_reported_together(tmp_path, data):
    data.customers.loc[3, "cid"] = "C0002"
    data.events["at"] = data.events["at"].astype(str)
    data.events.loc[11, "at"] = "bad"
    data.events.loc[12, "body"] = "  "
    data.reviews["sentiment"] = "neutral"
    report = _validate(tmp_path, data)
    assert [(p.severity, p.column) for p in report.problems] == [
        ("error", "cid"),
        ("error", "at"),
        ("warning", "body"),
        ("warning", "cid"),  # the events of C0003, whose row now says C0002
        ("error", "sentiment"),
    ]


def test_the_telco_csv_validates_with_a_four_line_spec(tmp_path):
    csv = shared_file("telco_churn", "WA_Fn-UseC_-Telco-Customer-Churn.csv")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"customers:\n  path: {csv}\n  id: customerID\n  label: Churn\n")
    report = validate_spec_file(spec)
    assert report.errors == [], report.render()
    assert [(p.column, p.message) for p in report.warnings] == [
        ("TotalCharges", "11 blank values will be treated as missing (the other 7,032 are numbers)")
    ]


def test_tables_without_usable_rows_are_an_error(tmp_path, data):
    data.customers = data.customers.iloc[0:0]
    data.events["at"] = "never"
    report = _validate(tmp_path, data)
    assert [p.message for p in report.errors if p.file.endswith("customers.csv")] == ["the table has no rows"]
    problem = _only(report, "error", "at")
    assert problem.message.startswith("6,184 values missing or not parseable as dates")
    assert [p.message for p in report.errors if p.file.endswith("events.csv") and p.column is None] == [
        "no usable events (6,184 rows rejected)"
    ]


def test_as_of_dates_without_a_churn_definition_are_an_error(tmp_path, data):
    data.spec = SPEC.replace(", churn_event: cancel", "")
    problem = _only(_validate(tmp_path, data), "error", "labels")
    assert problem.file == str(tmp_path / "spec.yaml") and problem.message.startswith("no churn definition")


def test_sentiment_scores_outside_minus_one_to_one_are_a_warning(tmp_path, data):
    data.events["score"] = 0.5
    data.events.loc[[2, 3], "score"] = [1.5, -7]
    data.spec = SPEC.replace("churn_event: cancel", "churn_event: cancel, sentiment: score")
    problem = _only(_validate(tmp_path, data), "warning", "score")
    assert problem.file == str(tmp_path / "events.csv") and problem.message == "2 scores outside [-1, 1]"
