"""Going on after a server restart: the persisted adapter records its round; a new job resumes from it.

NVFlare 2.9 no longer restores a running job when the server restarts: its component
snapshots were removed with HA (NVFlare PRs #3898 and #4503; ``persist_components`` is a
no-op). What survives a restart is the server's run folder of the interrupted job, with the
adapter that ``AdapterPersistor`` wrote atomically after the last finished round. A job
submitted with ``resume_from = <interrupted job id>`` loads that adapter and runs the rounds
that were not finished, so no finished round is lost and none is repeated.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

from flap_sam.files import GLOBAL_MODEL_FILE, SERVER_APP
from flap_sam.model.adapter_file import FINGERPRINT_KEY, read_adapter_file, weights_digest
from flap_sam.training.schema import package_defaults

# Each default is the one the schema declares (a job's FLARE config passes every value anyway).
DEFAULT = package_defaults()
FINISHED_ROUNDS_KEY = "flap_sam_finished_rounds"
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def finished_rounds(model: ModelLearnable | None) -> int:
    """How many rounds the global adapter holds (0 for a fresh one)."""
    meta = (model or {}).get(ModelLearnableKey.META) or {}
    return int(meta.get(FINISHED_ROUNDS_KEY, 0))


def run_adapter_path(workspace_root: str, job_id: str, file_name: str = GLOBAL_MODEL_FILE) -> str:
    """Where the server persisted a job's global adapter: ``<workspace root>/<job id>/app_server/<file>``."""
    return os.path.join(workspace_root, job_id, SERVER_APP, file_name)


def read_adapter(path: str) -> tuple[dict[str, torch.Tensor], int]:
    """A persisted adapter file's tensors and its finished round count (0 when it records none)."""
    state, meta = read_adapter_file(path)
    return state, int(meta.get(FINISHED_ROUNDS_KEY, 0))


def resume_checkpoint(resume_from: str, workspace_root: str, file_name: str, setting: str = "resume_from") -> str:
    """The adapter file to resume (or, ``setting = start_from``, to start) from.

    Args:
        resume_from: a job's id on this server, or an absolute path to a persisted adapter (``FL_global_model.pt``).
        workspace_root: the server's workspace root (run folders are ``<root>/<job id>``).
        file_name: the persistor's global model file name.
        setting: the setting's name, for the error.

    Raises:
        ValueError: one line naming the setting and the file when there is nothing to resume from.
    """
    if os.path.isabs(resume_from):
        path = resume_from
    elif _JOB_ID.match(resume_from):
        path = run_adapter_path(workspace_root, resume_from, file_name)
    else:
        raise ValueError(f"{setting} {resume_from!r}: expected a job id of this server or an absolute path")
    if not os.path.isfile(path):
        hint = (
            ""
            if os.path.isabs(resume_from)
            else (
                " (FLARE moves a finished job's run folder into its job store: download the job's result and give the "
                "absolute path of its app_server/FL_global_model.pt, copied to the server)"
            )
        )
        raise ValueError(f"{setting} {resume_from}: no persisted adapter at {path}{hint}")
    return path


def check_same_adapter(
    path: str, expected: dict[str, torch.Tensor], base: dict[str, Any] | None = None, setting: str = "resume_from"
) -> dict[str, Any]:
    """Check that an adapter file holds this job's adapter, trained from the server's SAM base; returns its meta.

    Raises:
        ValueError: one line when the file cannot be read, holds another model (preset, rank, model type or class
            count differ) or was trained from another SAM base than ``base`` (the server's fingerprint).
    """
    state, meta = read_adapter_file(path)
    wrong = sorted(
        k for k in set(state) | set(expected) if k not in state or k not in expected or tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if wrong:
        raise ValueError(
            f"{setting} {path}: holds another adapter than this job's ({len(wrong)} tensor(s) differ, "
            f"e.g. {wrong[0]}); use the same model settings as the job that made it"
        )
    recorded = meta.get(FINGERPRINT_KEY)
    if base is not None and recorded is not None and recorded != base:
        raise ValueError(
            f"{setting} {path}: was trained from another SAM base ({recorded.get('source')}) than this "
            f"server built ({base.get('source')}); set the same server_checkpoint as the job that made it"
        )
    return meta


def check_resumable(path: str, expected: dict[str, torch.Tensor], num_rounds: int, base: dict[str, Any] | None = None) -> int:
    """Check an adapter file against the job's adapter (``check_same_adapter``); returns its finished round count.

    Raises:
        ValueError: one line when ``check_same_adapter`` refuses it, or it has no round count, or already holds
            every round.
    """
    done = int(check_same_adapter(path, expected, base).get(FINISHED_ROUNDS_KEY, 0))
    if done <= 0:
        raise ValueError(f"resume_from {path}: records no finished round")
    if done >= num_rounds:
        raise ValueError(f"resume_from {path}: already holds all {done} round(s) (num_rounds = {num_rounds})")
    return done


class AdapterPersistor(PTFileModelPersistor):
    """``PTFileModelPersistor`` that records the finished rounds in every saved adapter and can resume.

    The file stays FLARE's format (``{"model": {name: tensor}, "meta_props": {...}}``) and is
    written atomically by FLARE (temporary file, ``os.replace``), so the weights and their round
    count can never disagree or be half-written.

    Args:
        model: the ``AdapterModel`` config (``{"path": ..., "args": {...}}``).
        resume_from: "" for a fresh start, or an interrupted job's id / an adapter file (see
            ``resume_checkpoint``). Checked at the job's start.
        num_rounds: the job's total rounds, to refuse resuming a job that already finished.
        start_from: "" for a fresh start, or a finished job's id / an adapter file: its global adapter is
            this job's first global model, and this job runs all its rounds from round 0 (a consortium that
            grows: a hospital that joins trains from the current global adapter). Not with ``resume_from``.
    """

    def __init__(
        self, model: dict[str, Any], resume_from: str = DEFAULT["resume_from"], num_rounds: int = 0, start_from: str = DEFAULT["start_from"]
    ) -> None:
        super().__init__(model=model)
        self.resume_from = str(resume_from or "")
        self.start_from = str(start_from or "")
        self.num_rounds = int(num_rounds)

    def handle_event(self, event: str, fl_ctx: FLContext) -> None:
        super().handle_event(event, fl_ctx)
        if event == EventType.START_RUN and (self.resume_from or self.start_from):
            if not isinstance(self.model, torch.nn.Module):
                return  # FLARE's own start-up already failed and said why
            try:
                if self.resume_from and self.start_from:
                    raise ValueError("resume_from and start_from: set one (resume_from goes on with a stopped job's rounds)")
                root = fl_ctx.get_engine().get_workspace().get_root_dir()
                if self.resume_from:
                    path = resume_checkpoint(self.resume_from, root, self.global_model_file_name)
                    done = check_resumable(path, self.model.state_dict(), self.num_rounds, self._base())
                else:
                    path = resume_checkpoint(self.start_from, root, self.global_model_file_name, "start_from")
                    check_same_adapter(path, self.model.state_dict(), self._base(), "start_from")
            except ValueError as error:
                self.system_panic(str(error), fl_ctx)
                return
            self.source_ckpt_file_full_name = path
            digest = weights_digest(read_adapter_file(path)[0])
            if self.resume_from:
                self.log_info(fl_ctx, f"resuming from {path}: {done} round(s) finished (global adapter {digest})")
            else:
                self.log_info(fl_ctx, f"starting from the global adapter of {path} ({digest}): round 0 of {self.num_rounds}")

    def _base(self) -> dict[str, Any] | None:
        return getattr(self.model, "base_fingerprint", None)

    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        """FLARE's load, plus the server's base fingerprint in the model's meta: it travels with every
        global model (DXO meta) and is persisted with the adapter."""
        ml = super().load_model(fl_ctx)
        if ml is not None and self._base() is not None:
            ml[ModelLearnableKey.META] = {**(ml.get(ModelLearnableKey.META) or {}), FINGERPRINT_KEY: self._base()}
        if ml is not None and self.start_from:  # another job's rounds: this job counts its own from 0
            ml[ModelLearnableKey.META] = {k: v for k, v in (ml.get(ModelLearnableKey.META) or {}).items() if k != FINISHED_ROUNDS_KEY}
        return ml

    def save_model(self, ml: ModelLearnable, fl_ctx: FLContext) -> None:
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        if current is not None:
            ml[ModelLearnableKey.META] = {**(ml.get(ModelLearnableKey.META) or {}), FINISHED_ROUNDS_KEY: int(current) + 1}
        super().save_model(ml, fl_ctx)


class ResumableScatterAndGather(ScatterAndGather):
    """``ScatterAndGather`` that starts at the first round its initial global adapter has not finished.

    With a fresh adapter this is plain ScatterAndGather (rounds 0 .. num_rounds-1). With an
    adapter from ``AdapterPersistor(resume_from=...)`` that finished k rounds it runs rounds
    k .. num_rounds-1, through FLARE's own ``restore`` hook of the workflow.
    """

    def start_controller(self, fl_ctx: FLContext) -> None:
        super().start_controller(fl_ctx)
        model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        done = finished_rounds(model)
        if done:
            state = self.get_persist_state(fl_ctx)
            self.restore({**state, "current_round": state["start_round"] + done, "global_weights": model}, fl_ctx)
            self.log_info(fl_ctx, f"resuming at round {done} of {state['num_rounds']}: rounds 0-{done - 1} were finished before")
