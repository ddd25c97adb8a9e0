"""Which runs' ports an algorithm container may see (GET /vpn/algorithm/addresses).

The rules, following vantage6 4.x's flags:
- no flag: the runs of the caller's own task (every organisation's run of it, its own
  included); `include_children` adds the runs of its child tasks and `include_parent` the
  runs of its parent task;
- `only_children`: runs of tasks whose parent is the caller's task;
- `only_parent`: runs of the caller's parent task (empty for a top-level task);
- `only_siblings`: runs of the other tasks that share the caller's parent;
- `only_self`: the caller's own run only;
- at most one `only_*` flag, and an `only_*` flag cannot be combined with an `include_*`
  flag: both are a 400 with the reason;
- `label` keeps only ports with that label.
Only ports of runs that are still active (pending, initializing, active) are returned.
"""
from __future__ import annotations

from dataclasses import dataclass

FLAGS = ("only_children", "only_parent", "only_siblings", "only_self", "include_children", "include_parent")


class AddressQueryError(ValueError):
    """A bad combination of flags (HTTP 400)."""


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
        only = [f for f in FLAGS[:4] if getattr(self, f)]
        include = [f for f in FLAGS[4:] if getattr(self, f)]
        if len(only) > 1:
            raise AddressQueryError(f"use at most one of only_children, only_parent, only_siblings, only_self (got {', '.join(only)})")
        if only and include:
            raise AddressQueryError(f"{only[0]} cannot be combined with {', '.join(include)}")
        return self


@dataclass(frozen=True)
class TaskFamily:
    """The caller's task and its relatives, as ids."""

    task_id: int
    parent_id: int | None
    child_ids: tuple[int, ...]
    sibling_ids: tuple[int, ...]  # other children of the same parent


def selected_task_ids(q: AddressQuery, fam: TaskFamily) -> set[int] | None:
    """Task ids whose runs are selected; None means "the caller's own run only"."""
    q.validate()
    if q.only_self:
        return None
    if q.only_children:
        return set(fam.child_ids)
    if q.only_parent:
        return {fam.parent_id} if fam.parent_id is not None else set()
    if q.only_siblings:
        return set(fam.sibling_ids)
    ids = {fam.task_id}
    if q.include_children:
        ids |= set(fam.child_ids)
    if q.include_parent and fam.parent_id is not None:
        ids.add(fam.parent_id)
    return ids


def parse_flag(name: str, value: str | None) -> bool:
    if value is None:
        return False
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise AddressQueryError(f"flag {name} must be true or false, got {value[:20]!r}")
