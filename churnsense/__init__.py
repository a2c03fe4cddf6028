"""churnsense: churn risk and sentiment, trained, tracked, served and batch-scored from one feature engine."""

__version__ = "0.1.0"
