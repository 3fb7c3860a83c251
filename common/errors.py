"""Errors a user can cause and fix. CLIs print them as one line, never as a traceback."""


class FedDELError(Exception):
    """Base class: the message names the bad input and how to fix it."""


class DataError(FedDELError):
    """A data folder or file is missing, empty or of the wrong kind."""


class ConfigError(FedDELError):
    """A configuration key has a value outside its allowed range or type."""


class ProtocolError(FedDELError):
    """A message between server and center is malformed or inconsistent."""


class RunFailed(FedDELError):
    """The job ran but could not reach its goal (e.g. too few centers answered): exit 1."""


class Refused(FedDELError):
    """A center declines a request that its own site policy does not allow (center.toml)."""
