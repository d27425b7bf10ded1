"""The names of what a FLAP-SAM run leaves in its job folder, for every module that writes or reads them.

A job's folder (the simulator's ``<workspace>/server/simulate_job``, a deployment's
``<server workspace>/<job id>``) holds:

* ``app_server/FL_global_model.pt``: the adapter after the last round (FLARE's persistor name),
  ``best_FL_global_model.pt`` the one with the best validation Dice; ``flap-sam train`` writes
  its baselines under the same names;
* ``app_server/traffic_summary.json``: bytes per site, task and round (``TrafficMeter``);
* ``cross_site_val/cross_val_results.json``: each site's Dice of each global model, the final one
  named ``SRV_FL_global_model.pt``;
* ``tb_events/<site>/``: the sites' metrics as TensorBoard events.

A site's own app folder (a preset with a personal part) holds ``personal_adapter.pt``: the tensors
that trained there and never left it; it exists on that site only.
"""

from __future__ import annotations

import os

SERVER_APP = "app_server"
SIMULATOR_JOB = os.path.join("server", "simulate_job")  # a simulator workspace's job folder
GLOBAL_MODEL_FILE = "FL_global_model.pt"
BEST_MODEL_FILE = "best_FL_global_model.pt"
FINAL_MODEL = "SRV_FL_global_model.pt"  # the server's final model, as cross-site evaluation names it
TRAFFIC_FILE = "traffic_summary.json"
CROSS_SITE_FILE = os.path.join("cross_site_val", "cross_val_results.json")
TB_FOLDER = "tb_events"
PERSONAL_ADAPTER_FILE = "personal_adapter.pt"  # in a site's app folder: its personal part (never sent)


def simulator_job(workspace: str) -> str:
    """The job folder of a finished ``nvflare simulator JOB -w workspace`` run."""
    return os.path.join(workspace, SIMULATOR_JOB)
