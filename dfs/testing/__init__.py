"""Fakes shipped with the code for tests and simulations (style.md §1: dfs/testing)."""
