"""The one error type for bad site data; its message is one line naming the file and the problem."""


class DataError(ValueError):
    """Bad input data (datalist, NIfTI file, label values...)."""
