"""arrows: train language models forwards and backwards on the same text, and measure the
difference (the "arrow of time" of a language).

The public API: `arrows.data.TokenStore` (a tokenized corpus), `arrows.data.WindowLoader`
(forward, backward or permuted training windows as torch tensors), `arrows.models` (`build_model`
for GPT, GRU, LSTM), `arrows.checkpoint` (`save`, `load`, `load_model`), `arrows.generate`
(`load_run`, `generate_text` from a run folder) and `arrows.errors` (exceptions, re-exported
here). The command line lives in `arrows.cli`. torch is imported only by the modules that train.
"""

__version__ = "0.1.0"

from arrows.errors import (  # noqa: F401  (re-exported)
    ArrowsError,
    BatchSizeError,
    CancelledError,
    CorruptDataError,
    InputError,
    InvalidUtf8Error,
    ResumeMismatchError,
    TokenizerError,
)
