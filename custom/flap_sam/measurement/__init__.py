"""Components only measurement jobs name: never part of a production federation.

``flap-sam robustness`` writes jobs that name these (through the package's
``job_config/attack_simulation.conf``); a provisioned kit's ``class_allow_list`` lists
``flap_sam.federated.`` and not this package, so FLARE refuses them at a hospital's site and server.
"""
