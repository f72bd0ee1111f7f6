"""NiFi flow-definition templates (data files, read with importlib.resources)."""
