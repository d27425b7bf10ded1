"""The ``flap-sam`` command line."""
