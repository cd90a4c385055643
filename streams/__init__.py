"""Faust stream processors: thin adapters over the pure scoring, drift and rule logic."""
