"""Mux webhook retry: the dead-letter queue of Mux events, replayed, requeued, discarded
and watched for depth.
"""
