"""Byte ranges against the end of the file, on both backends, buffered and O_DIRECT.

The rule: a range must end within the file.  A range that starts exactly at the end is
an empty read (``5:5`` or ``5:`` of a 5-byte file, ``0:0`` of an empty one); a range that
starts past the end fails with :class:`RangePastEOFError`, even when it is 0 bytes long;
``last(n)`` needs at least ``n`` bytes.  Every such error names the path, the request as
asked and the file length."""

from __future__ import annotations

import pytest

from lsio_ray import ByteRange, OpGroup, RangePastEOFError, get_ranges


@pytest.fixture
def five_and_empty(tmp_path):
    five = tmp_path / "five"
    five.write_bytes(b"hello")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    return five, empty


def _chunks(eng, path, ranges, direct):
    return eng.submit(OpGroup([get_ranges(path, ranges, direct=direct)]), errors="return").collect()


@pytest.mark.parametrize(
    ("which", "ranges"),
    [
        ("five", [(10, 10)]),  # alone: no size lookup for explicit ranges
        ("five", [(6, 6)]),
        ("empty", [(1, 1)]),
        ("five", [(0, 2), (10, 10)]),
    ],
)
def test_empty_range_past_eof_fails(make_engine, five_and_empty, direct, which, ranges):
    path = five_and_empty[0] if which == "five" else five_and_empty[1]
    size = path.stat().st_size
    eng = make_engine()
    chunks = _chunks(eng, path, ranges, direct)
    start, end = ranges[-1]
    bad = chunks[-1]
    assert not bad.ok, f"{start}:{end} of a {size}-byte file must fail"
    err = bad.error
    assert isinstance(err, RangePastEOFError) and isinstance(err, EOFError)
    assert (err.path, err.start, err.end, err.file_size) == (str(path), start, end, size)
    msg = str(err)
    assert str(path) in msg and f"{start}..{end}" in msg and f"file length {size} bytes" in msg
    assert all(c.ok for c in chunks[:-1])
    with pytest.raises(RangePastEOFError):
        bad.data  # noqa: B018
    assert eng.stats()["buffers_out"] == len(chunks) - 1


@pytest.mark.parametrize(
    ("which", "rng", "want"),
    [
        ("five", (5, 5), b""),
        ("five", (0, 0), b""),
        ("five", ByteRange(5), b""),
        ("five", ByteRange(2), b"llo"),
        ("five", ByteRange.last(5), b"hello"),
        ("empty", (0, 0), b""),
        ("empty", ByteRange(0), b""),
        ("empty", ByteRange(), b""),
    ],
)
def test_ranges_ending_at_eof_read(make_engine, five_and_empty, direct, which, rng, want):
    path = five_and_empty[0] if which == "five" else five_and_empty[1]
    eng = make_engine()
    (c,) = _chunks(eng, path, [rng], direct)
    assert c.ok, c.error
    assert c.tobytes() == want


@pytest.mark.parametrize("which", ["five", "empty"])
def test_last_n_of_a_shorter_file_names_the_request(make_engine, five_and_empty, direct, which):
    path = five_and_empty[0] if which == "five" else five_and_empty[1]
    size = path.stat().st_size
    eng = make_engine()
    (c,) = _chunks(eng, path, [ByteRange.last(10)], direct)
    err = c.error
    assert isinstance(err, RangePastEOFError)
    msg = str(err)
    assert str(path) in msg and "last 10 bytes" in msg and f"file length {size} bytes" in msg
    rest = msg.replace(str(path), "")  # (the temporary path may hold e.g. "pytest-105")
    assert "-10" not in rest and f"-{10 - size}" not in rest, msg  # no negative range
    assert (err.path, err.last, err.file_size) == (str(path), 10, size)


def test_offset_to_end_past_eof_names_the_request(make_engine, five_and_empty, direct):
    five, _ = five_and_empty
    eng = make_engine()
    (c,) = _chunks(eng, five, [ByteRange.from_offset(6)], direct)
    err = c.error
    assert isinstance(err, RangePastEOFError)
    assert (err.start, err.end, err.file_size) == (6, None, 5)
    msg = str(err)
    assert str(five) in msg and "6.. (to the end)" in msg and "file length 5 bytes" in msg
    assert "-1" not in msg.replace(str(five), ""), msg


def test_engine_read_past_eof_raises(make_engine, five_and_empty):
    five, empty = five_and_empty
    eng = make_engine()
    assert eng.read(five, 5, 5) == b"" and eng.read(empty, 0, 0) == b""
    with pytest.raises(RangePastEOFError, match=r"7\.\.7 starts past the end"):
        eng.read(five, 7, 7)
    with pytest.raises(RangePastEOFError, match="file length 0 bytes"):
        eng.read(empty, 1)
