"""What only development uses, never production: the embedded PostgreSQL, the supervisor,
the local topologies and demo data.
"""
