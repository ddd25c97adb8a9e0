"""The parts of a new task's body that come in two shapes: ours (organizations: [id] and
one top-level input) and vantage6's (organizations: [{"id", "input": base64 of the JSON}],
databases: [{"label", ...}]). Pure: a bad body raises InputError (HTTP 400) naming what is
wrong."""
from __future__ import annotations

import base64
import binascii
from typing import Any

from .inputs import InputError, check_id, parse_json

MAX_DATABASES = 100
V6_INPUT_HINT = ("vantage6's per-organisation input is the base64 of the input's UTF-8 JSON bytes; encrypted input "
                 "is not supported (this server keeps no organisation keys: its collaborations are unencrypted)")


def v6_input(org_id: int, raw: Any) -> Any:
    """One organisation's input in vantage6's body, decoded to JSON."""
    if not isinstance(raw, str):
        raise InputError(f"organisation {org_id}: 'input' must be a string; {V6_INPUT_HINT}")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"organisation {org_id}: 'input' is not base64; {V6_INPUT_HINT}") from None
    try:
        return parse_json(data, what=f"input of organisation {org_id}")
    except InputError as exc:
        raise InputError(f"organisation {org_id}: {exc}; {V6_INPUT_HINT}") from None


def task_organizations(data: dict) -> tuple[list[int], dict[int, Any] | None]:
    """The organisations of a new task, and their own inputs when the body is vantage6's
    ([{"id", "input"}]) rather than ours ([id] with one top-level input)."""
    orgs = data["organizations"]
    ids = [isinstance(o, int) and not isinstance(o, bool) for o in orgs]
    objects = [isinstance(o, dict) for o in orgs]
    if not orgs or len(orgs) > 1000 or not all(i or o for i, o in zip(ids, objects)):
        raise InputError("organizations must be a non-empty list (at most 1000) of organisation ids, or of "
                         "vantage6's {\"id\", \"input\"} objects")
    if all(ids):
        for org_id in orgs:
            check_id("field 'organizations'", org_id)
        return list(dict.fromkeys(orgs)), None
    if not all(objects):
        raise InputError("organizations mixes shapes: give a list of organisation ids (with a top-level 'input') "
                         "or a list of vantage6's {\"id\", \"input\"} objects, not both")
    if data.get("input") is not None:
        raise InputError("mixed shapes: with vantage6's organizations [{\"id\", \"input\"}] each organisation "
                         "carries its own input; leave out the top-level 'input'")
    inputs: dict[int, Any] = {}
    for o in orgs:
        unknown = sorted(set(o) - {"id", "input"})
        if unknown:
            raise InputError(f"organizations: unknown key(s) {', '.join(map(repr, unknown))}; each is "
                             "{\"id\": int, \"input\": str}")
        org_id = o.get("id")
        if not isinstance(org_id, int) or isinstance(org_id, bool):
            raise InputError("organizations: each object needs an integer 'id'")
        check_id("field 'organizations[].id'", org_id)
        if org_id in inputs:
            raise InputError(f"organisation {org_id} appears twice in organizations")
        inputs[org_id] = v6_input(org_id, o.get("input"))
    return list(inputs), inputs


def task_databases(raw: list | None) -> list[dict]:
    """vantage6's databases: [{"label": str, ...}]; only the label is kept."""
    if raw is None:
        return []
    if len(raw) > MAX_DATABASES:
        raise InputError(f"databases: at most {MAX_DATABASES} entries")
    out = []
    for db in raw:
        label = db.get("label") if isinstance(db, dict) else None
        if not isinstance(label, str) or not 0 < len(label) <= 128:
            raise InputError("databases must be a list of {\"label\": str} objects (label 1-128 characters)")
        out.append({"label": label})
    return out
