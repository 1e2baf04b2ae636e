"""Why an ops command stopped: the message says what to do next, the class the exit status."""


class OpsError(Exception):
    """The command could not do (all of) its job. Exit status 1."""

    exit_code = 1


class UsageError(OpsError):
    """The command line asks for something that cannot or must not be done. Exit status 2."""

    exit_code = 2
