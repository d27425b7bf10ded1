"""What the admin console shows: every finished round once, the cross-site Dice, explicit aggregation weights."""

from __future__ import annotations

import json

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants

from flap_sam.cli.monitor import final_progress, progress_lines
from flap_sam.federated.cross_site import CrossSiteDiceFormatter
from flap_sam.federated.progress import PROGRESS_AT_END


def _round(r: int, missing=()) -> dict:
    return {
        "round": r,
        "sites": {"site-1": {"val_dice": 0.5 + r / 100, "bytes_received": 1000}, "site-2": {"val_dice": 0.4}},
        "missing": list(missing),
    }


def test_rounds_that_finish_between_two_polls_are_each_reported_once():
    shown_rounds, shown_failures = set(), set()
    progress = {"round": 8, "num_rounds": 10, "rounds": [_round(r) for r in range(8)], "failed": {}}
    lines = progress_lines(progress, shown_rounds, shown_failures)
    assert [line.split(":")[0] for line in lines] == [f"round {r}/10" for r in range(8)]
    assert lines[1] == "round 1/10: aggregated 2 site(s) [site-1 Dice 0.510 1,000 B, site-2 Dice 0.400]"
    assert progress_lines(progress, shown_rounds, shown_failures) == []  # nothing new, nothing printed
    progress["rounds"].append(_round(8, missing=["site-3"]))
    progress["failed"] = {"site-3": "it could not start"}
    assert progress_lines(progress, shown_rounds, shown_failures) == [
        "round 8/10: aggregated 2 site(s) [site-1 Dice 0.580 1,000 B, site-2 Dice 0.400]; missing: site-3",
        "site-3 failed: it could not start",
    ]


def test_rounds_finished_after_the_last_poll_are_read_back_from_the_downloaded_server_log(tmp_path):
    shown_rounds, shown_failures = {0, 1}, set()
    log = tmp_path / "job" / "workspace" / "log.txt"
    log.parent.mkdir(parents=True)
    end = {"round": 2, "num_rounds": 3, "rounds": [_round(r) for r in range(3)], "failed": {}}
    log.write_text(
        "2026-12-02 10:00:00,000 - ScatterAndGather - INFO - [identity=server] - Round 2 finished.\n"
        f"2026-12-02 10:00:01,000 - FederationProgress - INFO - [identity=server] - {PROGRESS_AT_END}{json.dumps(end)}\n"
    )
    assert progress_lines(final_progress(str(tmp_path)), shown_rounds, shown_failures) == [
        "round 2/3: aggregated 2 site(s) [site-1 Dice 0.520 1,000 B, site-2 Dice 0.400]"
    ]
    assert final_progress(str(tmp_path / "job" / "workspace" / "absent")) is None


def test_cross_site_formatter_prints_each_sites_dice_of_each_model(tmp_path):
    paths = {}
    for site, dice in (("site-1", 0.8125), ("site-2", 0.5)):
        path = str(tmp_path / f"{site}.dxo")
        DXO(DataKind.METRICS, data={"dice": dice, "dice_kidney": dice, "volumes": 3}).to_file(path)
        paths[site] = {"SRV_FL_global_model.pt": path}
    fl_ctx = FLContext()
    fl_ctx.set_prop(AppConstants.VALIDATION_RESULT, paths, private=True, sticky=False)
    text = CrossSiteDiceFormatter().format(fl_ctx)
    assert text.splitlines() == [
        "site-1 | SRV_FL_global_model.pt | dice 0.8125 | dice_kidney 0.8125 | volumes 3",
        "site-2 | SRV_FL_global_model.pt | dice 0.5000 | dice_kidney 0.5000 | volumes 3",
    ]


def test_a_sites_progress_within_a_round_reaches_the_servers_view_and_monitor_until_its_result():
    """The Learner's federated event, as FLARE fires it on the server: kept per site, shown once per report."""
    from nvflare.apis.fl_constant import FLContextKey, ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable

    from flap_sam.federated.progress import ROUND_PROGRESS_EVENT, ROUND_PROGRESS_KEY, FederationProgress

    widget = FederationProgress()
    event = Shareable()
    event[ROUND_PROGRESS_KEY] = {"round": 2, "steps_done": 40, "steps": 80, "mean_loss": 0.5, "seconds_per_step": 1.5}
    event.set_peer_props({ReservedKey.IDENTITY_NAME: "site-2"})
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.EVENT_DATA, event, private=True, sticky=False)
    widget.handle_event(ROUND_PROGRESS_EVENT, fl_ctx)
    assert widget.state["training"] == {"site-2": event[ROUND_PROGRESS_KEY]}
    shown_rounds, shown = set(), set()
    line = "site-2 training: round 2: 40/80 steps, loss 0.5000, 1.5 s a step, about 60 s left"
    assert progress_lines(widget.state, shown_rounds, shown) == [line]
    assert progress_lines(widget.state, shown_rounds, shown) == []  # the same report is not shown twice


def test_a_session_whose_polls_go_unanswered_is_replaced_and_the_monitor_goes_on():
    """A server that restarted under the admin's session: its polls never return. The monitor gives the session
    up, connects again, and follows the job to its end on the new one (FLARE's Session API, its two calls faked)."""
    import threading

    from nvflare.apis.job_def import RunStatus
    from nvflare.fuel.flare_api.api_spec import MonitorReturnCode

    from flap_sam.cli.monitor import follow

    class DeadSession:
        def monitor_job(self, job_id, timeout, poll_interval, cb):
            threading.Event().wait()  # never answers

    class LiveSession:
        def monitor_job(self, job_id, timeout, poll_interval, cb):
            cb(self, job_id, {"status": RunStatus.ABANDONED.value})
            return MonitorReturnCode.JOB_FINISHED

        def show_stats(self, job_id, target):
            return {}

        def show_errors(self, job_id, target):
            return {}

    lines = []
    status = follow(DeadSession(), "job-1", "unused", poll=0.1, timeout=30, say=lines.append, reconnect=LiveSession, silent_after=0.5)
    assert status == RunStatus.ABANDONED.value
    assert lines[0] == "the server stopped answering (no answer for 0 s; restarted?): connecting again"
    assert "submit the same job with resume_from=job-1" in lines[-1]


def test_a_site_heard_from_and_then_silent_for_the_timeout_is_named_and_one_not_yet_heard_is_left_alone():
    """``silent_site_timeout``: only a site that reported before in this run and has been silent in this round for
    longer than the timeout counts as gone (a site's start-up sends no report); one that returned its result never."""
    from nvflare.apis.fl_constant import FLContextKey, ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable

    from flap_sam.federated.progress import ROUND_PROGRESS_EVENT, ROUND_PROGRESS_KEY, FederationProgress

    widget = FederationProgress(min_clients=3, silent_site_timeout=60)
    widget.state["round"] = 1
    start = 1000.0
    widget._heard = {"site-1": start, "site-2": start, "site-3": start}  # as ROUND_STARTED sets it
    for site in ("site-1", "site-2"):
        event = Shareable()
        event[ROUND_PROGRESS_KEY] = {"round": 1, "steps_done": 1, "steps": 9, "mean_loss": 1.0, "seconds_per_step": 1.0}
        event.set_peer_props({ReservedKey.IDENTITY_NAME: site})
        fl_ctx = FLContext()
        fl_ctx.set_prop(FLContextKey.EVENT_DATA, event, private=True, sticky=False)
        widget.handle_event(ROUND_PROGRESS_EVENT, fl_ctx)
    widget._heard["site-1"] = widget._heard["site-2"] = start + 10  # both reported 10 s into the round
    assert widget.silent_sites(start + 69) == {}
    assert widget.silent_sites(start + 71) == {"site-1": 61.0, "site-2": 61.0}  # site-3 never reported: start-up
    widget.state["reported"]["site-2"] = {"val_dice": 0.5, "bytes_received": 1}
    assert set(widget.silent_sites(start + 500)) == {"site-1"}
    widget.state["rounds"].append({"round": 1, "sites": {}, "missing": []})
    assert widget.silent_sites(start + 500) == {}, "between rounds nobody is waited for"
