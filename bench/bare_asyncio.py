"""A ceiling for an asyncio client: N POSTs from C tasks on one loop (uvloop) with aiohttp.

Runs as its own process, as dcnios-consumer does, so that both pay the same process costs. The
session is set up as the consumer's (no env/netrc lookups, C connections); each call reads its
answer to the end. Nothing else happens per call: no Kafka, no bookkeeping.
Usage: bare_asyncio.py URL TOKEN CONCURRENCY N  -> prints "invocations/s CPU-ms-per-invocation"
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter

import aiohttp

from dcnios.aio import loop_factory


async def _main(url: str, token: str, concurrency: int, n: int) -> tuple[float, float]:
    body = b'{"event":{"name":"x.png","mask":["IN_CLOSE_WRITE"]},"subscription":"http://d/s"}'
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    statuses: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=False)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:

        async def worker(calls: int) -> None:
            for _ in range(calls):
                async with session.post(url, data=body, headers=headers, allow_redirects=False) as answer:
                    await answer.read()
                    statuses[answer.status] += 1

        async def round_of(total: int) -> None:
            share, extra = divmod(total, concurrency)
            await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))

        await round_of(min(n, 4 * concurrency))  # open the connections
        cpu0, start = time.process_time(), time.perf_counter()
        await round_of(n)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    if set(statuses) != {201}:
        raise SystemExit(f"unexpected statuses: {dict(statuses)}")
    return n / elapsed, cpu / n * 1000


def main() -> None:
    url, token, concurrency, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        rate, cpu_ms = runner.run(_main(url, token, concurrency, n))
    sys.stdout.write(f"{rate} {cpu_ms}\n")


if __name__ == "__main__":
    main()
