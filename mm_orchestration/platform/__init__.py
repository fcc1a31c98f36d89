"""What every feature shares: settings and the inventory, the ledger, the outbox and
mailer, the database, instance and storage, migrations and audit.
"""
