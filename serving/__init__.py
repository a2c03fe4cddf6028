"""Real-time BentoML service and batch scoring (local and Spark)."""
