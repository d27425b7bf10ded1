"""What the project relies on in FLARE beyond its documented API, each pinned by a test that fails if a FLARE
upgrade changes it (the list, with why each has no public extension point: docs/architecture.md#what-the-project-relies-on-in-flare).

Each test checks FLARE's own objects and names as installed, not a copy of them.
"""

from __future__ import annotations

import errno
import importlib
import importlib.metadata
import inspect
import os

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.aggregators.collect_and_assemble_aggregator import CollectAndAssembleAggregator

from flap_sam.federated.lora_aggregation import CollectAndAssemble, ExactLoRAAssembler
from flap_sam.files import SIMULATOR_JOB
from flap_sam.jobs.simulator import PORT_RACE
from flap_sam.measurement.attacks import SIMULATOR_JOB_ID, SIMULATOR_SERVER


def test_flare_is_the_minor_version_these_reliances_were_checked_on():
    """requirements.txt pins nvflare==2.9.x; a new minor version is when this list must be checked again."""
    assert importlib.metadata.version("nvflare").startswith("2.9.")


def test_collect_and_assemble_keeps_an_assembler_it_was_given():
    """FLARE's CollectAndAssembleAggregator finds its assembler by component id only while it has none; ours is
    given in code (it shares the job's site weights), so it must survive the run's start."""

    class Engine:
        def get_component(self, name):
            raise AssertionError(f"looked up component {name!r}")

    assert CollectAndAssembleAggregator(assembler_id="x").assembler is None  # a public attribute, None until found
    assembler = ExactLoRAAssembler({})
    aggregator = CollectAndAssemble(assembler)
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, Engine(), private=True)
    aggregator.handle_event(EventType.START_RUN, ctx)
    assert aggregator.assembler is assembler


def test_the_simulator_names_its_server_and_its_job_as_the_attack_check_expects():
    """The attack simulation's second guard tells FLARE's simulator server by its name and its one job's id."""
    from nvflare.private.fed.app.deployer import simulator_deployer
    from nvflare.private.fed.simulator.simulator_const import SimulatorConstants

    assert SimulatorConstants.JOB_NAME == SIMULATOR_JOB_ID
    assert f'"name": "{SIMULATOR_SERVER}"' in inspect.getsource(simulator_deployer)
    assert SIMULATOR_JOB == os.path.join("server", SimulatorConstants.JOB_NAME)  # where a simulator run's server job folder is


def test_the_port_race_the_simulator_runner_retries_is_the_systems_address_in_use_error():
    """``run_simulator`` reruns a simulator whose site lost a port race: it finds the OS's EADDRINUSE text in that site's log."""
    assert os.strerror(errno.EADDRINUSE) == PORT_RACE


def test_the_poc_env_takes_a_login_timeout():
    """``job.py --env poc`` waits longer than FLARE's 10 s for the POC's admin login through PocEnv's ``extra``."""
    from nvflare.recipe.poc_env import PocEnv

    assert "extra" in inspect.signature(PocEnv).parameters
    source = inspect.getsource(importlib.import_module("nvflare.recipe.poc_env"))
    assert "login_timeout" in source


def test_cross_site_model_eval_keeps_its_formatter_where_the_early_lookup_puts_it():
    """``CrossSiteEvaluation`` sets FLARE's ``CrossSiteModelEval._formatter`` from ``_formatter_id`` at the run's start;
    FLARE's own lookup, when its workflow starts, sets the same component again from the same id."""
    from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval

    evaluation = CrossSiteModelEval(formatter_id="formatter")
    assert evaluation._formatter_id == "formatter" and evaluation._formatter is None
    assert "self._formatter = self._engine.get_component(self._formatter_id)" in inspect.getsource(CrossSiteModelEval)
