"""The project's error types for bad input; each message is one line naming the file or setting and the problem."""


class DataError(ValueError):
    """Bad input data (datalist, NIfTI file, label values...)."""


class CheckpointError(ValueError):
    """A SAM checkpoint that cannot be used; the message names the file and the problem."""
