"""Dispatch: which deployment serves a request's inputs, split to its caps, retried, failed over, guarded by
breakers. Deployments (`deployment.py`), breakers (`breaker.py`), choice (`strategy.py`), the error table
(`errors.py`) and the run itself (`dispatcher.py`)."""

from proxy.dispatch.deployment import Deployment, wait_any_ready
from proxy.dispatch.dispatcher import (
    CallReport,
    Candidate,
    Dispatched,
    Dispatcher,
    Target,
    check_servable,
)

__all__ = ["CallReport", "Candidate", "Deployment", "Dispatched", "Dispatcher", "Target", "check_servable",
           "wait_any_ready"]
