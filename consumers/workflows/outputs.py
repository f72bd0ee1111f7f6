"""A parent's outputs, listed from its service's output directory when its job has ended.

Why listing at the end, and not watching the output path through a source: OSCAR reports no
job completion and its supervisor uploads outputs one file at a time after the script
(faassupervisor/storage/__init__.py ``upload_output``), so a watch sees a growing set and cannot
tell when it is complete, nor whether the job that wrote it will still fail (a failed upload
fails the job after some files are up). Job tracking already knows when a job Succeeded; a
listing taken then is the job's complete output, recorded once in the run's state, so a
restarted orchestrator maps exactly the items it mapped before. It also needs no extra source,
channel and topic per output directory.

Which files are a job's: the supervisor uploads ``$TMP_OUTPUT_DIR/<name>`` to ``<output
path>/<name>``, with no run or job in the path, so a workflow step writes its outputs as
``$TMP_OUTPUT_DIR/${JOB_UUID}_<name>`` (``JOB_UUID`` is the job name, oscar-api.md §4.1 step
10). A retried job has a new name, so a failed attempt's partial outputs are never mapped.
"""

from __future__ import annotations

import logging

from dcnios.consumers.workflows.state import item_outputs
from dcnios.errors import DCacheError
from dcnios.producers.dcache_api import DCacheClient
from dcnios.spec import SourceSpec

__all__ = ["OutputLister"]

logger = logging.getLogger(__name__)


class OutputLister:
    """Lists output directories through a source's dCache namespace API (blocking: run it in a thread)."""

    def __init__(self, source: SourceSpec, client: DCacheClient | None = None) -> None:
        self.client = client or DCacheClient(source)

    def outputs(self, directory: str, job: str) -> list[dict[str, str]]:
        """The outputs ``job`` uploaded to ``directory``; none when the directory does not exist.

        Raises:
            DCacheError: dCache failed the listing (the caller asks again later).
        """
        found: list[tuple[str, str]] = []
        try:
            for page in self.client.iter_listing(directory):
                found += [(f"{directory.rstrip('/')}/{c.name}", c.name) for c in page if not c.is_dir]
        except DCacheError as exc:
            if exc.status == 404:
                return []
            raise
        return item_outputs(job, found)
