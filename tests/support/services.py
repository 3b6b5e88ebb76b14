"""The store-backed services of one gateway, built without the HTTP app, for unit tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from proxy.accounts import Accounts
from proxy.ledger import Ledger
from proxy.quota import Quotas
from proxy.settings import StoreSettings
from proxy.store import Outages, Store
from proxy.usage import Usage


@dataclass
class Services:
    store: Store
    quotas: Quotas
    accounts: Accounts
    usage: Usage
    errors: Counter
    ledger: Ledger


async def with_services(settings: StoreSettings, body: Callable[[Services], Awaitable[None]], *,
                        max_pending: int = 100_000, spill_dir: Path | None = None) -> None:
    """Run `body` with fresh services on the running loop, and close the store after."""
    store = Store(settings)
    errors = Counter("store_errors", "store errors", ["operation"], registry=CollectorRegistry())
    outages = Outages(errors)
    try:
        await store.warm_up()
        ledger = Ledger(store, max_pending, spill_dir)
        await body(Services(store, Quotas(store, outages, ledger), Accounts(store), Usage(store, outages, ledger),
                            errors, ledger))
    finally:
        await store.aclose()
