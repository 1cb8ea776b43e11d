"""Attention sparsity: strategies (which blocks a head keeps), plans (a
strategy per layer and head, as a JSON file), calibration (measuring each
head's pattern and choosing its cheapest strategy within a recall budget)
and the MiniLM quality check on real weights."""
