"""arrows used as a library from Python, the way a researcher scripts it: the argument forms the
docstrings promise, and bad arguments met with arrows' own errors naming what to change."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from arrows import checkpoint  # noqa: E402
from arrows.errors import CorruptDataError  # noqa: E402


def test_checkpoint_save_and_load_take_str_paths(tmp_path):
    path = str(tmp_path / "sub" / "ck.pt")
    payload = {"model": {"w": torch.arange(3)}, "optimizer": {}, "step": 7, "per_rank": [], "config": {}}
    checkpoint.save(path, payload)  # a str, not only a Path
    back = checkpoint.load(path)
    assert back["step"] == 7 and torch.equal(back["model"]["w"], torch.arange(3))


def test_a_checkpoint_path_that_cannot_be_opened_is_not_called_damaged(tmp_path):
    # A folder given by mistake is an OS error naming it, not "damaged checkpoint ... start over".
    with pytest.raises(IsADirectoryError) as e:
        checkpoint.load(tmp_path)
    assert e.value.filename == str(tmp_path)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.pt")
    # A file that is there but is no checkpoint is still named as damaged.
    (tmp_path / "text.pt").write_text("not a zip")
    with pytest.raises(CorruptDataError, match="text.pt: damaged checkpoint"):
        checkpoint.load(tmp_path / "text.pt")
