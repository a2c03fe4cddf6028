"""Batch scoring of a whole customer base: spec files -> features as of a date -> churn risk, one row per customer.

    summary = score_customers("data/spec.yaml", "2024-10-01", "scores.parquet")   # local engine (default)
    print(summary.render()); summary.top_risk(10)

Both engines run the same steps on groups of customers ("buckets": customers whose hashed id falls in the same
bucket, with all their events), each step in its own module:

1. `plan`: resolve the files, the churn model and its own sentiment model, and size the buckets (picklable).
2. `texts`: list the distinct event texts the sentiment cache lacks and score each once, in one place.
3. `read` + `buckets`: read the raw rows as the loaders would, turn texts into cached sentiment, split the rows
   by bucket, and score one bucket: the project's loaders (with rejects), `build_customer_features` and
   `ChurnModel.score` (nothing here computes a feature).
4. `output`: results (risk, band, reasons, base value, eligibility, both models) and rejected input rows
   (file, row, reason), written under temporary names and renamed; the summary.

Engines: `local` (a process pool over on-disk buckets, resumable) and `spark` (the same read tasks in Spark,
buckets shuffled to Python workers). `workers` keeps what each process loads once. Results per customer depend
neither on the bucketing nor on the engine (tests/server/test_skew.py: bit-identical with the training frame).
"""

from batch.output import BatchSummary, read_scores, top_risk
from batch.plan import BatchError
from batch.score import score_customers, score_store

__all__ = ["BatchError", "BatchSummary", "read_scores", "score_customers", "score_store", "top_risk"]
