"""`make bench`'s table and plot of what bench/gateway.py measured: embedgate beside the two floors (the bare
aiohttp forwarder, the raw asyncio one) and LiteLLM's proxy, from the report it writes as JSON."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str, str]


def rows(report: dict[str, Any]) -> list[Row]:
    """(figure, embedgate, bare aiohttp forwarder, raw forwarder, peer) rows for the table."""
    out: list[Row] = []
    peer = report.get("peers", {}).get("litellm", {})
    peer_ok = "latency" in peer
    floor = report.get("baseline", {})
    floor_ok = "latency" in floor
    raw = report.get("raw_floor", {})
    raw_ok = "latency" in raw

    def lat(r: dict[str, Any]) -> str:
        a = r["added"]
        return f"+{a['p50_ms']:.2f} / +{a['p90_ms']:.2f} / +{a['p99_ms']:.2f}"

    def pv(fn: Callable[[dict[str, Any]], str]) -> str:
        return fn(peer) if peer_ok else "—"

    def fv(fn: Callable[[dict[str, Any]], str]) -> str:
        return fn(floor) if floor_ok else "—"

    def rv(fn: Callable[[dict[str, Any]], str]) -> str:
        return fn(raw) if raw_ok else "—"

    def ratio(c: str) -> Callable[[dict[str, Any]], str]:
        return lambda r: "{through_rps:.0f} / {direct_rps:.0f} = {ratio:.2f}".format(**r["throughput"][c])

    def cpu(r: dict[str, Any]) -> str:
        return f"{r['latency']['cpu_us_per_request']:.0f} / {r['throughput']['32']['cpu_us_per_request']:.0f}"

    if "latency" in report.get("open", {}):
        o = report["open"]
        d = o["latency"]["direct"]
        out.append(("direct p50 / p90 / p99 ms", f"{d['p50_ms']:.2f} / {d['p90_ms']:.2f} / {d['p99_ms']:.2f}",
                    "", "", ""))
        out.append(("added p50/p90/p99 ms, open", lat(o["latency"]), fv(lambda f: lat(f["latency"])),
                    rv(lambda f: lat(f["latency"])), pv(lambda p: lat(p["latency"]))))
        for c in o["throughput"]:
            out.append((f"req/s through ÷ direct, open, c={c}", ratio(c)(o), fv(ratio(c)), rv(ratio(c)),
                        pv(ratio(c))))
        out.append(("gateway CPU µs/request, open, seq / c=32", cpu(o), fv(cpu), rv(cpu), pv(cpu)))
        for fmt in ("base64", "float"):
            r = o["largest"][fmt]
            out.append((f"largest 2048x1536 {fmt}: direct p50 → added p50 ms",
                        f"{r['direct']['p50_ms']:.0f} → +{r['added']['p50_ms']:.1f}", "", "", ""))
    if "latency" in report.get("production", {}):
        p = report["production"]
        out.append(("added p50/p90/p99 ms, production miss", lat(p["latency"]), "", "", ""))
        out.append(("added p50/p90/p99 ms, production hit", lat(p["latency"]["hit"]), "", "", ""))
        for c, r in p["throughput"].items():
            out.append((f"req/s ÷ direct, production c={c}, miss / hit",
                        f"{r['ratio']:.2f} / {r['hit_ratio']:.2f}", "", "", ""))
        t32 = p["throughput"]["32"]
        out.append(("gateway CPU µs/request, production c=32, miss / hit",
                    f"{t32['cpu_us_per_request']:.0f} / {t32['hit_cpu_us_per_request']:.0f}", "", "", ""))
    return out


def table(report: dict[str, Any]) -> str:
    peer = report.get("peers", {}).get("litellm")
    head = ("figure", "embedgate", "bare aiohttp forwarder (floor)", "raw asyncio forwarder (no framework)",
            f"LiteLLM proxy {peer.get('version', '')}".strip() if peer else "")
    lines = [f"| {head[0]} | {head[1]} | {head[2]} | {head[3]} |" + (f" {head[4]} |" if peer else "")]
    lines.append("|---|---|---|---|" + ("---|" if peer else ""))
    for figure, ours, floor, raw, theirs in rows(report):
        lines.append(f"| {figure} | {ours} | {floor} | {raw} |" + (f" {theirs} |" if peer else ""))
    if peer and "skipped" in peer:
        lines.append(f"\nLiteLLM proxy not measured: {peer['skipped']}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    series: list[tuple[str, dict[str, Any]]] = [(m, report[m]) for m in ("open", "production")
                                                if "latency" in report.get(m, {})]
    series += [(name, report[key]) for key, name in (("baseline", "bare aiohttp forwarder"),
                                                     ("raw_floor", "raw asyncio forwarder"))
               if "latency" in report.get(key, {})]
    series += [(name, r) for name, r in report.get("peers", {}).items() if "latency" in r]
    qs = ("p50_ms", "p90_ms", "p99_ms")
    width = 0.8 / max(1, len(series))
    for i, (name, r) in enumerate(series):
        left.bar([j + i * width for j in range(3)], [r["latency"]["added"][q] for q in qs], width, label=name)
        right.plot(list(r["throughput"]), [row["ratio"] for row in r["throughput"].values()], marker="o",
                   label=name)
    left.set_xticks([j + width * (len(series) - 1) / 2 for j in range(3)], ["p50", "p90", "p99"])
    left.set_ylabel("added latency, ms")
    left.legend()
    right.set_xlabel("concurrent clients")
    right.set_ylabel("throughput through ÷ direct")
    right.set_ylim(0, 1.05)
    right.legend()
    fig.suptitle(f"embedgate overhead, {report['date']}, {report['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
