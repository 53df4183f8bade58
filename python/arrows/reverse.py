"""`arrows reverse`: a whole text reversed character by character (the reference's control).

Streams from the end of the input in blocks, so files larger than memory work. A block may start
inside a multi-byte character: its leading continuation bytes are carried over to the block
before it, so every character is reversed whole and valid UTF-8 stays valid.
"""

from __future__ import annotations

from pathlib import Path

from arrows.errors import InputError, InvalidUtf8Error
from arrows.output_file import atomic_output, check_output_path

BLOCK = 8 << 20


def _is_continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80


def reverse_file(src: Path, dst: Path, *, block: int = BLOCK, reporter=None) -> int:
    """Write `src` reversed to `dst` (atomically: a temporary file renamed at the end).
    Returns the number of bytes. Invalid UTF-8 raises InvalidUtf8Error naming the byte offset."""
    src, dst = Path(src), check_output_path(Path(dst))
    if src.resolve() == dst.resolve():
        raise InputError(f"{src}: the output would overwrite the input; choose another output path")
    size = src.stat().st_size
    done = 0
    with atomic_output(dst, sync=True) as tmp:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            carry = b""  # continuation bytes at the start of the block after this one
            end = size
            while end > 0:
                start = max(0, end - block)
                fin.seek(start)
                data = fin.read(end - start) + carry
                # Leading continuation bytes belong to a character that starts in the block before.
                cut = 0
                while cut < len(data) and cut < 4 and _is_continuation(data[cut]) and start > 0:
                    cut += 1
                carry, data = data[:cut], data[cut:]
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InvalidUtf8Error(
                        f"{src}: invalid UTF-8 at byte {start + cut + e.start:,} ({e.reason}); "
                        f"reversing by character needs valid text (`iconv -f UTF-8 -t UTF-8 -c` drops every such byte; "
                        f"`arrows tokenize --strict-utf8` names the first one of a file)"
                    ) from None
                fout.write(text[::-1].encode("utf-8"))
                done += end - start
                end = start
                if reporter is not None:
                    reporter.update("reversing", done, size, "bytes", final=end == 0)
    return size
