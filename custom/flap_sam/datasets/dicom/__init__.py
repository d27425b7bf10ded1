"""A hospital's DICOM studies (image series with a SEG or an RTSTRUCT each): ``flap-sam prepare dicom``."""
