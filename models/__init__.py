"""Model wrappers: load registered models, check their contract, predict with reasons."""
