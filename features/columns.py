"""Canonical column names. Loaders rename the user's columns to these; everything downstream uses them."""

CUSTOMER_ID = "customer_id"
TIMESTAMP = "timestamp"
EVENT_TYPE = "event_type"
TEXT = "text"
SENTIMENT = "sentiment"  # score in [-1, 1]: P(positive) - P(negative)
ASPECT = "aspect"  # what a scored text is about (an aspect model's name, or its "none")
CHURNED = "churned"  # 0/1 label
CHURN_DATE = "churn_date"
SIGNUP_DATE = "signup_date"
AS_OF = "as_of"
OTHER_EVENT_TYPE = "other"  # event types the model never saw are counted here
