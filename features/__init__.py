"""Dataset spec, loading, validation, labels and the one feature engine shared by every scoring path."""
