"""Backup verify: the monthly restore drill, timed against the RTO and RPO."""
