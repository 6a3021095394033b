"""The error the instance-map step raises for bad input: its message names the case or file and the fix."""


class InstanceMapError(RuntimeError):
    """Missing, stale or unreadable input of the instance-map step."""
