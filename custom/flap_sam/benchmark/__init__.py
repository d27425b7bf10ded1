"""``flap-sam bench``: communication, training speed and memory per preset, and aggregation time, measured in one run."""
