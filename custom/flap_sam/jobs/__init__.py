"""FLARE job folders and their settings: the layer above the model and the data that ties them to a job."""
