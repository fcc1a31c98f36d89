"""Invite cleanup: invitations nobody accepted in time expire."""
