"""One folder per job family, each holding its whole story: job or asset, schedule,
sensors, SQL, rules and its own resource.
"""
