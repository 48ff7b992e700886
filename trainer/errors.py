"""The one exception type that reaches the user as a message instead of a traceback."""


class TrainerError(Exception):
    """A problem the user can fix (bad config, missing data, bad checkpoint): printed as one paragraph, exit 2."""
