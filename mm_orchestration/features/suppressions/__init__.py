"""Suppression cleanup: bounces older than 30 days leave the suppression list, here and at
SendGrid, so an address that bounced once can be mailed again; unsubscribes, spam reports
and invalid addresses are kept for ever.
"""
