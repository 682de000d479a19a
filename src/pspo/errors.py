"""One exception type for user-facing problems: its message is one line naming the problem and the fix."""


class PSPOError(Exception):
    """A problem with the user's input or environment, reported as one clear line (no traceback)."""
