"""The store-backed services of one gateway, built without the HTTP app, for unit tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from proxy.accounts import Accounts
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


async def with_services(settings: StoreSettings, body: Callable[[Services], Awaitable[None]]) -> None:
    """Run `body` with fresh services on the running loop, and close the store after."""
    store = Store(settings)
    errors = Counter("store_errors", "store errors", ["operation"], registry=CollectorRegistry())
    outages = Outages(errors)
    try:
        await store.warm_up()
        await body(Services(store, Quotas(store, outages), Accounts(store), Usage(store, outages), errors))
    finally:
        await store.aclose()
