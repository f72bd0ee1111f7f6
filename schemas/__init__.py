"""Avro schemas (data files, read with importlib.resources)."""
