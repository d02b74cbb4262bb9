"""The offline evaluation of PAPER.md: accuracy-cost curves, AUC and router metrics."""
