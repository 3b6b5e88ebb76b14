"""The Lua scripts the store runs, one file each."""

from __future__ import annotations

from importlib import resources


def counter_script(name: str) -> str:
    """`name` after _common.lua (the calendar, the key layout and the rate windows' bookkeeping): the
    scripts that work on quota counters (quota.lua, refund.lua, flush.lua) all keep that one layout."""
    lua = resources.files("proxy") / "lua"
    return (lua / "_common.lua").read_text() + "\n" + (lua / name).read_text()
