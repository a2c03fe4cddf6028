"""The one base class for errors a user can fix. The CLI prints their message on one line and exits 2."""


class UserError(ValueError):
    """Bad input (spec, data, config, arguments): the message names the file or field and the problem."""
