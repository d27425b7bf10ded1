"""``flap-sam monitor``: submit and/or follow a job with an admin startup kit (FLARE API).

Works the same against a POC federation and a provisioned deployment: it only uses the
admin's startup kit and FLARE's admin API (``submit_job``, ``get_job_meta``, ``show_stats``,
``show_errors``, ``download_job_result``). Prints one line for every aggregated round, once,
however fast rounds finish: the sites aggregated, their validation Dice, bytes received from
each, and sites missing; site errors as they appear. At the end it downloads the
job result and prints the cross-site Dice and the traffic totals. It waits through a server
outage; for a job the restarted server abandoned it prints the ``resume_from`` to use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
from typing import Any

from flap_sam.files import CROSS_SITE_FILE, TRAFFIC_FILE

CROSS_SITE_NAME = os.path.basename(CROSS_SITE_FILE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--startup-kit", required=True, help="the admin's startup kit folder (contains startup/fed_admin.json)")
    parser.add_argument("--username", required=True, help="the admin's name in the kit, e.g. admin@flap-sam.example.org")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--submit", metavar="JOB_FOLDER", help="submit this job folder, then follow it")
    group.add_argument("--job", metavar="JOB_ID", help="follow a job already submitted")
    parser.add_argument("--download", default="results", help="folder for the finished job's result (default: ./results)")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between status checks")
    parser.add_argument("--timeout", type=float, default=0, help="stop following after this many seconds (0: until it ends)")


def server_progress(session, job_id: str) -> dict | None:
    """The server's ``flap_sam`` stats group of a running job (None while its server process is not up)."""
    from flap_sam.federated.progress import STATS_GROUP

    try:
        stats = session.show_stats(job_id, "server")
    except Exception:  # the job's server process is not up yet, or already gone  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
        return None
    return (stats.get("server") or {}).get(STATS_GROUP) if isinstance(stats, dict) else None


def _site_cell(site: str, figures: dict) -> str:
    cell = site
    if figures.get("val_dice") is not None:
        cell += f" Dice {figures['val_dice']:.3f}"
    if figures.get("bytes_received"):
        cell += f" {figures['bytes_received']:,} B"
    return cell


def progress_lines(progress: dict | None, shown_rounds: set, shown_failures: set) -> list[str]:
    """New lines from the server's progress: one per aggregated round not shown yet (however many finished
    since the last poll), with its sites' Dice and bytes and the sites missing, then each site's new report
    from within its round (steps, loss, time left), then new site failures.

    ``shown_rounds`` / ``shown_failures`` are updated with what the lines report.
    """
    if not progress:
        return []
    from flap_sam.training.local_trainer import RoundProgress

    lines = []
    for record in progress.get("rounds", []):
        if record["round"] in shown_rounds:
            continue
        shown_rounds.add(record["round"])
        sites = ", ".join(_site_cell(site, figures) for site, figures in sorted(record["sites"].items()))
        line = f"round {record['round']}/{progress.get('num_rounds')}: aggregated {len(record['sites'])} site(s)"
        line += f" [{sites}]" if sites else ""
        if record.get("missing"):
            line += f"; missing: {', '.join(record['missing'])}"
        lines.append(line)
    for site, figures in sorted(progress.get("training", {}).items()):
        key = (site, figures.get("round"), figures.get("steps_done"))
        if key not in shown_failures:
            shown_failures.add(key)
            lines.append(f"{site} training: {RoundProgress(**figures).describe()}")
    for site, reason in sorted(progress.get("failed", {}).items()):
        if (site, reason) not in shown_failures:
            shown_failures.add((site, reason))
            lines.append(f"{site} failed: {reason}")
    for site, reason in sorted(progress.get("late", {}).items()):
        if (site, reason) not in shown_failures:
            shown_failures.add((site, reason))
            lines.append(f"{site} late: {reason}")
    return lines


def final_progress(folder: str) -> dict | None:
    """The server's progress as it logged it at the end of the run, from a downloaded job result
    (the last poll can come after the job's server process ended, so it misses the last rounds)."""
    from flap_sam.federated.progress import PROGRESS_AT_END

    for line in _log_lines(folder):
        if PROGRESS_AT_END in line:
            return json.loads(line.split(PROGRESS_AT_END, 1)[1])
    return None


def _log_lines(folder: str):
    """Every line of every ``log.txt`` under ``folder`` (a downloaded job result: the server's and the sites')."""
    for root, _, files in os.walk(folder):
        if "log.txt" in files:
            with open(os.path.join(root, "log.txt"), encoding="utf-8", errors="replace") as f:
                yield from f


def summarize_result(folder: str) -> list[str]:
    """Site failures, cross-site Dice and traffic totals from a downloaded job result."""
    lines = ["site error: " + line.split("] - ", 1)[-1].strip() for line in _log_lines(folder) if "FederationProgress - ERROR" in line]
    for root, _, files in os.walk(folder):
        if CROSS_SITE_NAME in files:
            with open(os.path.join(root, CROSS_SITE_NAME), encoding="utf-8") as f:
                for site, models in sorted(json.load(f).items()):
                    scores = ", ".join(f"{m}: Dice {v.get('dice', float('nan')):.3f}" for m, v in sorted(models.items()))
                    lines.append(f"cross-site {site}: {scores}")
        if TRAFFIC_FILE in files:
            with open(os.path.join(root, TRAFFIC_FILE), encoding="utf-8") as f:
                totals = json.load(f)["totals"]
            lines.append("traffic: " + ", ".join(f"{k} {v:,}" for k, v in sorted(totals.items())))
    return lines


def _site_errors(session, job_id: str) -> list[str]:
    """``site: report`` for every site that reported an error for the job."""
    try:
        errors = session.show_errors(job_id, "client") or {}
    except Exception:  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
        return []
    return [f"{site}: {report}" for site, report in (errors.items() if isinstance(errors, dict) else []) if report]


class ServerSilent(Exception):
    """The server stopped answering a session's polls (e.g. it restarted and the session's replies go nowhere)."""


def _monitor_job(session, job_id: str, timeout: float, poll: float, cb, state: dict, silent_after: float):
    """``session.monitor_job`` in a thread, given up with ``ServerSilent`` once no poll has been answered for
    ``silent_after`` s (``state["answered"]``: when ``cb`` last ran). The thread is a daemon: a call that never
    returns ends with the process."""
    result: dict = {}

    def target() -> None:
        try:
            result["outcome"] = session.monitor_job(job_id, timeout=timeout, poll_interval=poll, cb=cb)
        except BaseException as error:  # noqa: BLE001 (handed to the caller's thread as it is)
            result["error"] = error

    worker = threading.Thread(target=target, daemon=True)
    state["answered"] = time.monotonic()
    worker.start()
    while worker.is_alive():
        worker.join(min(poll, 5.0))
        if worker.is_alive() and time.monotonic() - state["answered"] > silent_after:
            raise ServerSilent(f"no answer for {silent_after:.0f} s")
    if "error" in result:
        raise result["error"]
    return result["outcome"]


def follow(
    session, job_id: str, download: str, poll: float, timeout: float, say=print, reconnect=None, silent_after: float | None = None
) -> str:
    """Print progress until the job ends; download its result; returns the final status.

    FLARE's ``Session.monitor_job`` polls the job and decides when it has ended; each poll prints
    the rounds and site errors not shown yet. While the server is unreachable (e.g. restarting)
    it waits and says so once, then monitors again. A session whose polls go unanswered (a server
    that restarted under it) is replaced by a new one from ``reconnect`` (a function returning a
    session). A job the server abandoned when it restarted has no result to download; it says how
    to resume it.
    """
    from nvflare.apis.job_def import RunStatus
    from nvflare.fuel.flare_api.api_spec import MonitorReturnCode, NoConnection

    started, seen_errors = time.monotonic(), set()
    shown_rounds: set[int] = set()
    shown_failures: set[str] = set()
    state: dict[str, Any] = {"status": "?", "server_down": False, "answered": time.monotonic()}
    silent_after = silent_after or max(60.0, 10 * poll)  # a poll unanswered this long: the session is dead

    def on_poll(session, job_id: str, job_meta: dict) -> bool:
        state["answered"] = time.monotonic()
        state["status"] = str(job_meta.get("status", "?"))
        if state["server_down"]:
            say(f"server reachable again; job {job_id} is {state['status']}")
            state["server_down"] = False
        for line in progress_lines(server_progress(session, job_id), shown_rounds, shown_failures):
            say(line)
        for text in _site_errors(session, job_id):
            if text not in seen_errors:
                seen_errors.add(text)
                say(f"site error: {text}")
        return True

    while True:
        remaining = timeout - (time.monotonic() - started) if timeout else 0
        if timeout and remaining <= 0:
            outcome = MonitorReturnCode.TIMEOUT
            break
        try:
            outcome = _monitor_job(session, job_id, remaining, poll, on_poll, state, silent_after)
            break
        except NoConnection as error:
            if not state["server_down"]:
                say(f"server not reachable ({error}); waiting for it to come back")
            state["server_down"] = True
            time.sleep(poll)
        except ServerSilent as error:
            if reconnect is None:
                raise
            say(f"the server stopped answering ({error}; restarted?): connecting again")
            state["server_down"] = True
            try:
                session = reconnect()
            except NoConnection:
                time.sleep(poll)
    status = str(state["status"])
    if outcome == MonitorReturnCode.TIMEOUT:
        where = "the server is not reachable" if state["server_down"] else f"job {job_id} is {status}"
        say(f"stopped following after {timeout:.0f} s; {where}")
        return status
    say(f"job {job_id}: {status}")
    if status == RunStatus.ABANDONED.value:  # what InterruptedJobs marks a job that a server restart cut off
        say(
            f"the server stopped while job {job_id} ran; to go on from its last finished round, submit the same job "
            f"with resume_from={job_id} (flap-sam job JOB --out DIR --set resume_from={job_id})"
        )
        return status
    os.makedirs(download, exist_ok=True)
    target = session.download_job_result(job_id, os.path.abspath(download))
    say(f"result downloaded to {target}")
    for line in progress_lines(final_progress(target), shown_rounds, shown_failures):
        say(line)
    for line in summarize_result(target):
        say(line)
    return status


def run(args: argparse.Namespace) -> int:
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    session = new_secure_session(args.username, args.startup_kit)
    sessions = [session]

    def reconnect():
        sessions.append(new_secure_session(args.username, args.startup_kit))
        return sessions[-1]

    try:
        job_id = args.job or session.submit_job(os.path.abspath(args.submit))
        print(f"following job {job_id}", flush=True)
        status = follow(session, job_id, args.download, args.poll, args.timeout, say=lambda s: print(s, flush=True), reconnect=reconnect)
    finally:
        for opened in sessions:
            with contextlib.suppress(Exception):  # a session to a server that restarted may not close cleanly
                opened.close()
    return 0 if status == "FINISHED:COMPLETED" else 1
