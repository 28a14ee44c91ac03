"""Errors that name the offending file or params key, raised before expensive work starts."""


class DensepipeError(Exception):
    """Base class: every user-facing failure of the pipeline."""


class DataError(DensepipeError):
    """A dataset file is missing, corrupt or inconsistent (the message names the file)."""


class ParamsError(DensepipeError):
    """A params.yaml value is missing or invalid (the message names the key)."""


class DownloadError(DensepipeError):
    """A download failed, was truncated, or did not match its checksum."""
