"""Plumbing shared by the tests and the benchmarks: the fake OpenAI upstream, its known vectors,
servers on free ports (threads and `embedgate serve` subprocesses) and a redis-server of our own.

Nothing here imports `tests/`; `tests/` and `bench/` both import from here.
"""
