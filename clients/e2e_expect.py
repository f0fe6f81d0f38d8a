"""Who receives what: the delivery assertions of both end-to-end suites and
the vantage6 room messages they expect (the same in 4.x and 5.x)."""
from __future__ import annotations

import json
import time
from collections import Counter

from e2e_harness import DEFAULT_TIMEOUT

SETTLE = 1.5  # seconds of silence after the last expected event


def canon(events) -> Counter:
    """Events as a multiset (order across rooms and instances is not
    something vantage6 promises)."""
    return Counter(json.dumps([e, d], sort_keys=True) for e, d in events)


def node_status(node) -> dict:
    """node-online / node-offline payload (vantage6: id, name, org_id)."""
    return {"id": node.account.id, "name": node.account.name,
            "org_id": node.account.organization_id}


def joined(node, room: str):
    return ("message", f"Node <{node.account.name}> joined room <{room}>")


def left(node, room: str):
    return ("message", f"{node.account.name} left room {room}")


def _label(client) -> str:
    return getattr(client, "label", client)


class Expect:
    """Exactly who receives what after an action.

    `marks = Expect.mark(clients)` before the action; then
    `Expect.exactly(marks, {client: [events…]})`: every listed client must
    receive exactly these events (as a multiset) and every other marked
    client nothing, within `timeout`, with `SETTLE` seconds of silence to
    catch late extras. A client is a stub node (its `events` log) or
    anything with `mark()` and `since(mark)`; events named in `IGNORED` are
    not compared."""

    IGNORED: tuple[str, ...] = ()

    @staticmethod
    def mark(clients) -> dict:
        return {c: c.events.mark() if hasattr(c, "events") else c.mark() for c in clients}

    @staticmethod
    def _since(client, mark):
        return client.events.since(mark) if hasattr(client, "events") else client.since(mark)

    @classmethod
    def exactly(cls, marks: dict, expected: dict, timeout: float = DEFAULT_TIMEOUT,
                settle: float = SETTLE, ignore=None):
        ignore = cls.IGNORED if ignore is None else ignore
        for c in expected:
            if c not in marks:
                raise AssertionError(f"{_label(c)} was not marked before the action")
        want = {c: canon(expected.get(c, [])) for c in marks}

        def got(c):
            return canon([e for e in cls._since(c, marks[c]) if e[0] not in ignore])

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(not (want[c] - got(c)) for c in marks):
                break
            time.sleep(0.05)
        time.sleep(settle)
        problems = []
        for c in marks:
            g = got(c)
            missing, extra = want[c] - g, g - want[c]
            if missing or extra:
                problems.append(f"{_label(c)}: missing {dict(missing)} extra {dict(extra)}")
        if problems:
            raise AssertionError("wrong deliveries:\n  " + "\n  ".join(problems))
