"""Tasks: the pure init / step / eval functions that the one training loop runs."""
