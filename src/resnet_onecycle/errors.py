"""Errors about the user's input: the message alone says what is wrong and how to fix it."""


class UserError(ValueError):
    """Bad input; printed without a traceback by the scripts in src/."""


class ConfigError(UserError):
    """A config value that cannot work; the message names the key and the fix."""


class DataSourceError(UserError):
    """A data source that cannot be read; the message names the source and the fix."""
