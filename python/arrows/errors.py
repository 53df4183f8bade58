"""The exceptions arrows raises. Every one derives from `ArrowsError`; operating-system problems
(a missing file, a full disk, no permission) are the built-in `OSError` subclasses instead, with
the file name set."""


class ArrowsError(Exception):
    """Base class of arrows' own errors."""


class InputError(ArrowsError, ValueError):
    """A bad argument or input that the user can fix (empty corpus, vocabulary too small, ...)."""


class InvalidUtf8Error(InputError):
    """`--strict-utf8` met bytes that are not UTF-8 (the message names the file and offset)."""


class TokenizerError(ArrowsError, ValueError):
    """A tokenizer file that cannot be used."""


class CorruptDataError(ArrowsError):
    """A shard, manifest or checkpoint that fails its checks (the message names the file)."""


class ResumeMismatchError(ArrowsError):
    """`--resume` on an output made from other inputs or settings (the message says what differs)."""


class CancelledError(ArrowsError):
    """The job was interrupted; what is complete on disk stays valid and resumable."""
