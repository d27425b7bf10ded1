"""The three policy documents a FLAP-SAM site keeps in its kit's ``local/`` folder.

FLARE reads them at the site, never from a job:

* ``resources.json`` (``class_allow_list``): the component classes a job may use. Here: the
  installed package's FLARE components (``flap_sam.federated.``; not ``flap_sam.measurement.``,
  the attack simulation, which only FLARE's simulator allows) and exactly the NVFlare classes
  the jobs' configs name, plus the components the kit itself runs. Jobs that bring code (an ``app/custom/`` folder) skip
  this list in FLARE, which is why no role may submit them (``byoc`` below).
* ``authorization.json``: who may do what (rights per role, with conditions: ``o:site`` = the
  user's org is the site's org, ``n:submitter`` = the user submitted the job).
* ``privacy.json``: the scopes a job may name in its ``meta.json``, each with the result
  filters the site runs before the job's own; no default scope, so a job naming none or an
  unknown one is refused when it is deployed.
"""

from __future__ import annotations

from collections.abc import Sequence

from flap_sam.model.presets import get_preset

SITE_POLICY_FILTER = "flap_sam.federated.site_policy.SitePolicyFilter"
PERCENTILE_PRIVACY = "nvflare.app_common.filters.percentile_privacy.PercentilePrivacy"

# The NVFlare classes the package's job configs (job_config/client.conf, server.conf) name.
JOB_NVFLARE_CLASSES = (
    "nvflare.app_common.executors.learner_executor.LearnerExecutor",
    "nvflare.app_opt.tracking.tb.tb_writer.TBWriter",
    "nvflare.app_common.widgets.convert_to_fed_event.ConvertToFedEvent",
    "nvflare.app_common.shareablegenerators.full_model_shareable_generator.FullModelShareableGenerator",
    "nvflare.app_common.widgets.intime_model_selector.IntimeModelSelector",
    "nvflare.app_opt.pt.file_model_locator.PTFileModelLocator",
    "nvflare.app_common.widgets.validation_json_generator.ValidationJsonGenerator",
    "nvflare.app_opt.tracking.tb.tb_receiver.TBAnalyticsReceiver",
)
COMPONENTS_PREFIX = "flap_sam.federated."  # every component a production job names
MEASUREMENT_PREFIX = "flap_sam.measurement."  # the attack simulation's components: measurement jobs only

SCOPES = ("flap", "flap_percentile")  # what a job may name as its "scope"; settings.conf: scope

# Rights of FLARE 2.9 (nvflare/fuel/sec/authz.py and the provisioned authorization.json.default).
_NO_CODE = {"byoc": "none", "server-predeployed-flwr": "none"}
AUTHORIZATION = {
    "format_version": "1.0",
    "permissions": {
        # The coordinating centre runs the federation: any job, any site's status, restarts;
        # shell commands only at sites of its own org (the server), never in a hospital.
        "project_admin": {
            "submit_job": "any",
            "clone_job": "any",
            "manage_job": "any",
            "download_job": "any",
            "view": "any",
            "operate": "any",
            "shell_commands": "o:site",
            **_NO_CODE,
        },
        # A hospital's lead: submits jobs, manages and downloads only its own, operates and
        # inspects only its own hospital's client.
        "lead": {
            "submit_job": "any",
            "clone_job": "n:submitter",
            "manage_job": "n:submitter",
            "download_job": "n:submitter",
            "view": "any",
            "operate": "o:site",
            "shell_commands": "o:site",
            **_NO_CODE,
        },
        "org_admin": {
            "submit_job": "none",
            "clone_job": "none",
            "manage_job": "o:submitter",
            "download_job": "o:submitter",
            "view": "any",
            "operate": "o:site",
            "shell_commands": "o:site",
            **_NO_CODE,
        },
        "member": {"view": "any", **_NO_CODE},
    },
}


UPDATE_KINDS = ("WEIGHTS", "WEIGHT_DIFF")  # FLARE's DataKind values of a model result


def check_site_filter(presets, max_bytes_per_result, update_kinds=UPDATE_KINDS) -> None:
    """The arguments of a site's ``SitePolicyFilter``: known presets, a whole ceiling >= 0, model data kinds.

    Raises:
        ValueError: one line naming the argument at fault.
    """
    if isinstance(presets, str) or not presets:
        raise ValueError(f"site policy: presets must be a non-empty list of preset names, got {presets!r}")
    for name in presets:
        get_preset(name)
    if not isinstance(max_bytes_per_result, int) or max_bytes_per_result < 0:
        raise ValueError(f"site policy: max_bytes_per_result must be a whole number >= 0, got {max_bytes_per_result!r}")
    if not update_kinds or any(k not in UPDATE_KINDS for k in update_kinds):
        raise ValueError(f"site policy: update_kinds must be some of {list(UPDATE_KINDS)}, got {list(update_kinds)!r}")


def class_allow_list(kit_components: Sequence[str] = (), measurement: bool = False) -> list[str]:
    """``resources.json``'s ``class_allow_list``: the package's components, the jobs' NVFlare classes, the kit's own
    ``kit_components``; with ``measurement`` (FLARE's simulator only, never a kit) the attack simulation's too."""
    listed = [COMPONENTS_PREFIX, *([MEASUREMENT_PREFIX] if measurement else []), *JOB_NVFLARE_CLASSES]
    return listed + [path for path in kit_components if path not in listed and not path.startswith(COMPONENTS_PREFIX)]


def privacy_policy(presets: list[str], max_bytes_per_result: int, percentile: float, percentile_gamma: float) -> dict:
    """``privacy.json``: scope ``flap`` (the site's result filter) and ``flap_percentile`` (the same, on model
    differences, then FLARE's PercentilePrivacy with the site's parameters). No default scope.

    Raises:
        ValueError: an unknown preset, a negative ceiling, a percentile outside (0, 100) or a gamma <= 0.
    """
    check_site_filter(presets, max_bytes_per_result)
    if not 0 < percentile < 100 or percentile_gamma <= 0:
        raise ValueError(f"site policy: percentile must be in (0, 100) and percentile_gamma > 0, got {percentile}, {percentile_gamma}")
    site_args = {"presets": list(presets), "max_bytes_per_result": max_bytes_per_result}
    site_filter = {"path": SITE_POLICY_FILTER, "args": site_args}
    differences_only = {"path": SITE_POLICY_FILTER, "args": {**site_args, "update_kinds": ["WEIGHT_DIFF"]}}
    return {
        "scopes": [
            {"name": "flap", "task_result_filters": [site_filter]},
            {
                "name": "flap_percentile",
                "task_result_filters": [
                    differences_only,
                    {"path": PERCENTILE_PRIVACY, "args": {"percentile": percentile, "gamma": percentile_gamma}},
                ],
            },
        ],
    }
