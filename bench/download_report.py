"""Report of bench/run_download_bench.py: the tables on stdout and docs/performance.md.

The file is rewritten by each full run, but the hand-written analysis between the markers
and every section after it (other benchmarks') are kept as they are.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import textwrap
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from download_harness import TAIL_RANGE, WrkResult, percentile

ANALYSIS_START = "<!-- analysis:start (kept when the benchmark rewrites this file) -->"
ANALYSIS_END = "<!-- analysis:end -->"
HISTORY_START = "<!-- earlier-runs:start (the benchmark adds the run it replaces) -->"
HISTORY_END = "<!-- earlier-runs:end -->"


@dataclass
class Row:
    """One line of the results table."""

    metric: str
    portal: str
    baseline: str
    ratio: str
    target: str
    result: str


def ms(value: float) -> str:
    """A latency in milliseconds with as many decimals as its size deserves."""
    if value != value:  # nan: wrk printed no such figure
        return "?"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def tail_text(r: WrkResult) -> str:
    """p50 / p99 / max and timeouts of one wrk run."""
    return (f"p50 {ms(r.p50_ms)} / p99 {ms(r.p99_ms)} / max {ms(r.max_ms)} ms, "
            f"{r.timeouts} timeouts")


def wrk_cell(r: WrkResult | None) -> str:
    """A results-table cell: the rate and the tail of one wrk run."""
    return "n/a" if r is None else f"{r.rps:,.0f} req/s ({tail_text(r)})"


def ratio_row(metric: str, portal: WrkResult | None, base: WrkResult | None, target: float,
              note: str = "") -> Row:
    """A throughput row: portal/baseline req/s against a ratio target."""
    if portal is None or base is None:
        return Row(metric, wrk_cell(portal), wrk_cell(base), "n/a",
                   f"≥ {target}×", f"not measured{note}")
    ratio = portal.rps / base.rps if base.rps else float("nan")
    verdict = "pass" if ratio >= target else "**FAIL**"
    return Row(metric, wrk_cell(portal), wrk_cell(base), f"{ratio:.2f}×",
               f"≥ {target}×", verdict + note)


def worst(runs: list[WrkResult]) -> dict:
    """The tail over several runs of one target: the worst p99 and max, all timeouts."""
    return {"p50": max(r.p50_ms for r in runs), "p99": max(r.p99_ms for r in runs),
            "max": max(r.max_ms for r in runs), "timeouts": sum(r.timeouts for r in runs),
            "non_2xx": sum(r.non_2xx for r in runs), "n": len(runs)}


def worst_text(runs: list[WrkResult], label: str = "") -> str:
    """A cell with the worst tail over the runs and their rates."""
    if not runs:
        return "n/a"
    w = worst(runs)
    rates = " / ".join(f"{r.rps:,.0f}" for r in runs)
    over = f", worst of {w['n']} runs" if w["n"] > 1 else ""
    return (f"{label}{rates} req/s (p50 {ms(w['p50'])} / p99 {ms(w['p99'])} / max "
            f"{ms(w['max'])} ms, {w['timeouts']} timeouts{over})")


def tail_row(metric: str, runs: list[WrkResult], base: list[WrkResult], base_label: str,
             p99_ms: float, max_ms: float, note: str = "") -> Row:
    """A latency row: every run of the portal must keep p99, max and no timeouts."""
    target = f"p99 ≤ {p99_ms:g} ms, max ≤ {max_ms:g} ms, no timeouts"
    if not runs:
        return Row(metric, "n/a", worst_text(base, base_label), "n/a", target,
                   f"not measured{note}")
    w = worst(runs)
    ok = (w["p99"] <= p99_ms and w["max"] <= max_ms and w["timeouts"] == 0
          and w["non_2xx"] == 0)
    return Row(metric, worst_text(runs), worst_text(base, base_label), "n/a", target,
               ("pass" if ok else "**FAIL**") + note)



def fmt_ms(seconds: float, timeout: float | None = None) -> str:
    """Milliseconds, or the failure marker for a request that did not complete."""
    if seconds == float("inf"):
        return "timeout" if timeout is None else f"> {timeout * 1e3:.0f} ms (timeout)"
    return f"{seconds * 1e3:.1f} ms"



def compare_label(args: argparse.Namespace) -> str:
    """How the comparison worker configuration is named in the report."""
    return "gthread 2×8" if args.compare_worker == "gthread" else "sync ×2"



def machine() -> dict:
    """nproc, CPU model, RAM, kernel and the versions that matter."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    versions = {"Python": platform.python_version()}
    for dist in ("flask", "werkzeug", "gunicorn", "gevent", "sqlalchemy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    for exe, flag in (("nginx", "-v"), ("wrk", "-v"), ("curl", "--version"),
                      ("redis-server", "--version")):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run([exe, flag], capture_output=True, text=True, timeout=5,
                                  check=False)
            text = (done.stdout + done.stderr).strip().splitlines()
            versions[exe] = text[0] if text else "?"
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": mem / 1024**3,
            "kernel": platform.release(), "versions": versions}


def rows(res: dict, args: argparse.Namespace) -> list[Row]:
    """The results table."""
    w = res["wrk"]
    x = res["xaccel"]
    out = [] if args.only_xaccel else [
        ratio_row("a. signed-in 64 KiB download", w["a_portal"], w["a_base"], 0.8),
        ratio_row("a′. public 64 KiB download (no session; info)", w["a_public"], w["a_base"],
                  0.8, " (info)"),
        ratio_row("b. 1 KiB Range of a 4 MiB file", w["b_portal"], w["b_base"], 0.8)]
    out += [
        ratio_row(f"c. x-accel via nginx vs nginx direct, 64 KiB (median of "
                  f"{len(x['rounds'])} paired rounds)", x["portal"], x["base"], 0.5,
                  f" ({x['error']})" if x["error"] else ""),
        ratio_row("c′. the same with a 4 MiB file (info)", x["portal4"], x["base4"], 0.5,
                  " (info)"),
        ratio_row("c″. c with nginx's log read by a niced importer process (info)",
                  x["external"], x["base_external"], 0.5, " (info)"),
        ratio_row("c‴. c through a signed link (/d/<token>, no cookie)",
                  x.get("link"), x.get("base_link"), 0.5),
    ]
    out += tail_rows(res.get("tail"))
    if args.only_xaccel:
        return out
    sp, so = res["slow_portal"], res["slow_other"]
    timeout = args.probe_timeout

    def lat(r: dict) -> str:
        return (f"p50 {fmt_ms(r['p50'], timeout)} / p95 {fmt_ms(r['p95'], timeout)} / "
                f"p99 {fmt_ms(r['p99'], timeout)} ({r['failed']}/{r['probes']} failed)")

    out.append(Row(f"d. GET /login latency under {args.slow_clients} downloads at "
                   f"{args.slow_rate // 1000} KB/s (baseline: {compare_label(args)} portal)",
                   lat(sp), lat(so), "n/a", "p99 < 100 ms",
                   "pass" if sp["p99"] < 0.1 else "**FAIL**"))
    rp, rb = res["rss_portal"], res["rss_base"]
    ok = rp["complete"] and rp["growth_mib"] < 50
    out.append(Row(f"e. worker RSS growth, one {args.big_gib:g} GiB download",
                   f"{rp['growth_mib']:.1f} MiB", f"{rb['growth_mib']:.1f} MiB", "n/a",
                   "< 50 MB", ("pass" if ok else "**FAIL**")
                   + ("" if rp["complete"] else " (download incomplete)")))
    return out


def tail_rows(t: dict | None) -> list[Row]:
    """f, g, h: issue 19's tail-latency and copyparty targets, measured at ``t['connections']``."""
    if not t:
        return []
    c = t["connections"]
    note = f" ({t['error']})" if t["error"] else ""
    cp2 = "copyparty -j2: " if t["copyparty"] else ""
    rounds = t["rounds"]
    out = [
        tail_row(f"f. signed-in 64 KiB download at c{c}, tail (every round)",
                 t["64k"].get("portal signed-in", []), t["64k"].get("copyparty -j2", []), cp2,
                 25, 100, note),
        tail_row(f"g. signed-in 1 KiB Range of a 1 GiB file at c{c}, tail",
                 t["range"].get("portal signed-in", []), t["range"].get("copyparty -j2", []),
                 cp2, 25, 100, note),
    ]
    if rounds:
        base, portal = sorted(rounds, key=lambda pair: pair[1].rps / pair[0].rps)[
            len(rounds) // 2]
        out.append(ratio_row(f"h. signed-in 64 KiB at c{c} vs copyparty -j2 (median of "
                             f"{len(rounds)} paired rounds)", portal, base, 1.2, note))
    else:
        out.append(ratio_row(f"h. signed-in 64 KiB at c{c} vs copyparty -j2", None, None, 1.2,
                             note or " (copyparty not available)"))
    return out


def side_by_side(t: dict | None) -> str:
    """Every server of the tail phase, one row per wrk run, grouped by workload."""
    if not t:
        return "(not measured)"
    lines = ["| workload | server | req/s | p50 | p99 | max | timeouts | non-2xx |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for workload, name in (("64k", "64 KiB file"), ("range", "1 KiB Range of 1 GiB")):
        for server, runs in t[workload].items():
            for i, r in enumerate(runs, 1):
                label = f"{server} (round {i})" if len(runs) > 1 else server
                lines.append(f"| {name} | {label} | {r.rps:,.0f} | {ms(r.p50_ms)} ms | "
                             f"{ms(r.p99_ms)} ms | {ms(r.max_ms)} ms | {r.timeouts} | "
                             f"{r.non_2xx} |")
    return "\n".join(lines)


def round_ratios(rounds) -> str:
    """``0.60×, 0.59×, ...``: each paired round's portal / baseline rate."""
    return ", ".join(f"{p.rps / b.rps:.2f}×" for b, p in rounds)


def tail_details(t: dict | None) -> list[str]:
    """What the tail phase saw besides its wrk runs."""
    if not t:
        return []
    lines = []
    if t["rounds"]:
        lines.append("- h, each round's portal / copyparty -j2 ratio: " + round_ratios(
            t["rounds"]) + " (copyparty measured just before each portal run; whatever "
            "server is not measured is frozen by SIGSTOP).")
    lines.append(f"- copyparty: {t['copyparty'] or 'not run'}"
                 + (f"; problem: {t['error']}" if t["error"] else "") + ".")
    return lines


def table(rs: list[Row]) -> str:
    """Markdown table of the rows."""
    lines = ["| metric | portal | baseline | ratio | target | result |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.metric} | {r.portal} | {r.baseline} | {r.ratio} | {r.target} | {r.result} |"
              for r in rs]
    return "\n".join(lines)


def details(res: dict, args: argparse.Namespace) -> str:
    """Per-run numbers behind the table."""
    lines = ["| wrk run | conns | req/s | p50 | p99 | max | timeouts | bytes/response | non-2xx "
             "| other socket errors |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    x = res["xaccel"]
    t = res.get("tail") or {}
    runs = list(res["wrk"].values()) + [
        r for key in ("64k", "range") for rs in t.get(key, {}).values() for r in rs] + [
        r for pair in x["rounds"] for r in pair] + [
        r for r in (x["base4"], x["portal4"], x["base_external"], x["external"],
                    x.get("base_link"), x.get("link")) if r]
    for r in runs:
        lines.append(f"| {r.target} | {r.connections} | {r.rps:,.0f} | {ms(r.p50_ms)} ms | "
                     f"{ms(r.p99_ms)} ms | {ms(r.max_ms)} ms | {r.timeouts} | "
                     f"{r.bytes_per_request:,.0f} | {r.non_2xx} | {r.other_errors or '-'} |")
    if args.only_xaccel:
        lines.append("")
        return "\n".join(lines + xaccel_details(res["xaccel"]))
    idle = res["idle"]
    lines += ["", f"- GET /login with no other load (50 sequential requests): p50 "
              f"{fmt_ms(percentile(idle, 50))}, p99 {fmt_ms(percentile(idle, 99))}."]
    for key in ("slow_portal", "slow_other"):
        s = res[key]
        c = s["clients"]
        lines.append(f"- Slow clients against {s['label']}: {json.dumps(c)}; /login probes: "
                     f"{s['probes']} sent, {s['failed']} failed or over the "
                     f"{args.probe_timeout:g} s timeout.")
    for key, name in (("rss_portal", "portal"), ("rss_base", "bare send_file")):
        r = res[key]
        lines.append(
            f"- {args.big_gib:g} GiB sparse download from the {name}: HTTP {r['status']}, "
            f"{r['bytes']:,} bytes ({'complete' if r['complete'] else 'INCOMPLETE'}) in "
            f"{r['seconds']:.1f} s ({r['gbit']:.1f} Gbit/s); RSS of {r['workers']} workers "
            f"{r['rss_before_mib']:.0f} MiB before, peak growth {r['growth_mib']:.1f} MiB in "
            f"one worker, {r['total_growth_mib']:.1f} MiB summed; CPU of the serving worker: "
            f"user {r['user_cpu']:.2f} s, system {r['sys_cpu']:.2f} s"
            + (f"; curl: {r['curl_error']}" if r["curl_error"] else "") + ".")
    return "\n".join(lines + tail_details(res.get("tail")) + xaccel_details(res["xaccel"]))


def xaccel_details(x: dict) -> list[str]:
    """What the x-accel phase saw besides its wrk runs."""
    lines = []
    if x["rounds"]:
        lines.append("- c, each round's portal / nginx-direct ratio: " + round_ratios(
            x["rounds"]) + " (nginx direct measured just before each portal run, with the "
            "portal frozen by SIGSTOP meanwhile).")
    lines.append(f"- x-accel: nginx configuration: {x['config']}; signed-in Range through "
                 f"nginx: {x.get('range_check', 'not checked')}"
                 + (f"; problem: {x['error']}" if x["error"] else "") + ".")
    for key, who in (("drain", "the web workers (c, c′)"),
                     ("drain_external", "a niced importer (c″)")):
        if x.get(key):
            d = x[key]
            lines.append(f"- x-accel, nginx's log read by {who}: {d['stored']:,} of the "
                         f"{d['logged']:,} downloads nginx had logged were recorded in the "
                         f"database {d['seconds']:.1f} s after the load stopped.")
    return lines


def render(res: dict, args: argparse.Namespace, command: str, started: datetime,
           seconds: float, old_analysis: str, history: str = "") -> str:
    """docs/performance.md (without the other benchmarks' sections, which follow it)."""
    m = machine()
    t = res.get("tail") or {}
    if t.get("copyparty"):
        m["versions"]["copyparty"] = t["copyparty"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    ended = started + timedelta(seconds=seconds)
    return f"""# Download performance

Produced by `bench/run_download_bench.py`; every number below comes from one run of it on
the machine described here, each target measured against a baseline started in the same run.
Re-run it to refresh this file (the analysis between its markers and every section after it
are kept, and the results table it replaces moves to "Earlier runs").

- Date: {started:%Y-%m-%d %H:%M} UTC to {ended:%H:%M} UTC (run took {seconds:.0f} s)
- Machine: {m['nproc']} CPUs, {m['cpu']}, {m['ram_gib']:.1f} GiB RAM, Linux {m['kernel']}
- Versions: {versions}
- Database: {res['database']}; Redis: {'given' if args.redis_url else 'private redis-server'}
- Load average (1/5/15 min) before the run: {load(res['load_before'])}, after:
  {load(res['load_after'])}{busy_note(res)}
- Command: `{command}`
- Load: wrk -t {args.threads} -c {args.connections} -d {args.duration}s --latency (after a
  {args.warmup} s warm-up) for every throughput target; load generator, servers and nginx
  share the same {m['nproc']} CPUs. Portal and baseline: `gunicorn -c gunicorn.conf.py`
  (gevent, {m['nproc']} workers, portal.sendfile installed in both).
- Tail rows f, g, h (issue 19): wrk -t {args.threads} -c {args.tail_connections} -d
  {args.duration}s --latency against every server side by side (next section); every cell
  gives req/s, p50 / p99 / max latency and wrk's timeouts (requests unanswered after 2 s).

## Results

{table(rows(res, args))}

## Side by side at c{args.tail_connections}

{side_by_side_intro(t, args)}

{side_by_side(t or None)}

## Details

{details(res, args)}

## Analysis

{ANALYSIS_START}
{old_analysis.strip() or "(not written yet)"}
{ANALYSIS_END}

## Earlier runs

The results tables of the runs this file showed before, newest first (written by the
benchmark when it replaces them; the analysis above discusses them).

{HISTORY_START}
{history.strip() or "(none yet)"}
{HISTORY_END}
"""


def side_by_side_intro(t: dict, args: argparse.Namespace) -> str:
    """What the side-by-side table compares, and how."""
    cp = (f"copyparty {t['copyparty']} (`python -m copyparty -j 1` and `-j 2`, its own venv "
          "bench/.venv-copyparty, a read-only volume with no accounts, plain HTTP, its "
          "per-request log written to a file as the portal's gunicorn writes its access log)"
          if t.get("copyparty") else "copyparty (not run)")
    return textwrap.fill(
        f"The same files from every server: the portal's stored 64 KiB object and 1 KiB "
        f"(`{TAIL_RANGE}`) of a 1 GiB sparse object. nginx serves them directly (2 "
        f"workers, sendfile, no access log); {cp}; the portal under gunicorn.conf.py "
        f"(signed in: a session cookie; public: none). wrk -t {args.threads} -c "
        f"{args.tail_connections} -d {args.duration}s --latency after a {args.warmup} s "
        "warm-up; while one server is measured the others' processes are frozen "
        "(SIGSTOP). The 64 KiB pair copyparty -j2 / portal signed-in is measured "
        f"{len(t.get('rounds', []))} times in a row.", width=92)


def load(avg: tuple) -> str:
    """A load-average triple."""
    return " / ".join(f"{x:.2f}" for x in avg)


def busy_note(res: dict) -> str:
    """A warning when something else was using the CPUs during the run."""
    if max(res["load_before"][0], res["load_after"][0]) < 1.0:
        return ""
    return (" — other processes were using the CPUs during this run, so absolute numbers "
            "are low and noisy; the ratios compare targets measured minutes apart under "
            "that varying load")


def previous_run(text: str) -> str:
    """The results table of the file's current run, headed by its date and command, for the
    "Earlier runs" section; '' when there is none."""
    date = re.search(r"^- Date: (.*)$", text, re.M)
    command = re.search(r"^- Command: (.*)$", text, re.M)
    start, end = text.find("## Results\n"), text.find("\n## ", text.find("## Results\n") + 1)
    if not date or start < 0 or end < 0:
        return ""
    results = text[start + len("## Results\n"):end].strip()
    return (f"### Run of {date.group(1)}\n\n- Command: "
            f"{command.group(1) if command else '(not recorded)'}\n\n{results}\n")


def earlier_runs(text: str) -> str:
    """What the "Earlier runs" section of the file holds already."""
    start, end = text.find(HISTORY_START), text.find(HISTORY_END)
    if start < 0 or end < start:
        return ""
    kept = text[start + len(HISTORY_START):end].strip()
    return "" if kept == "(none yet)" else kept


def history_after(text: str) -> str:
    """The "Earlier runs" section once the file's current run is added to it."""
    return "\n".join(part for part in (previous_run(text), earlier_runs(text)) if part)


def old_analysis(path: Path) -> str:
    """The hand-written analysis of the current file, if any."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    start, end = text.find(ANALYSIS_START), text.find(ANALYSIS_END)
    if start < 0 or end < start:
        return ""
    return text[start + len(ANALYSIS_START):end]


def other_sections(path: Path) -> str:
    """Whatever follows the analysis (other benchmarks' sections), kept as it is; the
    "Earlier runs" section, which this benchmark writes, is left out."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    end = text.find(ANALYSIS_END)
    if end < 0:
        return ""
    rest = text[end + len(ANALYSIS_END):]
    start, stop = rest.find(HISTORY_START), rest.find(HISTORY_END)
    if 0 <= start < stop:
        heading = rest.rfind("## Earlier runs", 0, start)
        rest = rest[:heading if heading >= 0 else start] + rest[stop + len(HISTORY_END):]
    return rest.strip()

