"""The one exception type that reaches the user as a message instead of a traceback."""


class TrainerError(Exception):
    """A problem the user can fix (bad config, missing data, bad checkpoint): printed as one paragraph, exit 2."""


def unwritable_out(out: object, err: OSError) -> TrainerError:
    """The refusal of an --out path the OS would not write (the commands that write files share it)."""
    return TrainerError(f"--out {out} cannot be written ({err.strerror or err}). Choose a writable path.")


class EnvironmentVariableError(TrainerError):
    """A malformed launcher variable (RANK, WORLD_SIZE, ...): the process may be no part of any job, so it speaks for
    itself instead of leaving the message to a rank 0 that may not exist."""
