"""arrows: train language models forwards and backwards on the same text, and measure the
difference (the "arrow of time" of a language).

The public API: `arrows.data.TokenStore` (a tokenized corpus), `arrows.errors` (exceptions).
The command line lives in `arrows.cli`. torch is imported only by the modules that train.
"""

__version__ = "0.1.0"

from arrows.errors import (  # noqa: F401  (re-exported)
    ArrowsError,
    CancelledError,
    CorruptDataError,
    InputError,
    InvalidUtf8Error,
    ResumeMismatchError,
    TokenizerError,
)
