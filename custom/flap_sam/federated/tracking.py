"""Experiment tracking of the user's choice (setting ``tracking``), with FLARE's own receivers.

The sites' metrics (``val_dice``, ``train_loss``, ``lr``, bytes) travel to the server as FLARE
analytics events, as they always have; the server always writes them as TensorBoard events
(``tb_events/``, what ``flap-sam report`` and the tests read). ``tracking`` adds one more
receiver there:

* ``tensorboard``: nothing more;
* ``mlflow``: FLARE's ``MLflowReceiver``, one MLflow run per site. ``tracking_uri`` is a tracking
  server or a ``file:`` store; empty means ``file:<server job folder>/mlruns``, which works
  offline (MLflow 3 keeps its file store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``,
  which this component sets for a ``file:`` URI). Needs ``mlflow`` (``mlflow-skinny`` is enough).
* ``wandb``: FLARE's ``WandBReceiver`` (needs ``wandb`` and, online, ``WANDB_API_KEY`` at the
  server; ``tracking_uri = offline`` keeps runs on disk). Wired only: no account was available
  to test it with.

Only aggregate numbers reach any tracker: the sites send nothing else.
"""

from __future__ import annotations

import importlib.util
import os

from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext

from flap_sam.training.schema import checked_value, package_defaults

# Each default is the one the schema declares (a job's FLARE config passes every value anyway).
DEFAULT = package_defaults()

FED_EVENTS = ["fed." + ANALYTIC_EVENT_TYPE]  # the sites' analytics, as ConvertToFedEvent forwards them


class TrackingReceiver(FLComponent):
    """Server component: forwards the sites' metrics to the chosen tracker through FLARE's receiver for it.

    Args:
        tracking: ``tensorboard`` | ``mlflow`` | ``wandb``.
        tracking_uri: MLflow tracking URI ("" = a file store in the job's folder); W&B mode (``online`` | ``offline``).
        experiment: MLflow experiment / W&B project name.
    """

    def __init__(
        self,
        tracking: str = DEFAULT["tracking"],
        tracking_uri: str = DEFAULT["tracking_uri"],
        experiment: str = DEFAULT["tracking_experiment"],
    ) -> None:
        super().__init__()
        checked_value("tracking", tracking)
        needs = {"mlflow": ("mlflow", "mlflow-skinny"), "wandb": ("wandb", "wandb")}.get(tracking)
        if needs and importlib.util.find_spec(needs[0]) is None:
            raise ValueError(f"tracking = {tracking} needs the {needs[0]} package at the server: pip install {needs[1]}")
        self.tracking, self.tracking_uri, self.experiment = tracking, tracking_uri, experiment
        self.impl = None
        if tracking == "mlflow":
            from nvflare.app_opt.tracking.mlflow.mlflow_receiver import MLflowReceiver

            self.impl = MLflowReceiver(tracking_uri=tracking_uri or None, kw_args={"experiment_name": experiment}, events=FED_EVENTS)
        elif tracking == "wandb":
            from nvflare.app_opt.tracking.wandb.wandb_receiver import WandBReceiver

            self.impl = WandBReceiver(wandb_args={"project": experiment}, mode=tracking_uri or "offline", events=FED_EVENTS)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if self.impl is None:
            return
        if event_type == EventType.START_RUN and self.tracking == "mlflow":
            if not self.tracking_uri:
                folder = os.path.join(fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id()), "mlruns")
                self.impl.tracking_uri = "file:" + os.path.abspath(folder)
            if self.impl.tracking_uri.startswith("file:"):
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self.log_info(fl_ctx, f"tracking the sites' metrics in MLflow at {self.impl.tracking_uri}, experiment {self.experiment}")
        self.impl.handle_event(event_type, fl_ctx)
