"""Training pipelines: churn (scikit-learn) and sentiment (transformers), tracked in MLflow."""
