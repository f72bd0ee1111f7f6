"""Workflows: a storage event starts a durable run of a graph of OSCAR services.

graph.py (the validated graph, drawn), state.py (a run's state and its pure transitions),
store.py (the compacted run-state topic), steps.py (one step job's call and end, through the
consumer's RecordDriver), outputs.py (a parent's outputs listed when it ends), scheduler.py (the
orchestrator on its event loop). See docs/architecture.md.
"""
