"""Fakes and harnesses for tests, simulations and chaos runs (style.md §1), outside the
wheel: the product never imports them."""
