"""Suppression cleanup: SendGrid's bounces, blocks and spam reports kept in step with the
portal.
"""
