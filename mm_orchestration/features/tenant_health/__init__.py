"""The daily tenant health check: storage, seats, overdue milestones, and the alerts they
call for.
"""
