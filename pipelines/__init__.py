"""Prefect flows and their thin tasks: wiring only, the work lives in `loopline`."""
