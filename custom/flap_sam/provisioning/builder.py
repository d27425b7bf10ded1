"""``nvflare provision`` builder: every kit gets its site's policy (``provisioning/project.yml`` names it).

Runs after FLARE's ``StaticFileBuilder`` and writes, in each participant's ``local/``:

* server and clients: ``resources.json.default`` with this project's ``class_allow_list``
  (FLARE's other defaults kept), ``authorization.json.default`` (``policy_files.AUTHORIZATION``);
* clients: ``privacy.json`` (the scopes, with the site's result filter).

A site changes its policy without re-provisioning: copy a ``.default`` file to the name without
``.default`` (FLARE prefers it), or edit ``privacy.json``, then restart its client (docs/deployment.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from nvflare.lighter.ctx import ProvisionContext
from nvflare.lighter.entity import Project
from nvflare.lighter.spec import Builder

from flap_sam.files import write_json
from flap_sam.provisioning.policy_files import AUTHORIZATION, class_allow_list, privacy_policy

MEGABYTE = 1_000_000


class SitePolicyBuilder(Builder):
    """Writes the policy documents into every server and client kit.

    Args:
        presets: presets whose tensors may leave a site (default: the paper's ``flap``).
        max_megabytes_per_result: ceiling on one result's tensors at a site, in MB (10**6 bytes) of
            float32; 0: none. ``flap`` at ViT-B, rank 32, 2 classes is 7.45 MB.
        percentile, percentile_gamma: FLARE PercentilePrivacy's parameters in scope ``flap_percentile``.
    """

    def __init__(
        self,
        presets: Sequence[str] = ("flap",),
        max_megabytes_per_result: float = 16,
        percentile: float = 10,
        percentile_gamma: float = 0.01,
    ) -> None:
        self.privacy = privacy_policy(list(presets), int(max_megabytes_per_result * MEGABYTE), percentile, percentile_gamma)

    def build(self, project: Project, ctx: ProvisionContext) -> None:
        server = project.get_server()
        for participant in ([server] if server else []) + project.get_clients():
            local = ctx.get_local_dir(participant)
            resources_file = os.path.join(local, "resources.json.default")
            with open(resources_file, encoding="utf-8") as f:
                resources = json.load(f)
            kit_components = [c["path"] for c in resources.get("components", []) if "path" in c]
            resources["class_allow_list"] = class_allow_list(kit_components)
            resources["class_list_enforcement_mode"] = "enforce"
            write_json(resources_file, resources)
            write_json(os.path.join(local, "authorization.json.default"), AUTHORIZATION)
            if participant is not server:
                write_json(os.path.join(local, "privacy.json"), self.privacy)
