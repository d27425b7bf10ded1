"""Run this job with FLARE 2.9's Job API (a recipe) instead of the deprecated `nvflare simulator`:

    python jobs/chest_ct_lora/job.py                                   # FLARE's simulator (SimEnv), the demo
    python jobs/chest_ct_lora/job.py --set preset=lora_dec num_rounds=3 --workspace /tmp/ws
    python jobs/chest_ct_lora/job.py --env poc                         # a fresh local POC deployment (PocEnv)
    python jobs/chest_ct_lora/job.py --env prod --startup-kit ADMIN_KIT --username ADMIN   # a provisioned one (ProdEnv)
    python jobs/chest_ct_lora/job.py --export --export-dir DIR       # only write the job folder FLARE would run

The job is the one this folder's config files define (settings: docs/settings.md).
"""

import os
import sys

from flap_sam.jobs.recipe import main

if __name__ == "__main__":
    sys.exit(main(os.path.dirname(os.path.abspath(__file__)), sys.argv[1:]))
