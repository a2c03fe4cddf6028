"""A deliberately shifted copy of a simulated data set, for showing (and testing) drift monitoring.

    write_shifted_copy("demo_out/data", "demo_out/shifted", price_factor=1.4, text_share=0.5)

The copy has every customer's `monthly_price` multiplied by `price_factor` (a price change) and a share of the
event texts replaced by one new complaint (a new app that keeps failing): what `churnsense monitor` should flag
is the price and the text features, and nothing else.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

NEW_COMPLAINT = (
    "The new app logs me out every time and support keeps me waiting for hours. Fix it or I leave."
)


def write_shifted_copy(
    src: str | Path, dst: str | Path, price_factor: float = 1.4, text_share: float = 0.5, seed: int = 0
) -> Path:
    """Copy the simulator's folder `src` (spec.yaml, customers.csv, events.parquet) to `dst`, shifted; returns
    the copy's spec path."""
    src, dst = Path(src), Path(dst)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    customers = pd.read_csv(dst / "customers.csv", dtype={"customer_id": "string"})
    customers["monthly_price"] = (customers["monthly_price"] * price_factor).round(2)
    customers.to_csv(dst / "customers.csv", index=False)
    events = pd.read_parquet(dst / "events.parquet")
    texts = events["text"].astype("string")
    rng = np.random.default_rng(seed)
    replaced = texts.notna().to_numpy() & (rng.random(len(events)) < text_share)
    texts[replaced] = NEW_COMPLAINT
    events["text"] = texts
    events.to_parquet(dst / "events.parquet", index=False)
    return dst / "spec.yaml"
