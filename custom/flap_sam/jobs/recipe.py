"""FLARE 2.9's Job API way in: a FLAP-SAM job as a ``Recipe``, run in ``SimEnv``, ``PocEnv`` or ``ProdEnv``.

``FlapSamRecipe(job, **settings)`` builds exactly the job that ``flap-sam job JOB --set ...``
writes: the job folder's configuration (the package's shared ``client.conf`` / ``server.conf``,
every setting's default from the schema (``settings.conf``), the shipped demo's budget where it applies)
with the settings applied, resolved by FLARE's own config loader, becomes the server and
client app configuration of a ``FedJob``. So the recipe and the job folder cannot drift apart:
there is one definition of the workflow, its components and its defaults. Settings are checked
against that configuration (an unknown name is refused, as by ``flap-sam job``).

Each shipped job has a ``job.py`` beside its config, which runs ``main`` here (``nvflare simulator
jobs/kits_lora`` keeps working as before):

    python jobs/kits_lora/job.py [--env sim|poc|prod] [--set KEY=VALUE ...] [--workspace DIR]
                                 [--startup-kit DIR --username NAME] [--export --export-dir DIR]

``--export --export-dir DIR`` (FLARE's own recipe flags) only writes the job folder FLARE would run.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import tempfile

from nvflare.fuel.utils.config_factory import ConfigFactory
from nvflare.job_config.api import FedJob
from nvflare.recipe.spec import Recipe

from flap_sam.jobs.writer import SIDES, config_path, parse_settings, source_job, write_job
from flap_sam.training.schema import package_defaults

ENVS = ("sim", "poc", "prod")


def resolved_config(job: str, side: str) -> dict:
    """A job folder's ``config_fed_<side>.conf`` as FLARE resolves it (includes applied), as a plain dict."""
    config = ConfigFactory.load_config(config_path(job, side))
    if config is None:
        raise ValueError(f"job {job}: no app/config/config_fed_{side}.conf")
    return config.to_dict()


class FlapSamRecipe(Recipe):
    """The FLAP-SAM job of ``job`` with ``settings`` (any setting of the schema, ``flap_sam.training.schema``, as a keyword, e.g.
    ``preset="lora_dec"``, ``num_rounds=25``, ``data_root="/data/kits"``; every other setting keeps the
    package default, the paper's recipe, or the shipped demo's budget on the demo data).

    Args:
        job: a job folder or the name of a shipped job.
        name: the FLARE job name (default: the job folder's name).
        env: where it will run (``sim``, ``poc``: FLARE's default kits; ``prod``: provisioned sites, so the
            job carries no ``custom/`` folder).
        settings: settings to change, as ``flap-sam job --set`` takes them.
    """

    def __init__(self, job: str = "kits_lora", name: str | None = None, env: str = "sim", **settings) -> None:
        if env not in ENVS:
            raise ValueError(f"env {env!r}: choose one of {list(ENVS)}")
        source = source_job(job)
        with tempfile.TemporaryDirectory(prefix="flap-sam-recipe-") as tmp:
            folder = write_job(source, os.path.join(tmp, "job"), settings)
            self.configs = {side: resolved_config(folder, side) for side in SIDES}
        self.settings = dict(settings)
        fed_job = FedJob(
            name=name or os.path.basename(os.path.normpath(source)),
            min_clients=int(self.configs["server"]["min_clients"]),
            meta_props={"scope": self.configs["server"]["scope"]},
        )
        fed_job.to_server(self.configs["server"])
        fed_job.to_clients(self.configs["client"])
        super().__init__(fed_job)
        # FLARE's simulator and its default POC check a job without a custom/ folder against FLARE's own
        # allow-list, which lacks flap_sam: there the shipped job's marker README goes along (the code is
        # the installed package). Provisioned sites (env prod) refuse any job with a custom/ folder.
        readme = os.path.join(source, "app", "custom", "README.md")
        if env != "prod" and os.path.isfile(readme):
            self.add_server_file(readme)
            self.add_client_file(readme)


def _setting_keywords(init) -> inspect.Signature:
    """``init``'s signature with every setting as a keyword and its package default, for ``help()`` and
    ``inspect.signature`` (only the keywords given are applied: a shipped job on its demo data keeps the
    demo's budget otherwise)."""
    params = [p for p in inspect.signature(init).parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD and p.name != "self"]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in package_defaults().items()]
    return inspect.Signature(params)


FlapSamRecipe.__signature__ = _setting_keywords(FlapSamRecipe.__init__)


POC_LOGIN_TIMEOUT_S = 120


def make_env(env: str, num_clients: int, workspace: str | None = None, startup_kit: str | None = None, username: str = "admin@nvidia.com"):
    """FLARE's execution environment: ``sim`` (SimEnv: ``num_clients`` sites, results under ``workspace``),
    ``poc`` (PocEnv: a fresh local POC with ``num_clients`` sites) or ``prod`` (ProdEnv: a provisioned
    deployment, through the admin's ``startup_kit``)."""
    from nvflare.recipe import PocEnv, ProdEnv, SimEnv

    if env == "sim":
        return SimEnv(num_clients=num_clients, num_threads=num_clients, workspace_root=workspace or "/tmp/nvflare/simulation")
    if env == "poc":
        # FLARE's admin login waits 10 s by default: a POC server that starts on a busy machine needs longer.
        return PocEnv(num_clients=num_clients, username=username, extra={"login_timeout": POC_LOGIN_TIMEOUT_S})
    if env == "prod":
        if not startup_kit:
            raise ValueError("--env prod needs --startup-kit: the admin's startup kit folder of the deployment")
        return ProdEnv(startup_kit_location=startup_kit, username=username)
    raise ValueError(f"--env {env}: choose one of {list(ENVS)}")


# ---- the command line of jobs/*/job.py ----------------------------------------------------------

FLARE_RECIPE_FLAGS = ("--export", "--export-dir")  # FLARE takes these off sys.argv before this parser runs


def build_parser(job: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python {job}/job.py", description="the job as a FLARE Job API recipe in the environment asked for"
    )
    parser.add_argument(
        "--env", default="sim", choices=ENVS, help="sim: FLARE's simulator (default); poc: a local POC; prod: a provisioned deployment"
    )
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="settings, as flap-sam job --set takes them")
    parser.add_argument("--workspace", default="/tmp/nvflare/simulation", help="sim: where the simulator's results go")
    parser.add_argument("--sites", type=int, default=None, help="sim / poc: number of sites (default: the job's min_clients)")
    parser.add_argument("--startup-kit", default=None, help="prod: the admin's startup kit folder")
    parser.add_argument(
        "--results",
        default="/tmp/nvflare/results",
        help="poc: the job's result (global model, metrics, logs) is copied here, as RESULTS/<job id>, before the POC is removed",
    )
    parser.add_argument("--username", default="admin@nvidia.com", help="poc / prod: the admin user of the kit")
    return parser


def keep_result(result: str | None, env, job_id: str, results: str) -> str | None:
    """Where the job's result stays after the run: a POC's (inside its workspace, which FLARE removes) is
    copied to ``results/<job id>`` first; a simulator's and a deployment's download already stay."""
    from nvflare.recipe import PocEnv

    if not result or not os.path.isdir(result) or not isinstance(env, PocEnv):
        return result
    kept = os.path.join(os.path.abspath(results), job_id)
    if os.path.exists(kept):
        raise ValueError(f"--results {results}: {kept} exists already; the result of job {job_id} stays at {result}")
    shutil.copytree(result, kept)
    return kept


def main(job: str, argv: list[str] | None = None) -> int:
    parser = build_parser(job)
    args = parser.parse_args(argv)
    recipe = FlapSamRecipe(job, env=args.env, **parse_settings(args.set))
    sites = args.sites or int(recipe.configs["server"]["min_clients"])
    env = make_env(args.env, sites, args.workspace, args.startup_kit, args.username)
    run = recipe.execute(env)  # or --export
    # Wait for the end and stop the environment, keeping a POC's workspace until its result is copied out of it.
    result = run.get_result(clean_up=False)
    status = run.get_status()  # the final status, read before the environment stopped
    result = keep_result(result, env, run.get_job_id(), args.results)
    env.stop(clean_up=True)  # a POC's workspace goes (a simulator and a deployment: nothing to remove)
    print(f"job {run.get_job_id()}: {status or 'ended (FLARE reports no status in its simulator)'}; result: {result}")
    return 0 if result and os.path.isdir(result) and (status is None or "COMPLETED" in status) else 1
