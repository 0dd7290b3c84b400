"""Stage 4: search the supernet's shape space for the best subnet under a latency budget."""
