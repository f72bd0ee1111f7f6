"""PNG plots of one benchmark run: throughput against concurrency, and latency CDFs."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def render(series: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    points = sorted(series.get("consumer_throughput", []))
    if points:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        cs = [p[0] for p in points]
        ax.plot(cs, [p[3] for p in points], "k--", label="ceiling C/L (20 ms)")
        if all(p[4] for p in points):
            ax.plot(cs, [p[4] for p in points], "k:", label="wrk (nginx+echo endpoint)")
        ax.plot(cs, [p[5] for p in points], "^-", label="bare asyncio + aiohttp (uvloop)")
        ax.plot(cs, [p[2] for p in points], "s-", label="bare requests.Session pool")
        ax.plot(cs, [p[1] for p in points], "o-", label="dcnios-consumer")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency (in-flight invocations)")
        ax.set_ylabel("invocations/s")
        ax.set_title("Consumer throughput against concurrency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        path = out / "throughput.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    curves = {f"e2e: {k}": v for k, v in series.get("e2e_latency_ms", {}).items()}
    if series.get("producer_ack_ms"):
        curves["producer: frame read → acked"] = series["producer_ack_ms"]
    if curves:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for label, values in curves.items():
            ordered = sorted(v for v in values if v >= 0) or [0.0]
            ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
            ax.plot([max(v, 0.01) for v in ordered], ys, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction of events")
        ax.set_title("Latency CDFs")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        path = out / "latency_cdf.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
