"""Command-line interface (click). The only package that imports click."""
