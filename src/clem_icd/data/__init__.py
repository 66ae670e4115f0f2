"""Data: sources (MIMIC, CodiEsp, custom, synthetic), the prepared-dataset format, splits, labels, stats."""
