"""Server widget: the federation's progress, for the admin console and ``flap-sam monitor``.

Keeps, for the current round and for every aggregated round before it, which sites returned a result, their validation Dice of the
global model they received (the number the Learner reports for model selection) and the
bytes received from them (from ``traffic_summary.json``), which sites did not report when
the round was aggregated, and which sites returned an error (with what failed, for a site
that could not start). Admins read it with ``show_stats <job> server`` (group
``flap_sam``); the server log gets one line per round. Only aggregate numbers are kept.

It also bounds a round that waits for a site that is gone. A site that trains reports its progress
every ``progress_every_s`` (30 s); one that has been heard from in this run and has since sent neither a
result nor a report for ``silent_site_timeout`` seconds of a round (its process killed, its machine or link down) is taken as
gone, in one line naming it. If fewer than ``min_clients`` sites remain, the round could never close
(FLARE's workflow waits for ``min_clients`` results, with ``train_timeout`` 0 for ever), so the job
stops (FLARE's ``system_panic``) with that line and the ``resume_from`` that continues it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from nvflare.apis.dxo import MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.widgets.info_collector import InfoCollector

from flap_sam.federated.filters import SITE_ERROR_HEADER, SITE_ERROR_KINDS
from flap_sam.federated.traffic import SUMMARY_FILE
from flap_sam.training.schema import package_defaults

# Each default is the one the schema declares (a job's FLARE config passes every value anyway).
DEFAULT = package_defaults()
STATS_GROUP = "flap_sam"


PROGRESS_AT_END = "federation progress at the end: "  # logged at END_RUN; `flap-sam monitor` reads it back
# A site's progress within a round (flap_sam.training.local_trainer.RoundProgress as a dict), sent by the Learner
# as a FLARE federated event: FLARE relays a client's "fed." event to the server, which fires it there.
ROUND_PROGRESS_EVENT = "fed.flap_sam_round_progress"
ROUND_PROGRESS_KEY = "round_progress"


class FederationProgress(FLComponent):
    """Round, reporting sites, their Dice and bytes, missing sites; served through ``show_stats``."""

    def __init__(
        self,
        train_timeout: float = DEFAULT["train_timeout"],
        min_clients: int = 0,
        silent_site_timeout: float = DEFAULT["silent_site_timeout"],
    ) -> None:
        """``train_timeout`` (s, 0: none) and ``min_clients``: the workflow's, to say which one closed a round
        before a slow site's result arrived; ``silent_site_timeout`` (s, 0: off): when a silent site is gone."""
        super().__init__()
        self.train_timeout = float(train_timeout)
        self.min_clients = int(min_clients)
        self.silent_site_timeout = float(silent_site_timeout)
        self._heard: dict[str, float] = {}  # site -> when the server last heard from it in this round (time.monotonic())
        self._known: set[str] = set()  # sites heard from in this run: only these are watched (start-up can be long)
        self._gone: set[str] = set()
        self._stop_watch = threading.Event()
        self._round_times: dict[int, list[float]] = {}  # round: [started, closed] (time.monotonic(), s)
        self._lock = threading.Lock()
        # "rounds": every aggregated round, in order: {"round", "sites": {site: {"val_dice", "bytes_received"}}, "missing"},
        # so a reader that polls less often than rounds finish still sees each round once.
        self.state: dict[str, Any] = {
            "round": None,
            "num_rounds": None,
            "reported": {},
            "missing_last_round": [],
            "finished_rounds": 0,
            "failed": {},
            "late": {},
            "rounds": [],
            "training": {},  # site -> its latest progress within the current round (until its result arrives)
            "progress_reports": {},  # site -> how many such reports the server received
        }

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN and self.silent_site_timeout > 0:
            threading.Thread(target=self._watch_silent_sites, args=(fl_ctx.get_engine(),), daemon=True).start()
        elif event_type == AppEventType.ROUND_STARTED:
            self._round_times[fl_ctx.get_prop(AppConstants.CURRENT_ROUND)] = [time.monotonic()]
            with self._lock:
                self._heard = {c.name: time.monotonic() for c in fl_ctx.get_engine().get_clients()}
                self.state.update(
                    round=fl_ctx.get_prop(AppConstants.CURRENT_ROUND), num_rounds=fl_ctx.get_prop(AppConstants.NUM_ROUNDS), reported={}
                )
        elif event_type == EventType.BEFORE_PROCESS_SUBMISSION:
            self._record_failure(fl_ctx)
        elif event_type == AppEventType.BEFORE_CONTRIBUTION_ACCEPT:
            self._record_contribution(fl_ctx)
        elif event_type == EventType.BEFORE_PROCESS_RESULT_OF_UNKNOWN_TASK:
            self._record_late_result(fl_ctx)
        elif event_type == AppEventType.BEFORE_AGGREGATION:
            self._close_round(fl_ctx)
        elif event_type == InfoCollector.EVENT_TYPE_GET_STATS:
            collector = fl_ctx.get_prop(InfoCollector.CTX_KEY_STATS_COLLECTOR)
            if collector is not None:
                with self._lock:
                    collector.add_info(STATS_GROUP, json.loads(json.dumps(self.state)))
        elif event_type == ROUND_PROGRESS_EVENT:
            self._record_progress(fl_ctx)
        elif event_type == EventType.END_RUN:
            self._stop_watch.set()
            self.log_info(fl_ctx, PROGRESS_AT_END + json.dumps(self.state))

    def silent_sites(self, now: float) -> dict[str, float]:
        """Sites of the running round that have neither reported a result nor sent progress for more than
        ``silent_site_timeout`` s (since the round started or their last report): {site: seconds silent}. Only
        sites heard from before in this run count: a site's start-up (reading its data) sends no report."""
        with self._lock:
            if self.state["round"] is None or self.state["round"] in {r["round"] for r in self.state["rounds"]}:
                return {}  # no round running (not started, or aggregated and the next not begun)
            waiting = {s: now - heard for s, heard in self._heard.items() if s in self._known and s not in self.state["reported"]}
        return {site: silent for site, silent in waiting.items() if silent > self.silent_site_timeout}

    def _watch_silent_sites(self, engine: Any) -> None:
        """Every few seconds: name each newly silent site once; stop the job when fewer than ``min_clients`` remain."""
        while not self._stop_watch.wait(min(10.0, max(1.0, self.silent_site_timeout / 10))):
            silent = {s: t for s, t in self.silent_sites(time.monotonic()).items() if s not in self._gone}
            if not silent:
                continue
            self._gone |= set(silent)
            with engine.new_context() as fl_ctx:
                remaining = sorted(set(self._heard) - self._gone)
                round_ = self.state["round"]
                for site, seconds in sorted(silent.items()):
                    self.log_warning(
                        fl_ctx,
                        f"site {site}: no result and no progress report for {seconds:.0f} s in round {round_} "
                        f"(silent_site_timeout {self.silent_site_timeout:g} s): its process, machine or link is gone",
                    )
                if len(remaining) < self.min_clients:
                    self.system_panic(
                        f"round {round_}: {', '.join(sorted(self._gone))} gone, {len(remaining)} site(s) remain, fewer than "
                        f"min_clients ({self.min_clients}): the job stops. When the site is back, submit the job again with "
                        f"resume_from={fl_ctx.get_job_id()} (it goes on from round {round_}), or lower min_clients to go on without it",
                        fl_ctx,
                    )
                    return

    def _record_contribution(self, fl_ctx: FLContext) -> None:
        result = fl_ctx.get_prop(AppConstants.TRAINING_RESULT)
        if result is None:
            return
        site = result.get_peer_prop(ReservedKey.IDENTITY_NAME, "?")
        if result.get_cookie(AppConstants.CONTRIBUTION_ROUND) != fl_ctx.get_prop(AppConstants.CURRENT_ROUND):
            return  # a late result of an earlier round: the aggregators discard it, so it is not this round's
        try:
            dice = from_shareable(result).get_meta_prop(MetaKey.INITIAL_METRICS)
        except Exception:  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
            dice = None
        with self._lock:
            round_ = self.state["round"]
            self.state["reported"][site] = {"val_dice": dice, "bytes_received": self._bytes_received(fl_ctx, site, round_)}
            self.state["training"].pop(site, None)
            self._known.add(site)

    def _record_progress(self, fl_ctx: FLContext) -> None:
        """A site's report from within its round: kept for show_stats / flap-sam monitor until its result arrives."""
        event = fl_ctx.get_prop(FLContextKey.EVENT_DATA)
        progress = event.get(ROUND_PROGRESS_KEY) if event is not None else None
        if not isinstance(progress, dict):
            return
        site = event.get_peer_prop(ReservedKey.IDENTITY_NAME, None)
        if site is None:
            peer = fl_ctx.get_peer_context()
            site = peer.get_identity_name() if peer else "?"
        with self._lock:
            self.state["training"][site] = progress
            self.state["progress_reports"][site] = self.state["progress_reports"].get(site, 0) + 1
            self._heard[site] = time.monotonic()
            self._known.add(site)

    def _record_failure(self, fl_ctx: FLContext) -> None:
        """A site's error result: logged for the admin with the site and, if it could not start, what failed."""
        result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
        rc = result.get_return_code(ReturnCode.OK) if result is not None else ReturnCode.OK
        if rc == ReturnCode.OK:
            return
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name() if peer else "?"
        kind = result.get_header(SITE_ERROR_HEADER)
        reason = f"{SITE_ERROR_KINDS[kind]} (details in the site's own log)" if kind in SITE_ERROR_KINDS else rc
        task = fl_ctx.get_prop(FLContextKey.TASK_NAME, "?")
        with self._lock:
            self.state["failed"][site] = reason
        self.log_error(fl_ctx, f"site {site} failed task {task}: {reason}")

    def _record_late_result(self, fl_ctx: FLContext) -> None:
        """A site's train result that arrived after its round had closed: one line naming the site, how late
        it was and the setting that closed the round, the one to raise for a link this slow."""
        result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
        if fl_ctx.get_prop(FLContextKey.TASK_NAME) != AppConstants.TASK_TRAIN or result is None:
            return
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name() if peer else "?"
        round_ = result.get_cookie(AppConstants.CONTRIBUTION_ROUND)
        times = self._round_times.get(round_, [])
        if len(times) < 2:
            return  # not a round this server closed (e.g. before a restart)
        took, closed = time.monotonic() - times[0], times[1] - times[0]
        reason = (
            f"its round {round_} result arrived {took:.0f} s after the round started, {took - closed:.0f} s after "
            f"the round closed without it: its link is too slow for this job's timing; raise {self._closer(closed)} "
            f"so that a round waits at least {1.5 * took:.0f} s for it"
        )
        with self._lock:
            self.state["late"][site] = reason
        self.log_warning(fl_ctx, f"site {site}: {reason}")

    def _closer(self, closed_after: float) -> str:
        """The setting that closed a round ``closed_after`` s after it started, for the line to a user."""
        if self.train_timeout and closed_after >= self.train_timeout - 1:
            return f"train_timeout (now {self.train_timeout:g} s)"
        return f"min_clients (now {self.min_clients}; the round closed once that many sites had reported)"

    def _close_round(self, fl_ctx: FLContext) -> None:
        expected = sorted(c.name for c in fl_ctx.get_engine().get_clients())
        with self._lock:
            reported = sorted(self.state["reported"])
            missing = [s for s in expected if s not in reported]
            self.state["missing_last_round"] = missing
            self.state["finished_rounds"] += 1
            round_ = self.state["round"]
            times = self._round_times.setdefault(round_, [time.monotonic()])
            times.append(time.monotonic())
            sites = {s: dict(self.state["reported"][s]) for s in reported}
            self.state["rounds"].append({"round": round_, "sites": sites, "missing": missing})
        dice = {s: v["val_dice"] for s, v in sites.items()}
        self.log_info(fl_ctx, f"round {round_}: aggregating {len(reported)} site(s) {reported}; validation Dice {dice}")
        if missing:
            self.log_warning(
                fl_ctx,
                f"round {round_}: no result from {', '.join(missing)} after {times[1] - times[0]:.0f} s: each "
                f"dropped out, or is still training or sending (a slow link); the round goes on without them. "
                f"To wait longer for a slow site, raise {self._closer(times[1] - times[0])}",
            )

    @staticmethod
    def _bytes_received(fl_ctx: FLContext, site: str, round_: int | None) -> int | None:
        path = os.path.join(fl_ctx.get_engine().get_workspace().get_app_dir(fl_ctx.get_job_id()), SUMMARY_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)["sites"][site]["train"][str(round_)]["received"]
        except (OSError, KeyError, ValueError):
            return None
