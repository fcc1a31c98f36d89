"""Operational jobs: one module per job, holding its ops, its job and its email."""
