"""Which runs' ports an algorithm container may see (GET /vpn/algorithm/addresses).

The rules are vantage6 4.13.7's (server/resource/port.py, VPNAddress.get), quirks
included, so that an algorithm written for vantage6 gets the same answer here. From the
caller's run (task T, organisation O):
- a flag is on when its query value is any non-empty string: `false` and `0` turn it ON;
  absent or empty turns it off;
- more than one `only_*` flag is a 400. Combining one `only_*` flag with `include_*` flags
  is accepted (vantage6's check for that can only fire together with the first one);
- start with [T]; `include_children` / `only_children`: the tasks whose parent is T are
  added, or (only_children) replace the list; then `include_parent` / `only_parent`: T's
  parent is appended, or (only_parent) becomes the whole list; a top-level task has no
  parent and the list stays as it was, so `only_parent` on it gives T's own runs;
- `only_siblings` / `only_self`: the list is [T] again, keeping the runs of T at the other
  organisations (siblings: the same task elsewhere, not other tasks of the same parent),
  or at O itself;
- a non-empty `label` keeps only ports with that label.
vantage6 deletes a run's ports when it ends; here only ports of runs still active are
returned, which is the same set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

ONLY = ("only_children", "only_parent", "only_siblings", "only_self")
INCLUDE = ("include_children", "include_parent")
FLAGS = ONLY + INCLUDE


class AddressQueryError(ValueError):
    """A bad combination of flags (HTTP 400)."""


def flag_is_set(value: str | None) -> bool:
    """vantage6's reading of a flag: `True if args.get(name) else False`."""
    return bool(value)


@dataclass(frozen=True)
class AddressQuery:
    only_children: bool = False
    only_parent: bool = False
    only_siblings: bool = False
    only_self: bool = False
    include_children: bool = False
    include_parent: bool = False
    label: str | None = None

    def validate(self) -> "AddressQuery":
        only = [f for f in ONLY if getattr(self, f)]
        if len(only) > 1:
            raise AddressQueryError(f"use at most one of {', '.join(ONLY)} (got {', '.join(only)}); note that any "
                                    "non-empty value turns a flag on, 'false' and '0' included: leave a flag out "
                                    "to turn it off")
        return self


@dataclass(frozen=True)
class Selection:
    """The runs whose ports are returned: those of `task_ids`, kept by organisation."""

    task_ids: tuple[int, ...]
    organizations: Literal["all", "own", "others"] = "all"


def select_runs(q: AddressQuery, task_id: int, parent_id: int | None,
                children: Callable[[], list[int]]) -> Selection:
    """vantage6's evaluation order, step by step (see the module docstring). `children` is
    asked only when a children flag needs it."""
    q.validate()
    ids = [task_id]
    if q.include_children or q.only_children:
        kids = children()
        ids = list(kids) if q.only_children else ids + list(kids)
    if (q.include_parent or q.only_parent) and parent_id is not None:
        ids = [parent_id] if q.only_parent else ids + [parent_id]
    if q.only_siblings or q.only_self:
        ids = [task_id]
    organizations: Literal["all", "own", "others"] = "others" if q.only_siblings else "own" if q.only_self else "all"
    return Selection(tuple(ids), organizations)
