"""The practical ceiling: a bare requests.Session thread pool POSTing to the same endpoint.

Runs as its own process, as dcnios-consumer does, so that both pay the same process costs.
Usage: bare_pool.py URL TOKEN CONCURRENCY N  -> prints "invocations/s CPU-ms-per-invocation"
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests


def main() -> None:
    url, token, concurrency, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=concurrency))
    body = b'{"event":{"name":"x.png","mask":["IN_CLOSE_WRITE"]},"subscription":"http://d/s"}'
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(_: int) -> int:
        return session.post(url, data=body, headers=headers, timeout=(5, 30)).status_code

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, range(min(n, 200))))  # warm the connection pool
        cpu0, start = time.process_time(), time.perf_counter()
        statuses = list(pool.map(call, range(n)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    if any(s != 201 for s in statuses):
        raise SystemExit(f"unexpected statuses: {sorted(set(statuses))}")
    sys.stdout.write(f"{n / elapsed} {cpu / n * 1000}\n")


if __name__ == "__main__":
    main()
