"""The comparison's report: a Markdown table and an SVG chart from a results file.

A results file (``bench-results/<date>/results.jsonl``) holds one JSON object per line: the
load generator's measurements (clients/loadgen, fields in its README and
/work/prompts/contract.md), labelled with the deployment's key (``a``, ``b``, ``c``), plus the
lines compare.py writes itself: a ``meta`` line (machine, sizes, command) and, where a
measurement could not be taken, a line with the same ``scenario``/``label``/``topology``/
``offered_per_s``/``phase`` and ``errors`` (timeout, load generator exit) or ``skipped`` (why it
does not apply, e.g. no broker for fanout).

Pure Python (standard library only): compare.py calls it after a run, ``--from-results``
without running anything, and clients/tests/test_bench_report.py on a literal results file.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

#: deployment key → what it is (the table's column heads, the chart's legend)
DEPLOYMENTS = {
    "a": "(a) v6-socketio, 2 instances, RabbitMQ",
    "b": "(b) v6-socketio, 1 instance, no broker",
    "c": "(c) vantage6 4.15.2, 2 uWSGI instances, RabbitMQ",
}
#: the deployment the ratios are taken against
BASELINE = "c"
COLOURS = {"a": "#1f77b4", "b": "#2ca02c", "c": "#d62728"}
TOPOLOGY_DASH = {"one": "", "collabs": "6 4"}
TOPOLOGY_TITLE = {"one": "one collaboration", "collabs": "collaborations of 5-20"}


def load(path: Path) -> list[dict]:
    """The results file's objects (blank lines skipped; a line that is not JSON is an error
    naming its number)."""
    lines = []
    for n, text in enumerate(Path(path).read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON: {exc}") from None
    return lines


# ---------------------------------------------------------------------------
# what a measurement is and whether it failed
# ---------------------------------------------------------------------------
def key_of(line: dict) -> tuple:
    """Which measurement a line is: the same key across deployments is one table row group."""
    s = line.get("scenario")
    if s == "fanout":
        return (s, line.get("topology") or "one", line.get("offered_per_s"))
    if s == "relay":  # always on the collaborations of 5-20
        return (s, None, line.get("offered_per_s"))
    if s == "capacity" and line.get("variant") == "connect":
        return ("connect", line.get("phase") or "fresh")
    if s == "capacity":
        return (s, line.get("phase") or "fresh")
    return (s,)


def _pct(part: float, whole: float) -> str:
    share = 100.0 * part / whole
    return f"{_num(share)} %"


def failure(line: dict) -> str | None:
    """Why this measurement did not take its load ("failed: 37 % lost", "failed: timeout …",
    "n/a: …"), or None when it did: errors, any lost or duplicated delivery, failed or missing
    connections all count."""
    if line.get("skipped"):
        return f"n/a: {line['skipped']}"
    errors = line.get("errors") or []
    lost, expected = line.get("lost") or 0, line.get("expected") or 0
    if lost and expected:
        return f"failed: {_pct(lost, expected)} lost"
    if line.get("duplicated"):
        return f"failed: {_num(line['duplicated'])} duplicated"
    conns = line.get("connections")
    if conns and line.get("scenario") == "restart":  # failed: reconnection attempts, expected
        got = line.get("synced")
        if got is not None and got < conns:
            return f"failed: {_num(conns - got)} of {_num(conns)} not synced"
    elif conns:
        failed = line.get("failed") or 0
        got = line.get("synced", line.get("connected"))
        if failed or (got is not None and got < conns):
            missing = max(failed, conns - (got if got is not None else conns))
            return f"failed: {_num(missing)} of {_num(conns)} not synced"
    if errors:
        return f"failed: {_short(str(errors[0]))}"
    return None


def _short(text: str, width: int = 48) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------------------
# number formatting
# ---------------------------------------------------------------------------
def _num(v: float | int) -> str:
    """1,234 for integers and large values, three significant digits below 100."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    digits = max(0, 2 - int(math.floor(math.log10(a))))
    return f"{v:.{digits}f}"


def _rate(v: float) -> str:
    """10000 → "10k", 1500 → "1.5k", 300 → "300"."""
    if v >= 1000 and v % 100 == 0:
        k = v / 1000
        return f"{k:g}k"
    return _num(v)


# ---------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Figure:
    """One row of a measurement group: a title and how to read it from a line."""

    title: str
    get: Callable[[dict], float | None]


def _field(name: str) -> Callable[[dict], float | None]:
    return lambda line: line.get(name)


def _latency(q: str) -> Callable[[dict], float | None]:
    return lambda line: (line.get("latency_ms") or {}).get(q)


THROUGHPUT = [
    Figure("deliveries/s", _field("deliveries_per_s")),
    Figure("p50 ms", _latency("p50")),
    Figure("p99 ms", _latency("p99")),
    Figure("p99.9 ms", _latency("p999")),
    Figure("max ms", _latency("max")),
    Figure("lost", _field("lost")),
    Figure("server CPU % of a core", _field("server_cpu_pct")),
    Figure("server CPU µs/delivery", _field("server_cpu_us_per_delivery")),
    Figure("load generator CPU %", _field("loadgen_cpu_pct")),
]
CAPACITY = [
    Figure("synced", lambda line: line.get("synced", line.get("connected"))),
    Figure("failed", _field("failed")),
    Figure("connections/s", _field("connect_per_s")),
    Figure("connect s", _field("connect_s")),
    Figure("RSS after KiB", _field("rss_after_kib")),
    Figure("KiB per connection", _field("kib_per_connection")),
]
RESTART = [
    Figure("nodes", _field("connections")),
    Figure("synced again", _field("synced")),
    Figure("failed reconnection attempts", _field("failed")),
    Figure("all synced after s", _field("reconnect_s")),
]


def _figures(key: tuple) -> list[Figure]:
    return {"fanout": THROUGHPUT, "relay": THROUGHPUT, "capacity": CAPACITY, "connect": CAPACITY,
            "restart": RESTART}.get(key[0], [])


def _group_title(key: tuple, sample: dict) -> str:
    s = key[0]
    if s in ("fanout", "relay"):
        return f"{_rate(key[2])}/s offered" if key[2] is not None else "offered rate unknown"
    if s in ("capacity", "connect"):
        return {"fresh": "fresh instance", "after_storm": "after the connect storm"}.get(key[1], str(key[1]))
    return ""


SECTIONS = [
    (("fanout", "one"), "fanout: `new_task` to one collaboration (deliveries/s offered)"),
    (("fanout", "collabs"), "fanout: `new_task` to collaborations of 5-20 nodes"),
    (("relay",), "relay: `algorithm_status_change` re-emitted to the collaboration"),
    (("connect",), "connect: nodes in collaborations of 10 connecting at once"),
    (("capacity",), "capacity: idle node connections"),
    (("restart",), "restart: every node reconnecting to restarted servers"),
]


def _section_of(key: tuple) -> int | None:
    for i, (prefix, _) in enumerate(SECTIONS):
        if key[: len(prefix)] == prefix:
            return i
    return None


def _sort_key(key: tuple) -> tuple:
    rest = [(0, v) if isinstance(v, (int, float)) else (1, str(v)) for v in key[1:]]
    if key[0] in ("capacity", "connect"):
        rest = [(0 if key[1] == "fresh" else 1, "")]
    return tuple(rest)


def _sizes_note(lines: list[dict]) -> str:
    nodes = sorted({n for n in (line.get("nodes") or line.get("connections") for line in lines) if n})
    return ", ".join(_num(n) for n in nodes)


def _notes(lines: list[dict], labels: list[str]) -> list[str]:
    """``- (deployment): note`` for every distinct note of a section's lines (compare.py's,
    e.g. capacity connections capped by the servers' open-files limit), in deployment order."""
    seen: dict[str, list[str]] = {}
    for line in lines:
        note = line.get("note")
        if note and note not in seen.setdefault(line.get("label"), []):
            seen[line.get("label")].append(note)
    order = labels + sorted(set(seen) - set(labels), key=str)
    return [f"- {DEPLOYMENTS.get(label, label)}: {note}" for label in order for note in seen.get(label, [])]


def labels_in(lines: Iterable[dict]) -> list[str]:
    """The deployments present, in key order (a, b, c, then any other label)."""
    found = {line.get("label") for line in lines if line.get("scenario") != "meta" and line.get("label")}
    return [k for k in DEPLOYMENTS if k in found] + sorted(found - set(DEPLOYMENTS))


def _cell(line: dict | None, fig: Figure, first: bool) -> str:
    if line is None:
        return "—"
    why = failure(line)
    value = fig.get(line)
    if value is None:
        return (why or "—") if first else "—"
    text = _num(value)
    if first and line.get("loadgen_saturated"):
        text += " †"
    if first and why:
        text += f" ({why})"
    return text


def _ratio(line: dict | None, base: dict | None, fig: Figure) -> str:
    if line is None or base is None or line.get("skipped") or base.get("skipped"):
        return "—"
    v, b = fig.get(line), fig.get(base)
    if v is None or b is None or isinstance(v, bool) or b == 0:
        return "—"
    return f"{_num(v / b)}×"


def markdown(lines: list[dict]) -> str:
    """Every figure per deployment, one table per scenario, with the ratio of each deployment
    to (c); a failed measurement says why in its first row (and has its figures as far as
    they were measured)."""
    meta = next((line for line in lines if line.get("scenario") == "meta"), None)
    data = [line for line in lines if line.get("scenario") != "meta"]
    labels = labels_in(data)
    others = [label for label in labels if label != BASELINE]
    with_ratio = BASELINE in labels
    by_key: dict[tuple, dict[str, dict]] = {}
    for line in data:
        by_key.setdefault(key_of(line), {})[line.get("label")] = line

    out = []
    if meta:
        out.append(_meta_text(meta))
    head = ["figure", *(DEPLOYMENTS.get(label, label) for label in labels)]
    if with_ratio:
        head += [f"({label}) ÷ (c)" for label in others]
    summary = _summary(by_key, labels)
    if summary:
        out.append("### summary\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for title, fig_lines, fig in summary:
            row = [title, *(_cell(fig_lines.get(label), fig, True) for label in labels)]
            if with_ratio:
                row += [_ratio(fig_lines.get(label), fig_lines.get(BASELINE), fig) for label in others]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    saturated = False
    for i, (_, title) in enumerate(SECTIONS):
        keys = sorted((k for k in by_key if _section_of(k) == i), key=_sort_key)
        if not keys:
            continue
        group_lines = [line for k in keys for line in by_key[k].values()]
        sizes = _sizes_note(group_lines)
        out.append(f"### {title}" + (f" — {sizes} nodes" if sizes else "") + "\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for key in keys:
            per = by_key[key]
            group = _group_title(key, next(iter(per.values())))
            for j, fig in enumerate(_figures(key)):
                cells = [_cell(per.get(label), fig, j == 0) for label in labels]
                if all(c == "—" for c in cells):
                    continue
                row = [f"{group}: {fig.title}" if group else fig.title, *cells]
                if with_ratio:
                    row += [_ratio(per.get(label), per.get(BASELINE), fig) for label in others]
                out.append("| " + " | ".join(row) + " |")
            saturated |= any(line.get("loadgen_saturated") for line in per.values())
        out.append("")
        notes = _notes(group_lines, labels)
        if notes:
            out.extend(notes)
            out.append("")
    for line in data:
        if line.get("scenario") in ("deployment", "preflight") and line.get("errors"):
            out.append(f"- {DEPLOYMENTS.get(line.get('label'), line.get('label'))}: "
                       f"{line['scenario']} failed: {_short(str(line['errors'][0]), 300)}")
    if out[-1].startswith("- "):
        out.append("")
    if saturated:
        out.append("† the load generator was saturated (CPU above 90 % of one core): "
                   "that figure is its limit, not the server's.\n")
    return "\n".join(out).rstrip() + "\n"


def _best_rate(by_key: dict[tuple, dict[str, dict]], topology: str) -> dict[str, dict]:
    """Per deployment, its fanout line at the highest offered rate it took without failing."""
    best: dict[str, dict] = {}
    for key, per in by_key.items():
        if key[:2] != ("fanout", topology) or key[2] is None:
            continue
        for label, line in per.items():
            if failure(line) is None and (label not in best or key[2] > best[label]["offered_per_s"]):
                best[label] = line
    return best


def _summary(by_key: dict[tuple, dict[str, dict]], labels: list[str]) -> list[tuple[str, dict, Figure]]:
    """The headline rows: p99 per offered rate (one collaboration), the highest rate taken
    without loss, server CPU per delivery nearest 100k/s, memory per connection, connect and
    restart times."""
    rows: list[tuple[str, dict, Figure]] = []
    p99, cpu = THROUGHPUT[2], THROUGHPUT[7]
    rates = sorted(k[2] for k in by_key if k[:2] == ("fanout", "one") and k[2] is not None)
    for r in rates:
        rows.append((f"fanout p99 ms at {_rate(r)}/s (one collaboration)", by_key[("fanout", "one", r)], p99))
    for topology in ("one", "collabs"):
        best = _best_rate(by_key, topology)
        if best:
            rows.append((f"fanout: highest offered deliveries/s taken without loss ({TOPOLOGY_TITLE[topology]})",
                         best, Figure("offered", _field("offered_per_s"))))
    if rates:
        near = min(rates, key=lambda r: abs(math.log10(r) - 5))
        rows.append((f"fanout server CPU µs/delivery at {_rate(near)}/s", by_key[("fanout", "one", near)], cpu))
    for phase, title in (("fresh", "fresh instance"), ("after_storm", "after the connect storm")):
        if ("capacity", phase) in by_key:
            rows.append((f"capacity: KiB per connection, {title}", by_key[("capacity", phase)], CAPACITY[5]))
    if ("capacity", "fresh") in by_key:
        rows.append(("capacity: connections/s, fresh instance", by_key[("capacity", "fresh")], CAPACITY[2]))
    if ("connect", "fresh") in by_key:
        per = by_key[("connect", "fresh")]
        nodes = _sizes_note(list(per.values()))
        rows.append((f"connect: {nodes} nodes (collaborations of 10) all synced after s", per, CAPACITY[3]))
    if ("restart",) in by_key:
        rows.append(("restart: nodes", by_key[("restart",)], RESTART[0]))
        rows.append(("restart: every node synced again after s", by_key[("restart",)], RESTART[3]))
    return [(t, per, f) for t, per, f in rows if any(f.get(per[label]) is not None or failure(per[label])
                                                     for label in labels if label in per)]


def _meta_text(meta: dict) -> str:
    parts = []
    if meta.get("date"):
        parts.append(f"Run {meta['date']}")
    if meta.get("commit"):
        parts.append(f"commit {meta['commit']}")
    m = meta.get("machine") or {}
    if m:
        parts.append(", ".join(str(v) for v in (m.get("cpu"), m.get("cores") and f"{m['cores']} cores",
                                                 m.get("memory"), m.get("kernel")) if v))
    if meta.get("quick"):
        parts.append("--quick sizes")
    text = "; ".join(parts)
    if meta.get("command"):
        text += f"\n\n    {meta['command']}"
    return text + "\n"


# ---------------------------------------------------------------------------
# the chart
# ---------------------------------------------------------------------------
def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            t = m * 10.0**e
            if lo <= t <= hi:
                ticks.append(t)
    return ticks


def _tick_label(v: float) -> str:
    if v >= 1e6 and (v / 1e6).is_integer():
        return f"{v / 1e6:g}M"
    if v >= 1000 and (v / 1000).is_integer():
        return f"{v / 1000:g}k"
    return f"{v:g}"


@dataclass
class _Panel:
    x: float
    y: float
    w: float
    h: float
    title: str
    xlo: float
    xhi: float
    ylo: float
    yhi: float

    def px(self, v: float) -> float:
        return self.x + self.w * (math.log10(v) - math.log10(self.xlo)) / (math.log10(self.xhi) - math.log10(self.xlo))

    def py(self, v: float) -> float:
        return self.y + self.h - self.h * (math.log10(v) - math.log10(self.ylo)) / (math.log10(self.yhi) - math.log10(self.ylo))


def _span(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if lo == hi:
        lo, hi = lo / 2, hi * 2
    lo = 10 ** (math.floor(math.log10(lo) * 2) / 2)  # out to the next half decade
    hi = 10 ** (math.ceil(math.log10(hi) * 2) / 2)
    return lo, hi


def svg(lines: list[dict]) -> str:
    """Two log-log panels, deliveries/s and p99 latency against the offered rate of the fanout
    sweeps, one line per deployment and topology (solid: one collaboration, dashed:
    collaborations of 5-20); a failed measurement is a cross instead of a dot. No dependency
    beyond the standard library."""
    points: dict[tuple[str, str], list[tuple[float, float | None, float | None, bool]]] = {}
    for line in lines:
        if line.get("scenario") != "fanout" or line.get("skipped") or not line.get("offered_per_s"):
            continue
        p99 = (line.get("latency_ms") or {}).get("p99")
        points.setdefault((line.get("label"), line.get("topology") or "one"), []).append(
            (float(line["offered_per_s"]), line.get("deliveries_per_s"), p99, failure(line) is not None))
    width, height = 1040, 470
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    if not points:
        parts.append('<text x="20" y="40">no fanout measurements in this results file</text></svg>')
        return "\n".join(parts) + "\n"
    for pts in points.values():
        pts.sort()
    xs = [p[0] for pts in points.values() for p in pts]
    ds = [p[1] for pts in points.values() for p in pts if p[1]] + xs
    ls = [p[2] for pts in points.values() for p in pts if p[2]] or [1.0]
    xlo, xhi = _span(xs)
    panels = [
        (_Panel(80, 40, 380, 320, "deliveries/s against offered deliveries/s", xlo, xhi, *_span(ds)), 1),
        (_Panel(580, 40, 380, 320, "p99 latency (ms) against offered deliveries/s", xlo, xhi, *_span(ls)), 2),
    ]
    for panel, idx in panels:
        parts.append(f'<text x="{panel.x}" y="{panel.y - 14}" font-weight="bold">{escape(panel.title)}</text>')
        parts.append(f'<rect x="{panel.x}" y="{panel.y}" width="{panel.w}" height="{panel.h}" '
                     'fill="none" stroke="#444"/>')
        for t in _log_ticks(panel.xlo, panel.xhi):
            x = panel.px(t)
            parts.append(f'<line x1="{x:.1f}" y1="{panel.y}" x2="{x:.1f}" y2="{panel.y + panel.h}" stroke="#eee"/>')
            parts.append(f'<text x="{x:.1f}" y="{panel.y + panel.h + 16}" text-anchor="middle">{_tick_label(t)}</text>')
        for t in _log_ticks(panel.ylo, panel.yhi):
            y = panel.py(t)
            parts.append(f'<line x1="{panel.x}" y1="{y:.1f}" x2="{panel.x + panel.w}" y2="{y:.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{panel.x - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick_label(t)}</text>')
        parts.append(f'<text x="{panel.x + panel.w / 2}" y="{panel.y + panel.h + 34}" '
                     'text-anchor="middle">offered deliveries/s</text>')
        if idx == 1:  # what a server that keeps up delivers
            lo, hi = max(panel.xlo, panel.ylo), min(panel.xhi, panel.yhi)
            if lo < hi:
                parts.append(f'<line x1="{panel.px(lo):.1f}" y1="{panel.py(lo):.1f}" x2="{panel.px(hi):.1f}" '
                             f'y2="{panel.py(hi):.1f}" stroke="#999" stroke-dasharray="2 3"/>')
        for (label, topology), pts in sorted(points.items()):
            colour = COLOURS.get(label, "#555")
            dash = TOPOLOGY_DASH.get(topology, "2 2")
            coords = [(panel.px(p[0]), panel.py(p[idx]), p[3]) for p in pts if p[idx]]
            if len(coords) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in coords)
                parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"'
                             + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
            for x, y, failed in coords:
                if failed:
                    parts.append(f'<path d="M{x - 5:.1f},{y - 5:.1f}L{x + 5:.1f},{y + 5:.1f}M{x - 5:.1f},{y + 5:.1f}'
                                 f'L{x + 5:.1f},{y - 5:.1f}" stroke="{colour}" stroke-width="2"/>')
                else:
                    parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>')
    y, x = 420, 60
    order = sorted(points, key=lambda k: (k[0], list(TOPOLOGY_DASH).index(k[1]) if k[1] in TOPOLOGY_DASH else 9))
    for (label, topology) in order:
        colour = COLOURS.get(label, "#555")
        dash = TOPOLOGY_DASH.get(topology, "2 2")
        name = f"{DEPLOYMENTS.get(label, label)}, {TOPOLOGY_TITLE.get(topology, topology)}"
        parts.append(f'<line x1="{x}" y1="{y - 4}" x2="{x + 28}" y2="{y - 4}" stroke="{colour}" stroke-width="2"'
                     + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        parts.append(f'<text x="{x + 34}" y="{y}">{escape(name)}</text>')
        y += 16
        if y > height - 4:
            y, x = 420, x + 490
    parts.append(f'<text x="{width - 20}" y="{height - 8}" text-anchor="end" fill="#666">'
                 'cross: measurement failed (loss, errors or timeout)</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write(results: Path, out_dir: Path | None = None) -> tuple[str, Path, Path]:
    """Renders ``results``: returns the Markdown and writes it (report.md) and the chart
    (chart.svg) next to the results (or into ``out_dir``)."""
    lines = load(results)
    out_dir = out_dir or Path(results).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(lines)
    md, chart = out_dir / "report.md", out_dir / "chart.svg"
    md.write_text(text + "\n![deliveries/s and p99 against offered rate](chart.svg)\n")
    chart.write_text(svg(lines))
    return text, md, chart
