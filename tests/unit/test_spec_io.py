"""The dataset spec (shape checks, errors naming the key) and the loaders (canonical columns, rejects)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from features.columns import (
    ASPECT,
    CHURN_DATE,
    CHURNED,
    CUSTOMER_ID,
    EVENT_TYPE,
    SIGNUP_DATE,
    TEXT,
    TIMESTAMP,
)
from features.io import (
    DataLoadError,
    load_customers,
    load_events,
    load_reviews,
    parse_churn_label,
    rating_to_sentiment,
    resolve_files,
)
from features.spec import SpecError, load_spec


def _spec(folder: Path, text: str) -> Path:
    path = folder / "spec.yaml"
    path.write_text(text)
    return path


# --- spec --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("custmers:\n  path: c.csv\n", "custmers"),
        ("customers:\n  path: c.csv\n  idd: customerID\n", "customers.idd"),
        ("events:\n  path: e.csv\n  id: cid\n  type: kind\n", "events.time"),
        ("reviews:\n  path: r.csv\n  text: t\n  label: l\n  rating: stars\n", "reviews"),
        ("reviews:\n  path: r.csv\n  text: t\n", "reviews"),
        ("customers: {path: c.csv}\nlabels: {horizon_days: 0}\n", "labels.horizon_days"),
        (
            "customers: {path: c.csv}\nlabels: {as_of: {start: 2024-05-01, end: 2024-01-01, every_days: 30}}\n",
            "end is before start",
        ),
        ("labels: {horizon_days: 30}\n", "names no data"),
        ("customers: {path: '  '}\n", "customers.path"),
        ("events: {path: e.csv, id: c, time: t, type: k, aspect: a}\n", "beside a precomputed `sentiment`"),
    ],
)
def test_spec_errors_name_the_key(tmp_path, text, named):
    with pytest.raises(SpecError, match=named) as caught:
        load_spec(_spec(tmp_path, text))
    assert str(tmp_path / "spec.yaml") in str(caught.value)


def test_both_label_and_rating_in_reviews_is_refused_by_name(tmp_path):
    with pytest.raises(SpecError) as caught:
        load_spec(_spec(tmp_path, "reviews: {path: r.csv, text: t, label: l, rating: stars}\n"))
    assert (
        "reviews" in str(caught.value) and "`label`" in str(caught.value) and "`rating`" in str(caught.value)
    )


def test_unreadable_spec_files(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(_spec(tmp_path, "customers: [unclosed\n"))
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(_spec(tmp_path, "- just\n- a list\n"))


def test_spec_paths_are_relative_to_the_spec_file_and_as_of_dates_expand(tmp_path):
    spec = load_spec(
        _spec(
            tmp_path,
            "customers: {path: data/c.csv}\nlabels: {as_of: {start: 2024-01-01, end: 2024-03-01, every_days: 30}}\n",
        )
    )
    assert spec.resolve(spec.customers.path) == tmp_path / "data" / "c.csv"
    assert spec.labels.as_of_dates() == [dt.date(2024, 1, 1), dt.date(2024, 1, 31), dt.date(2024, 3, 1)]
    listed = load_spec(
        _spec(tmp_path, "customers: {path: c.csv}\nlabels: {as_of: [2024-02-01, 2024-01-01, 2024-02-01]}\n")
    )
    assert listed.labels.as_of_dates() == [dt.date(2024, 1, 1), dt.date(2024, 2, 1)]


# --- loaders -----------------------------------------------------------------------------------------


def test_load_customers_keeps_id_zeros_and_rejects_bad_rows(tmp_path):
    (tmp_path / "c.csv").write_text(
        "id,plan,left,joined,Churn\n"
        "00123,basic,,2023-01-05,No\n"
        " 00124 ,pro,2024-02-01,2023-02-01,Yes\n"
        ",pro,,2023-01-01,No\n"
        "00123,basic,,2023-01-05,No\n"
        "00125,pro,not a date,2023-03-01,Yes\n"
    )
    spec = load_spec(
        _spec(
            tmp_path,
            "customers: {path: c.csv, id: id, label: Churn, churn_date: left, signup_date: joined}\n",
        )
    )
    frame, rejects = load_customers(spec)
    assert list(frame[CUSTOMER_ID]) == ["00123", "00124"]
    assert list(frame[CHURNED]) == [0, 1]
    assert frame[CHURN_DATE].tolist()[1] == pd.Timestamp("2024-02-01") and pd.isna(frame[CHURN_DATE][0])
    assert frame[SIGNUP_DATE].dtype == "datetime64[ns]" and "plan" in frame.columns
    reasons = dict(zip(rejects["row"], rejects["reason"], strict=True))
    assert reasons == {
        2: "customer id is empty",
        3: "duplicate customer id (first kept)",
        4: "left is not a date",
    }
    assert set(rejects["file"]) == {str(tmp_path / "c.csv")}


def test_parse_churn_label_with_and_without_positive():
    values = pd.Series(["Yes", "no", "TRUE", None, "1", "churned", "Left"])
    assert parse_churn_label(values).tolist() == [1, 0, 1, 0, 1, 1, 0]
    assert parse_churn_label(values, positive="Left").tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert parse_churn_label(pd.Series([1, 0, 1.0]), positive=1).tolist() == [1, 0, 1]


def _write_events(path: Path, frame: pd.DataFrame) -> None:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)


def test_a_folder_of_parquet_parts_reads_as_the_parts_one_by_one(tmp_path, monkeypatch):
    """A batch bucket is a folder of parts, each with its own id and type dictionaries: read as one file's row
    groups, it gives the rows, values, missing ids and rejects that reading the parts one by one and joining them
    gives (categories may come in another order: everything reads them by name). Parts whose schemas differ are
    read one by one."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features import io

    rng = np.random.default_rng(2)
    folder = tmp_path / "events"
    folder.mkdir()
    parts = [["b", "a", None, "é", "a"], ["z", " b", "Z", "b", "0"], [None] * 4, ["a", "b"] * 2, ["q"]]
    for part, ids in enumerate(parts):
        n = len(ids)
        amount = rng.normal(size=n)
        amount[0] = np.nan
        table = pa.table(
            {
                "cid": pa.array(ids, pa.string()),
                "at": pa.array(pd.date_range("2024-01-01", periods=n, freq="h").astype("datetime64[us]")),
                "kind": pa.array(rng.choice(["login", "view", "pay"][: part % 3 + 1], n)),
                "amount": pa.array(amount),
            }
        )
        pq.write_table(table, folder / f"part-{part}.parquet", use_dictionary=["cid", "kind"])
    spec = load_spec(
        _spec(
            tmp_path, f"events:\n  path: {folder}\n  id: cid\n  time: at\n  type: kind\n  values: [amount]\n"
        )
    )

    def one_by_one() -> object:
        with monkeypatch.context() as patched:
            patched.setattr(io, "read_parquet_parts", lambda *_: None)
            return load_events(spec)

    def plain(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.astype({CUSTOMER_ID: object, EVENT_TYPE: object})

    together_calls = []
    real = io.read_parquet_parts
    monkeypatch.setattr(io, "read_parquet_parts", lambda *a: together_calls.append(a) or real(*a))
    got, reference = load_events(spec), one_by_one()
    assert len(together_calls) == 1 and real(*together_calls[0]) is not None  # the one-read path was taken
    assert len(got.frame) == 19 - 1 - 4  # the rows without an id are rejected, in both
    pd.testing.assert_frame_equal(plain(got.frame), plain(reference.frame))
    pd.testing.assert_frame_equal(got.rejects, reference.rejects)
    for name in (CUSTOMER_ID, EVENT_TYPE):
        assert isinstance(got.frame[name].dtype, pd.CategoricalDtype)
        assert set(got.frame[name].cat.categories) == set(reference.frame[name].cat.categories)
    # A part whose values are integers: another schema, so the parts are read one by one (and still agree).
    pq.write_table(
        pa.table(
            {"cid": ["x"], "at": pa.array([pd.Timestamp("2024-03-01")]), "kind": ["pay"], "amount": [3]}
        ),
        folder / "part-9.parquet",
    )
    assert real(sorted(folder.iterdir()), ["cid", "at", "kind", "amount"], ("cid", "kind")) is None
    pd.testing.assert_frame_equal(plain(load_events(spec).frame), plain(one_by_one().frame))
    # A part whose data pages are damaged (its footer intact): the error names that part.
    (folder / "part-9.parquet").unlink()
    damaged = folder / "part-3.parquet"
    data = bytearray(damaged.read_bytes())
    data[4:200] = bytes(196)
    damaged.write_bytes(bytes(data))
    with pytest.raises(DataLoadError, match="part-3.parquet"):
        load_events(spec)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_load_events_strips_ids_and_rejects_blank_ones(tmp_path, suffix):
    raw = pd.DataFrame(
        {
            "cid": ["c1", " c1 ", "", "   ", "c2", "c2"],
            "at": [
                "2024-01-01T10:00:00+02:00",
                "2024-01-02",
                "2024-01-03",
                "2024-01-04",
                "yesterday",
                "2024-01-05",
            ],
            "kind": ["login", "login ", "login", "view", "view", " "],
            "amount": ["1.5", "2", "3", "4", "5", "6"],
        }
    )
    _write_events(tmp_path / f"e{suffix}", raw)
    spec = load_spec(
        _spec(tmp_path, f"events: {{path: e{suffix}, id: cid, time: at, type: kind, values: [amount]}}\n")
    )
    frame, rejects = load_events(spec)
    assert frame[CUSTOMER_ID].tolist() == ["c1", "c1"]  # " c1 " is the same customer as "c1"
    assert frame[EVENT_TYPE].tolist() == ["login", "login"]
    assert frame[TIMESTAMP].tolist() == [
        pd.Timestamp("2024-01-01 08:00"),
        pd.Timestamp("2024-01-02"),
    ]  # naive UTC
    assert frame["amount"].tolist() == [1.5, 2.0]
    reasons = dict(zip(rejects["row"], rejects["reason"], strict=True))
    assert reasons == {
        2: "customer id is empty",
        3: "customer id is empty",
        4: "timestamp is missing, not a date, or outside 1678-2261",
        5: "event type is empty",
    }


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_precomputed_aspects_are_names_stripped_and_numbers_are_refused(tmp_path, suffix):
    raw = pd.DataFrame(
        {
            "cid": ["c1"] * 5,
            "at": ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"],
            "kind": ["ticket"] * 5,
            "score": ["-0.5"] * 5,
            "about": ["1", " billing ", "", "Billing", None],
        }
    )
    _write_events(tmp_path / f"e{suffix}", raw)
    line = f"events: {{path: e{suffix}, id: cid, time: at, type: kind, sentiment: score, aspect: about}}\n"
    frame, _ = load_events(load_spec(_spec(tmp_path, line)))
    about = frame[ASPECT].tolist()
    # A coded aspect stays "1" (not "1.0"), spaces go, blank is no aspect, case is the model's to decide.
    assert about[:2] == ["1", "billing"] and about[3] == "Billing"
    assert pd.isna(about[2]) and pd.isna(about[4])
    numbers = raw.assign(about=[1, 2, None, 1, 2])
    numbers.to_parquet(tmp_path / "n.parquet")
    line = "events: {path: n.parquet, id: cid, time: at, type: kind, sentiment: score, aspect: about}\n"
    with pytest.raises(DataLoadError, match="events.aspect: column 'about' holds numbers"):
        load_events(load_spec(_spec(tmp_path, line)))


def test_load_events_rejects_non_numeric_values(tmp_path):
    pd.DataFrame(
        {"cid": ["a", "b"], "at": ["2024-01-01", "2024-01-02"], "kind": ["x", "x"], "amount": ["1", "ten"]}
    ).to_csv(tmp_path / "e.csv", index=False)
    spec = load_spec(
        _spec(tmp_path, "events: {path: e.csv, id: cid, time: at, type: kind, values: [amount]}\n")
    )
    frame, rejects = load_events(spec)
    assert frame[CUSTOMER_ID].tolist() == ["a"]
    assert rejects[["row", "column", "reason"]].values.tolist() == [[1, "amount", "amount is not a number"]]


def test_a_folder_or_glob_of_files_is_one_table(tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    for month, ids in (("01", ["a", "b"]), ("02", ["c"])):
        pd.DataFrame({"cid": ids, "at": f"2024-{month}-01", "kind": "login"}).to_parquet(
            folder / f"part-{month}.parquet"
        )
    (folder / "notes.md").write_text("not data")
    for path in ("events", "events/*.parquet"):
        spec = load_spec(_spec(tmp_path, f"events: {{path: '{path}', id: cid, time: at, type: kind}}\n"))
        assert [p.name for p in resolve_files(spec, spec.events)] == ["part-01.parquet", "part-02.parquet"]
        assert load_events(spec).frame[CUSTOMER_ID].tolist() == ["a", "b", "c"]


def test_missing_files_and_columns_raise_data_load_error_naming_them(tmp_path):
    spec = load_spec(_spec(tmp_path, "events: {path: 'nothing/*.csv', id: cid, time: at, type: kind}\n"))
    with pytest.raises(DataLoadError, match="no data files match"):
        load_events(spec)
    (tmp_path / "e.xlsx").write_text("x")
    spec = load_spec(_spec(tmp_path, "events: {path: e.xlsx, id: cid, time: at, type: kind}\n"))
    with pytest.raises(DataLoadError, match="unsupported file type '.xlsx'"):
        load_events(spec)
    pd.DataFrame({"cid": ["a"], "when": ["2024-01-01"], "kind": ["x"]}).to_csv(
        tmp_path / "e.csv", index=False
    )
    spec = load_spec(_spec(tmp_path, "events: {path: e.csv, id: cid, time: at, type: kind}\n"))
    with pytest.raises(DataLoadError, match="'at' not found"):
        load_events(spec)


def test_load_reviews_maps_ratings_and_rejects_unknown_ones(tmp_path):
    pd.DataFrame({"body": ["awful", "meh", "great", "??", "fine"], "stars": [1, 3, 5, 7, None]}).to_csv(
        tmp_path / "r.csv", index=False
    )
    spec = load_spec(_spec(tmp_path, "reviews: {path: r.csv, text: body, rating: stars}\n"))
    frame, rejects = load_reviews(spec)
    assert frame[[TEXT, "label"]].values.tolist() == [
        ["awful", "negative"],
        ["meh", "neutral"],
        ["great", "positive"],
    ]
    assert rejects["row"].tolist() == [3, 4]
    assert rating_to_sentiment(pd.Series(["2", "4", "2.5"])).tolist()[:2] == ["negative", "positive"]
    assert pd.isna(rating_to_sentiment(pd.Series([2.5]))[0])


def test_every_shipped_spec_and_text_config_loads():
    """The specs, aspect taxonomies and sentiment / aspect fine-tuning configs in configs/ parse and validate
    (their data may be absent here)."""
    from training.aspects import load_aspect_config
    from training.sentiment_config import load_sentiment_config

    root = Path(__file__).resolve().parents[2] / "configs"
    specs = sorted(root.glob("*.spec.yaml"))
    assert len(specs) >= 7
    for path in specs:
        load_spec(path)  # raises naming the key
    for path in sorted(root.glob("aspects*.yaml")):
        if "trained" in path.name:  # a fine-tuning config, read by the sentiment trainer
            assert load_sentiment_config(path).model_name == "churnsense-aspects"
        else:
            assert load_aspect_config(path).aspects
    for path in sorted(root.glob("sentiment*.yaml")):
        load_sentiment_config(path)


def test_parquet_row_groups_with_their_own_dictionaries_read_as_one_categorical(tmp_path, monkeypatch):
    """A Parquet file whose row groups each carry their own id dictionary (as pyarrow and Spark write them)
    reads to the same frame by the row-group path as by pyarrow's whole-table conversion: same ids and
    categories in order of first appearance, missing ids, NaN values and NaT times where the file has nulls,
    and times in nanoseconds."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features import parquet_read as io

    rng = np.random.default_rng(5)
    n = 3_000
    ids = np.array([f"c{i:04d}" for i in rng.integers(0, 900, n)], dtype=object)
    ids[[10, 2_500]] = None
    amount = rng.normal(size=n)
    amount[[3, 1_800]] = np.nan
    times = pd.Series(pd.date_range("2024-01-01", periods=n, freq="37min")).astype("datetime64[us]")
    times[[4, 2_999]] = pd.NaT
    table = pa.table(
        {
            "cid": pa.array(ids, pa.string()).dictionary_encode(),
            "at": pa.array(times),
            "kind": pa.array(rng.choice(["login", "view", "pay"], n)),
            "amount": pa.array(amount, from_pandas=True),
        }
    )
    path = tmp_path / "events.parquet"
    pq.write_table(table, path, row_group_size=700)  # five row groups, five dictionaries
    assert pq.ParquetFile(path).num_row_groups == 5
    columns, coded = ["cid", "at", "kind", "amount"], ("cid", "kind")
    monkeypatch.setattr(io, "_SMALL", 0)  # every dictionary through churnsense's own unification
    fast = io._read_row_groups(path, columns, coded)
    by_pyarrow = pq.read_table(path).column("cid").to_pandas()
    assert list(fast["cid"].cat.categories) == list(by_pyarrow.cat.categories)
    read_row_groups = io._read_row_groups
    monkeypatch.setattr(io, "_read_row_groups", lambda *_: None)
    whole = io.read_parquet(path, columns, coded)
    pd.testing.assert_frame_equal(fast, whole)
    assert isinstance(fast["cid"].dtype, pd.CategoricalDtype) and fast["at"].dtype == "datetime64[ns]"
    assert fast["cid"].isna().sum() == 2 and fast["at"].isna().sum() == 2 and fast["amount"].isna().sum() == 2
    assert fast["cid"].astype(object).where(fast["cid"].notna(), None).tolist() == ids.tolist()
    # The last row group holds only missing ids (as a file sorted by id ends): its dictionary is empty.
    tail = pa.concat_tables(
        [
            table.slice(0, 2_000),
            table.slice(2_000, 700).set_column(0, "cid", pa.nulls(700, table["cid"].type)),
        ]
    )
    pq.write_table(tail, tmp_path / "tail.parquet", row_group_size=700)
    fast = read_row_groups(tmp_path / "tail.parquet", columns, coded)
    assert fast["cid"].isna().sum() == 700 + int(table["cid"].slice(0, 2_000).null_count)
    assert (
        fast["cid"][:2_000].astype(object).where(fast["cid"][:2_000].notna(), None).tolist()
        == ids[:2_000].tolist()
    )
    # One id list from many chunks' dictionaries, a null inside a dictionary included (pyarrow refuses those).
    chunks = pa.chunked_array(
        [
            pa.array(["b", "a", None, "b"]).dictionary_encode(),
            pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 0], pa.int32()), pa.array(["x", None])),
        ]
    )
    assert io.categorical_of(chunks).tolist() == ["b", "a", np.nan, "b", "x", np.nan, np.nan, "x"]
    assert list(io.categorical_of(chunks).categories) == ["b", "a", "x"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_time_nanoseconds_cannot_hold_is_a_rejected_row_not_a_crash(tmp_path, suffix):
    """A 3000-01-01 or 9999-12-31 placeholder (beyond pandas' nanosecond range) used to raise
    OutOfBoundsDatetime from every loader; it is one rejected row naming the column, and the rest load."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    times = [
        dt.datetime(2024, 1, 1),
        dt.datetime(3000, 1, 1),
        dt.datetime(9999, 12, 31),
        dt.datetime(1600, 1, 1),
    ]
    if suffix == ".parquet":
        table = pa.table(
            {"cid": ["a", "b", "c", "d"], "at": pa.array(times, pa.timestamp("us")), "kind": ["x"] * 4}
        )
        pq.write_table(table, tmp_path / "e.parquet")
    else:
        (tmp_path / "e.csv").write_text(
            "cid,at,kind\n" + "".join(f"{c},{t:%Y-%m-%d},x\n" for c, t in zip("abcd", times, strict=True))
        )
    spec = load_spec(_spec(tmp_path, f"events: {{path: e{suffix}, id: cid, time: at, type: kind}}\n"))
    frame, rejects = load_events(spec)
    assert frame[CUSTOMER_ID].tolist() == ["a"] and frame[TIMESTAMP].dtype == "datetime64[ns]"
    assert dict(zip(rejects["row"], rejects["reason"], strict=True)) == {
        row: "timestamp is missing, not a date, or outside 1678-2261" for row in (1, 2, 3)
    }
    assert set(rejects["column"]) == {"at"}
