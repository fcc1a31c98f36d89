"""The weekly data-residency report for compliance: where each tenant's data lives, checked
against the region rules.
"""
