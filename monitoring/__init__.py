"""Knowing when the models go stale: `churnsense monitor` (drift against the champion's reference, realised
performance once labels arrive) and its HTML report."""
