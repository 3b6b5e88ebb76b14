"""`/metrics` read the way Prometheus reads it: every sample by name and labels."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


def parse(text: str) -> Samples:
    """Every sample but `_created` (a timestamp per process, not a count)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if not s.name.endswith("_created")}


def scrape_text(url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = httpx.get(url + "/metrics", headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.text


def scrape(url: str, token: str | None = None) -> Samples:
    return parse(scrape_text(url, token))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str, nonzero: bool = True) -> dict[Labels, float]:
    """The samples of one name by their labels (those at 0 left out unless asked for)."""
    return {labels: v for (n, labels), v in samples.items() if n == name and (v or not nonzero)}


def labelled(**labels: str) -> Labels:
    return frozenset(labels.items())
