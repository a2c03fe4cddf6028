"""The one raw reader: rows with a wrong number of fields are found and rejected, never read shifted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.io import load_customers, load_events, load_reviews, not_a_number, not_a_number_text
from features.raw import ROW_PROBLEM, field_count_problems, iter_csv_rows, read_csv_rows
from features.spec import load_spec
from features.validate import validate_spec_file

CUSTOMERS = (
    "customer_id,plan,price,region\n"
    "c1,basic,19.99,north\n"
    "c2,basic,extra,29.99,south\n"  # a field too many: pandas would put 'extra' under price
    "c3,pro\n"  # a field too few
    '"c4","pro, annual",49.99,east\n'  # a quoted separator is one field
    "\n"  # a blank line is no row
    'c5,"two\nlines",9.99,west\n'  # a quoted line break is one field
    "c6,basic,$30,north\n"
)


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_rows_with_more_or_fewer_fields_than_the_header_are_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.csv", CUSTOMERS)
    assert field_count_problems(path, {}) == {
        1: "row has 5 fields, the header has 4: values would be shifted",
        2: "row has 2 fields, the header has 4: values are missing",
    }
    frame = read_csv_rows(path, {}, dtype=str)
    assert list(frame["customer_id"]) == ["c1", "c2", "c3", "c4", "c5", "c6"]  # one frame row per file row
    assert frame[ROW_PROBLEM].notna().tolist() == [False, True, True, False, False, False]
    chunks = list(iter_csv_rows(path, {}, ["customer_id", "price"], chunk_rows=2))
    assert pd.concat(chunks)[ROW_PROBLEM].notna().tolist() == [False, True, True, False, False, False]


def test_the_check_follows_the_specs_separator_and_quoting(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.tsv", 'id\ttext\n1\tsaid "hi\n2\tok\textra\n')
    assert list(field_count_problems(path, {"quoting": 3})) == [1]  # QUOTE_NONE: the lone quote is text
    semi = _write(tmp_path, "s.csv", "id;price\n1;2,50\n2;3;4\n")
    assert list(field_count_problems(semi, {"sep": ";"})) == [1]


def test_the_loaders_reject_broken_rows_and_keep_every_value_in_place(tmp_path: Path) -> None:
    _write(tmp_path, "c.csv", CUSTOMERS)
    spec = load_spec(_write(tmp_path, "spec.yaml", "customers: {path: c.csv, id: customer_id}\n"))
    customers, rejects = load_customers(spec)
    assert ROW_PROBLEM not in customers.columns
    assert list(customers["customer_id"]) == ["c1", "c4", "c5", "c6"]
    assert customers.set_index("customer_id").loc["c4", "plan"] == "pro, annual"
    assert rejects[["row", "customer_id", "column"]].values.tolist() == [[1, "c2", ""], [2, "c3", ""]]
    assert rejects["reason"].str.startswith("row has ").all()
    # A model reading `price` as a number: "$30" is a reject naming the value, as the service's 400 does.
    customers, rejects = load_customers(spec, numeric_columns=("price",))
    assert list(customers["customer_id"]) == ["c1", "c4", "c5"]
    assert rejects.iloc[-1][["row", "customer_id", "column", "reason"]].tolist() == [
        5,
        "c6",
        "price",
        "price: '$30' is not a finite number",
    ]


def test_events_and_reviews_with_broken_rows_are_rejected(tmp_path: Path) -> None:
    _write(
        tmp_path, "e.csv", "cid,ts,kind,amount\nc1,2024-01-01,buy,3\nc1,2024-01-02,buy,,4\nc2,2024-01-03\n"
    )
    _write(tmp_path, "r.csv", "text,stars\ngreat,5\nbad,1,oops\n")
    spec = load_spec(
        _write(
            tmp_path,
            "spec.yaml",
            "events: {path: e.csv, id: cid, time: ts, type: kind, values: [amount]}\n"
            "reviews: {path: r.csv, text: text, rating: stars}\n",
        )
    )
    events, rejects = load_events(spec)
    assert len(events) == 1 and rejects["row"].tolist() == [1, 2]
    assert rejects["reason"].str.startswith("row has ").all()
    reviews, rejects = load_reviews(spec)
    assert reviews["text"].tolist() == ["great"] and rejects["row"].tolist() == [1]


def test_validate_reports_broken_rows_as_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "c.csv", CUSTOMERS)
    report = validate_spec_file(_write(tmp_path, "spec.yaml", "customers: {path: c.csv, id: customer_id}\n"))
    messages = [p.message for p in report.errors]
    assert any(
        "2 rows with the wrong number of fields" in m and "row 1: row has 5 fields" in m for m in messages
    )
    assert not any(ROW_PROBLEM in m for p in report.problems for m in (p.message, str(p.column)))


@pytest.mark.parametrize(
    ("value", "bad"),
    [
        ("abc", True),
        ("$30", True),
        ("12,50", True),
        ("inf", True),
        ("nan", True),  # missing is null or blank, not the text "nan"
        ("12.5", False),
        (" 3 ", False),
        ("", False),
        (None, False),
        (7, False),
        (float("inf"), True),
        ("1e3", False),
    ],
)
def test_one_rule_for_numbers_written_as_text(value, bad) -> None:
    assert not_a_number(pd.Series([value], dtype=object)).tolist() == [bad]
    if isinstance(value, str):  # the service's one-value form of the same rule
        assert not_a_number_text(value) is bad
    assert not_a_number(pd.Series([1.5, np.nan])).tolist() == [False, False]
