"""A server component for ``local/resources.json``: after a restart, close the jobs the restart cut off.

NVFlare 2.9 no longer reconciles its job store when the server starts again (the code that
did it went with HA in NVFlare PR #3898): a job that was running when the server stopped
stays ``RUNNING`` forever, and the admin can neither abort nor delete it. At server start
this component marks such jobs ``FINISHED:ABANDONED`` (FLARE's own status for them) and logs,
for each, how many rounds its persisted adapter holds and how to go on from there
(``resume_from``, see ``flap_sam.federated.resume``).

Server operators add it once to the server kit's ``local/resources.json``::

    "components": [ ..., {"id": "interrupted_jobs", "path": "flap_sam.federated.restart.InterruptedJobs", "args": {}} ]
"""

from __future__ import annotations

import json
import os

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import SystemComponents
from nvflare.apis.fl_context import FLContext
from nvflare.apis.job_def import RunStatus

from flap_sam.federated.resume import read_adapter, run_adapter_path
from flap_sam.files import write_json

INTERRUPTED = [RunStatus.RUNNING, RunStatus.DISPATCHED]
COMPONENT = {"id": "interrupted_jobs", "path": "flap_sam.federated.restart.InterruptedJobs", "args": {}}


def add_to_server_resources(resources_json: str) -> None:
    """Add this component to a server kit's ``local/resources.json`` (once; the file is rewritten atomically)."""
    with open(resources_json, encoding="utf-8") as f:
        config = json.load(f)
    config["components"] = [c for c in config.get("components", []) if c.get("id") != COMPONENT["id"]] + [COMPONENT]
    write_json(resources_json, config)


def persisted_rounds(workspace_root: str, job_id: str) -> int:
    """Finished rounds in the adapter a job's run folder holds (0 when it holds none)."""
    path = run_adapter_path(workspace_root, job_id)
    if not os.path.isfile(path):
        return 0
    try:
        return read_adapter(path)[1]
    except ValueError:  # unreadable: nothing to resume from; resume_from would say so at start
        return 0


class InterruptedJobs(FLComponent):
    """At ``SYSTEM_START``, marks jobs still listed as running ``FINISHED:ABANDONED`` and says how to resume."""

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type != EventType.SYSTEM_START:
            return
        engine = fl_ctx.get_engine()
        jobs = engine.get_component(SystemComponents.JOB_MANAGER)
        workspace = engine.get_workspace()
        for job in jobs.get_jobs_by_status(INTERRUPTED, fl_ctx):
            jobs.set_status(job.job_id, RunStatus.ABANDONED, fl_ctx)
            rounds = persisted_rounds(workspace.get_root_dir(), job.job_id)
            if rounds:
                self.log_warning(
                    fl_ctx,
                    f"job {job.job_id} was running when the server stopped; marked {RunStatus.ABANDONED.value}. "
                    f"Its adapter holds {rounds} finished round(s): submit the same job with "
                    f"resume_from = {job.job_id} to go on from there",
                )
            else:
                self.log_warning(
                    fl_ctx,
                    f"job {job.job_id} was running when the server stopped; marked "
                    f"{RunStatus.ABANDONED.value}. It had finished no round: submit it again",
                )
