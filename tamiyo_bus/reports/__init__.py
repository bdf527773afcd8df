"""Field reports: observation windows, the write-ahead log, delivery to Simic.

See docs/field-reports.md for the lifecycle and how to operate it.
"""
