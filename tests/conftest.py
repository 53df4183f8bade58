import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# ../shared beside the checkout; on a GPU machine, which gets only the checkout, a copy in ./shared
SHARED_DATA = next((p / "data" for p in (ROOT.parent / "shared", ROOT / "shared") if (p / "data").is_dir()), ROOT.parent / "shared" / "data")
# The `arrows` command beside this Python (a venv), else the one on PATH (pip install --target).
ARROWS = Path(sys.executable).parent / "arrows"
if not ARROWS.exists() and shutil.which("arrows"):
    ARROWS = Path(shutil.which("arrows"))

# The Ctrl-C tests need SIGINT to interrupt, here and in the commands they start. A shell starts a
# background job (`pytest ... &`, nohup) with SIGINT ignored, which Python and every process it
# starts inherit: arrows then rightly keeps running, as a background job should, and those tests
# failed. Python's own handler is not inherited across exec, so the children get the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_runtest_logreport(report):
    """With ARROWS_TEST_INSTAFAIL=1, a failure's traceback is printed as it happens, not only in the
    summary at the end: a GPU session's time limit can cut a run off before that summary (it did)."""
    if report.failed and os.environ.get("ARROWS_TEST_INSTAFAIL") == "1":
        sys.stderr.write(f"\n{report.nodeid} FAILED ({report.when}):\n{report.longreprtext}\n")
        sys.stderr.flush()


def pytest_runtest_setup(item):
    """A test marked `alone` fills the GPU's memory: beside it, another worker's CUDA test (the
    README's `pytest -n 2`) would run out of memory too. Under pytest-xdist it is skipped, saying how
    to run it; bench/gpu_session.sh runs it by itself after the others."""
    if item.get_closest_marker("alone") and int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        pytest.skip("fills the GPU's memory, which tests beside it need: run it by itself, "
                    "without -n (pytest -m alone tests/test_cuda.py)")


def triton_kernel_test_device() -> str:
    """The device the tests of arrows' Triton kernels run on: "cuda" where there is one, else "cpu"
    with Triton's interpreter switched on. Call at the top of such a test module, before Triton is
    imported: Triton reads TRITON_INTERPRET when it is imported, and the variable stays set (nothing
    else in the tests runs Triton on a CPU: torch.compile there generates C++)."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        # Something imported while pytest collected the tests pulled Triton in already, so the
        # interpreter cannot be switched on: fail loudly rather than run or skip the tests wrongly.
        pytest.fail("triton was imported before TRITON_INTERPRET could be set; some module imports it at import time "
                    "(a module-level torch.compiler.disable does)", pytrace=False)
    os.environ["TRITON_INTERPRET"] = "1"
    return "cpu"


@pytest.fixture
def shared_data() -> Path:
    """The real texts beside the project; a user's clone has none, and those tests skip."""
    if not (SHARED_DATA / "debian_reference_en.txt").exists():
        pytest.skip("../shared/data is not beside the project")
    return SHARED_DATA


@pytest.fixture
def drawn_figures(monkeypatch):
    """`drawn_figures(module)`: from then on, each figure that `module`'s plotting finishes (its
    `finish_figure`, which saves the PNG) is recorded by file name, as its figure, axes and y label,
    to be inspected after it was drawn."""
    from types import SimpleNamespace

    def watch(module) -> dict:
        drawn = {}
        real_finish = module.finish_figure

        def finish(plt, fig, ax, path, xlabel, ylabel, *args, **kwargs):
            real_finish(plt, fig, ax, path, xlabel, ylabel, *args, **kwargs)
            drawn[path.name] = SimpleNamespace(fig=fig, ax=ax, ylabel=ylabel)

        monkeypatch.setattr(module, "finish_figure", finish)
        return drawn

    return watch


def arrows(*args, check=True, env=None, **kw) -> subprocess.CompletedProcess:
    """Run the installed `arrows` command as a user would."""
    full_env = {**os.environ, **(env or {})}
    kw.setdefault("timeout", 900)  # a hang fails the test instead of blocking the suite
    proc = subprocess.run([str(ARROWS), *map(str, args)], capture_output=True, text=True, env=full_env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"arrows {' '.join(map(str, args))} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def random_text(seed: int, nbytes: int, specials: bool = True) -> str:
    """Words, numbers, punctuation, all sorts of whitespace, non-ASCII; and, unless
    `specials=False`, the literal `<|endoftext|>` (which tokenizers encode as the special id 0)."""
    import random

    rng = random.Random(seed)
    words = ["the", "arrow", "of", "time", "café", "naïve", "日本語", "x", "42", "3.14", "don't", "it's", "—", "!!", "Ωμέγα"]
    if specials:
        words.append("<|endoftext|>")
    seps = [" ", " ", " ", "  ", "\n", "\t", "\n\n", "\u00a0", "", "\r\n"]
    out, size = [], 0
    while size < nbytes:
        w = rng.choice(words) + rng.choice(seps)
        out.append(w)
        size += len(w.encode())
    return "".join(out)
