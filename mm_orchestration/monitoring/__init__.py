"""How the system watches itself: run alerts, SLA, Sentry, structured logs and the job-
health dashboard.
"""
