"""The audit trail as compliance reads it: the daily asset and the CSV query behind the
console's download.
"""
