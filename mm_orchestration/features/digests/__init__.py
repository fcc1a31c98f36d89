"""The notification digest: each person's unread notifications, once per period in their
own time zone.
"""
