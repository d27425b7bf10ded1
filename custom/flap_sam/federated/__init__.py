"""NVFlare components: the site Learner, the preset result filter, the server's adapter model."""
