"""The console's HTML: one server-rendered page, no script, charts as inline SVG.

It renders what ``include/migration/status.py`` returns; every value goes through
``html.escape``. Links stay relative to the page (``?entity=...``) or to the Airflow UI's
own paths, opened in the top window (the UI shows this page in a frame).
"""

from __future__ import annotations

import json
from html import escape
from typing import Any
from urllib.parse import urlencode

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:16px;color:#1a202c;font-size:14px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px;border-bottom:1px solid #e2e8f0}
table{border-collapse:collapse;margin:4px 0 8px} th,td{border:1px solid #e2e8f0;padding:3px 8px;text-align:left}
th{background:#f7fafc} td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#276749;font-weight:600} .bad{color:#c53030;font-weight:600} .muted{color:#718096}
.box{border:1px solid #cbd5e0;border-radius:6px;padding:12px;background:#f7fafc;max-width:900px}
pre{white-space:pre-wrap;word-break:break-all;margin:0;font-size:12px;max-width:700px}
.chart{display:inline-block;margin:0 16px 8px 0;vertical-align:top}
"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")


def refused(code: int) -> str:
    return _page("Migration console: sign in", (
        f"<h1>Migration console</h1><div class='box' id='refused'><p><b>{code}</b>: sign in to Airflow first. "
        "The console uses Airflow's login: open the <a href='../' target='_top'>Airflow UI</a>, sign in, "
        "then choose <b>Migration</b> in the navigation.</p></div>"))


def unreachable(message: str) -> str:
    return _page("Migration console: destination unreachable", (
        "<h1>Migration console</h1><div class='box' id='unreachable'><p class='bad'>The migration's state "
        f"cannot be read right now.</p><p>{escape(message)}</p><p class='muted'>Check that the Supabase database "
        "is up and that the Airflow connection <code>supabase_db</code> points at it (the session pooler, port "
        "5432, or the direct connection); this page reads it again on every load.</p></div>"))


def _n(value: Any) -> str:
    if value is None:
        return "<span class='muted'>-</span>"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return escape(str(value))


def _when(value: str | None) -> str:
    return escape(value[:19].replace("T", " ")) + " UTC" if value else "<span class='muted'>-</span>"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _entities(rows: list[dict[str, Any]]) -> str:
    head = ("entity", "last run", "state", "when", "duration", "in scope", "loaded", "excluded", "quarantined",
            "repaired", "reconciliation", "watermark", "lag", "schema gate")
    out = ["<table id='entities'><tr>", *(f"<th>{h}</th>" for h in head), "</tr>"]
    for e in rows:
        run, rows_, rec, wm, gate = e["last_run"], e["rows"], e["reconciliation"], e["watermark"], e["gate"]
        if run:
            link = escape(run["run_id"])
            if run.get("url"):
                link = f"<a href='{escape(run['url'])}' target='_top'>{escape(run['mode'])}</a>"
            else:
                link = escape(run["mode"])
            if run["dry_run"]:
                link += " (dry run)"
            state = escape(run["status"])
            if run.get("airflow_state"):
                state += f" <span class='muted'>(Airflow: {escape(run['airflow_state'])})</span>"
            cls = "ok" if run["status"] in ("succeeded", "loaded") else ("bad" if "fail" in run["status"] else "")
            state = f"<span class='{cls}'>{state}</span>"
            cells = [link, state, _when(run["started_at"]), _duration(run["seconds"])]
        else:
            cells = ["<span class='muted'>never run</span>", "", "", ""]
        if rec:
            verdict = f"<span class='{'ok' if rec['verdict'] == 'clean' else 'bad'}'>{escape(rec['verdict'])}</span>"
            if rec["differing_keys"]:
                verdict += f" ({rec['differing_keys']:,} keys differ)"
        else:
            verdict = "<span class='muted'>-</span>"
        lag = "-" if wm["lag_seconds"] is None else _duration(wm["lag_seconds"])
        gate_cell = (f"<span class='{'ok' if gate['open'] else 'bad'}' title='{escape(gate['why'])}'>"
                     f"{'open' if gate['open'] else 'closed'}</span>")
        cells += [_n(rows_["in_scope"]), _n(rows_["loaded"]), _n(rows_["excluded"]), _n(rows_["quarantined"]),
                  _n(rows_["repaired"]), verdict, _when(wm["change_ts"]), lag, gate_cell]
        out.append(f"<tr data-entity='{escape(e['entity'])}'><td><b>{escape(e['entity'])}</b></td>")
        out += [f"<td class='n'>{c}</td>" if i in (4, 5, 6, 7, 8) else f"<td>{c}</td>"
                for i, c in enumerate(cells)]
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _bars(title: str, values: list[tuple[str, float]], unit: str) -> str:
    """A small bar chart (one bar per run, oldest first) as inline SVG."""
    if not values:
        return ""
    width, height, gap = 22, 60, 4
    top = max(v for _, v in values) or 1.0
    bars = []
    for i, (label, v) in enumerate(values):
        h = max(1.0, height * v / top)
        bars.append(f"<rect x='{i * (width + gap)}' y='{height - h:.1f}' width='{width}' height='{h:.1f}' "
                    f"fill='#4a90d9'><title>{escape(label)}: {v:,.1f} {escape(unit)}</title></rect>")
    w = len(values) * (width + gap)
    return (f"<div class='chart'><div>{escape(title)} <span class='muted'>(last {v:,.0f} {escape(unit)}, "
            f"max {top:,.0f})</span></div><svg width='{w}' height='{height}' role='img' "
            f"aria-label='{escape(title)}'>{''.join(bars)}</svg></div>")


def _quarantine(q: dict[str, Any], samples: dict[str, Any] | None) -> str:
    out = [f"<p>{q['total']:,} rows in quarantine now.</p>"]
    if q["counts"]:
        out.append("<table id='quarantine'><tr><th>entity</th><th>reason</th><th>rows</th><th>first seen</th>"
                   "<th>last seen</th><th></th></tr>")
        for c in q["counts"]:
            link = "?" + urlencode({"entity": c["entity"], "reason": c["reason"]}) + "#samples"
            out.append(f"<tr><td>{escape(c['entity'])}</td><td>{escape(c['reason'])}</td><td class='n'>"
                       f"{c['rows']:,}</td><td>{_when(c['first_seen'])}</td><td>{_when(c['last_seen'])}</td>"
                       f"<td><a href='{escape(link)}'>sample keys</a></td></tr>")
        out.append("</table>")
    charts = [_bars(f"{entity}: quarantined per run",
                    [(f"{p['mode']} {p['started_at'][:16]}", float(p["total"])) for p in points], "rows")
              for entity, points in q["trend"].items()]
    if charts:
        out.append("<div id='quarantine-trend'>" + "".join(charts) + "</div>")
    if samples:
        out.append(f"<h3 id='samples'>{escape(samples['entity'])} / {escape(samples['reason'])}: "
                   f"{samples['total']:,} rows, page of {samples['page_size']}</h3>")
        out.append("<table id='sample-rows'><tr><th>key</th><th>run</th><th>last seen</th><th>row (secrets "
                   "masked)</th></tr>")
        for r in samples["rows"]:
            out.append(f"<tr class='sample'><td><code>{escape(r['source_key'])}</code></td>"
                       f"<td>{escape(r['run_id'])}</td><td>{_when(r['last_seen_at'])}</td><td><pre>"
                       f"{escape(json.dumps(r['source_row'], default=str, sort_keys=True))}</pre></td></tr>")
        out.append("</table>")
        if samples["next_after"] is not None:
            link = "?" + urlencode({"entity": samples["entity"], "reason": samples["reason"],
                                   "after": samples["next_after"], "page_size": samples["page_size"]}) + "#samples"
            out.append(f"<p><a id='next-page' href='{escape(link)}'>next page</a></p>")
    return "".join(out)


def _schema(s: dict[str, Any]) -> str:
    check = s["check"]
    if check is None:
        out = ["<p class='muted'>No schema check recorded yet: trigger <code>schema_diff</code>.</p>"]
    else:
        cls = "ok" if check["verdict"] == "compatible" else "bad"
        out = [f"<p id='schema-verdict'>Check #{check['check_id']} at {_when(check['checked_at'])} "
               f"({check['age_hours']:.1f} h ago): <span class='{cls}'>{escape(check['verdict'].upper())}</span> "
               f"<span class='muted'>{escape(json.dumps(check['counts'] or {}))}</span></p>"]
        for kind in ("breaking", "compatible"):
            diffs = check[kind]
            if diffs:
                out.append(f"<table id='schema-{kind}'><tr><th>{kind}</th><th>entities</th><th>detail</th></tr>")
                for d in diffs:
                    out.append(f"<tr><td><code>{escape(d.get('id', ''))}</code></td><td>"
                               f"{escape(', '.join(d.get('entities') or []))}</td><td>{escape(d.get('detail', ''))}"
                               "</td></tr>")
                out.append("</table>")
    if s["overrides"]:
        out.append("<table id='schema-overrides'><tr><th>accepted</th><th>entity</th><th>difference</th>"
                   "<th>by</th><th>why</th><th>run</th></tr>")
        for o in s["overrides"]:
            out.append(f"<tr><td>{_when(o['accepted_at'])}</td><td>{escape(o['entity'])}</td><td><code>"
                       f"{escape(o['difference_id'])}</code></td><td>{escape(o['accepted_by'])}</td><td>"
                       f"{escape(o['reason'])}</td><td>{escape(o['run_id'])}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p class='muted'>No schema difference has been accepted by an override.</p>")
    return "".join(out)


def _cutover(c: dict[str, Any] | None) -> str:
    if not c:
        return "<p class='muted'>No cutover check yet: trigger <code>cutover_check</code> when the syncs are clean.</p>"
    cls = "ok" if c.get("verdict") == "GO" else "bad"
    out = [f"<p id='cutover-verdict'><span class='{cls}'>{escape(str(c.get('verdict')))}</span> at "
           f"{_when(c.get('checked_at'))}</p><table id='cutover'><tr><th>criterion</th><th>result</th>"
           "<th>value against threshold</th></tr>"]
    for k in c.get("criteria", []):
        out.append(f"<tr><td>{escape(k['name'])}</td><td class='{'ok' if k['ok'] else 'bad'}'>"
                   f"{'PASS' if k['ok'] else 'FAIL'}</td><td>{escape(k['evidence'])}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _throughput(t: dict[str, Any]) -> str:
    charts = [_bars(f"{entity}: rows/s", [(f"{r['mode']} {r['started_at'][:16]}", float(r["rows_per_second"]))
                                          for r in runs if r["rows_per_second"] is not None], "rows/s")
              for entity, runs in t["runs"].items()]
    out = ["<div id='throughput'>" + ("".join(charts) or "<p class='muted'>No finished run yet.</p>") + "</div>"]
    if t["bench_history"]:
        out.append("<table id='bench-history'><tr><th>benchmark</th><th>scale</th><th>messages</th>"
                   "<th>full messages (s)</th><th>peak RSS (MB)</th><th>targets</th></tr>")
        for b in t["bench_history"]:
            targets = b.get("targets") or {}
            passed = sum(1 for v in targets.values() if v == "PASS")
            out.append(f"<tr><td>{escape(str(b.get('timestamp')))}</td><td>{escape(str(b.get('scale')))}</td>"
                       f"<td class='n'>{_n(b.get('messages_rows'))}</td><td class='n'>"
                       f"{_n(b.get('full_messages_seconds'))}</td><td class='n'>{_n(b.get('peak_rss_mb'))}</td>"
                       f"<td>{passed}/{len(targets)} pass</td></tr>")
        out.append("</table>")
    return "".join(out)


def _assessment(a: dict[str, Any] | None) -> str:
    if not a:
        return ("<p class='muted'>No assessment yet: trigger <code>assess_legacy</code> before the first backfill "
                "(it reads the legacy database only).</p>")
    s = a["summary"] or {}
    out = [f"<p id='assessment'>Assessment #{a['assessment_id']} at {_when(a['assessed_at'])}: "
           f"{_n(s.get('source_rows'))} source rows; expected quarantine "
           f"{escape(str(s.get('quarantine_pct')))} % overall; backfill estimate "
           f"{escape(str(s.get('backfill_estimate')))}; schema {escape(str(s.get('schema_verdict')))}.</p>"]
    failing = s.get("entities_over_threshold") or []
    if failing:
        out.append(f"<p class='bad'>Over the quarantine threshold: {escape(', '.join(failing))}</p>")
    if a.get("report_path"):
        out.append(f"<p class='muted'>Report: {escape(a['report_path'])}</p>")
    return "".join(out)


def render(data: dict[str, Any], samples: dict[str, Any] | None = None) -> str:
    parts = ["<h1>Migration console</h1>",
             f"<p class='muted'>Destination {escape(str(data.get('destination')))}; read "
             f"{_when(data.get('generated_at'))}. JSON: <a href='api/overview'>api/overview</a></p>"]
    parts += [f"<p class='bad'>{escape(n)}</p>" for n in data.get("notes") or []]
    if data.get("message"):
        parts.append(f"<div class='box' id='empty'><p><b>{escape(data['message'])}</b></p></div>")
    if "entities" not in data:
        return _page("Migration console", "".join(parts))
    parts += ["<h2>Entities</h2>", _entities(data["entities"]),
              "<h2>Quarantine</h2>", _quarantine(data["quarantine"], samples),
              "<h2>Schema check</h2>", _schema(data["schema"]),
              "<h2>Cutover</h2>", _cutover(data["cutover"]),
              "<h2>Throughput</h2>", _throughput(data["throughput"]),
              "<h2>Assessment</h2>", _assessment(data["assessment"])]
    return _page("Migration console", "".join(parts))
