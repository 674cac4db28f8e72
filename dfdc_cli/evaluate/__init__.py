"""Stage 4, evaluation: metrics and the report."""
