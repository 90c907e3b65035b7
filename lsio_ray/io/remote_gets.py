"""How one request of the remote backend runs on obstore (:mod:`lsio_ray.io.remote`):
its GET -- one future for a whole object or a byte range, two for a suffix or a read
from an offset --, the PUT of a whole object, and the rare paths a failure takes (a
suffix GET the store refuses, a range past the end, a store that ignores ranges).

:class:`Requests` is a part of :class:`lsio_ray.io.remote.RemoteBackend`, which owns
the queues, the landed buffers and the completions; its methods run on the backend's
event-loop thread.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

from lsio_ray.io import url
from lsio_ray.io._core import view
from lsio_ray.io.remote_parts import Request as _Request
from lsio_ray.io.stores import describe, errno_of, store_for

#: the end of a whole-object GET's range (``bytes=0-(2**62-1)``): past any object's end
_WHOLE = 1 << 62


class Requests:
    """The request-running part of the remote backend (see the module's docstring)."""

    if TYPE_CHECKING:  # what the backend provides
        settings: dict[str, Any]
        counters: dict[str, int]
        _no_whole_range: set[str]

        def _end(self, req: _Request) -> None: ...
        def _fail(self, req: _Request, err: int, detail: str) -> None: ...
        def _fail_safe(self, req: _Request, exc: BaseException) -> None: ...
        def _abort(self, req: _Request, exc: BaseException) -> None: ...
        def _finish(self, req: _Request, rows: list[Any] | None) -> None: ...
        def _land(self, req: _Request, buf: Any, got_start: int, n: int, size: int) -> None: ...
        def _past_end(self, req: _Request, size: int) -> None: ...
        def _spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...

    def _get(self, req: _Request) -> bool:
        """Start a read's GET; False when it is done already (nothing to fetch)."""
        import obstore

        store_url, key = url.split(req.url)
        store = store_for(store_url, self.settings)
        if req.end == req.start >= 0:  # only empty ranges (one offset): no bytes to fetch
            if req.start == 0:  # never past the end
                self._finish(req, [(t, 0, 0, o, 0, -1, 0) for t, o, _ln in req.rows])
                return False
            self._spawn(self._empty_at(req, store, key))  # past the end? a HEAD tells
            return True
        self.counters["remote_requests"] += 1
        if req.start == 0 and req.end < 0 and store_url not in self._no_whole_range:
            # a whole object: one future, not two
            fut = obstore.get_range_async(store, key, start=0, end=_WHOLE)
            fut.add_done_callback(partial(self._got_whole, req, store, key, store_url))
            return True
        if 0 <= req.start < req.end:  # a byte range: one future as well
            fut = obstore.get_range_async(store, key, start=req.start, end=req.end)
            fut.add_done_callback(partial(self._got_range, req, store, key))
            return True
        self._get_two(req, store, key)
        return True

    def _got_range(self, req: _Request, store: Any, key: str, fut: asyncio.Future[Any]) -> None:
        """A byte range's body.  Its object's size is not asked (as for a local file's
        explicit range: unknown, -1) unless the store sent fewer bytes than asked, which
        object_store does only when the range runs past the object's end (RFC 9110
        14.1.2): then the object ends where the body does.  A range starting past the
        end fails (416) and is reported by :meth:`_rescue`, as a plain GET's.  An empty
        range among the rows lies inside the bytes sent, so inside the object."""
        asked = req.end - req.start
        self._body(
            req,
            fut,
            partial(self._rescue_soon, req, store, key, True),
            lambda n: (req.start, -1 if n == asked else req.start + n),
        )

    def _body(
        self,
        req: _Request,
        fut: asyncio.Future[Any],
        failed: Callable[[BaseException], None],
        where: Callable[[int], tuple[int, int]],
    ) -> None:
        """A GET's body arrived: land it (``where(n)``: the first byte's offset and the
        object's size, -1 if not known, for a body of ``n`` bytes), or hand its error to
        ``failed``, which takes the request over."""
        try:
            exc = fut.exception()
            if exc is not None:
                failed(exc)
                return
            buf = fut.result()
            n = len(buf)
            self.counters["remote_bytes_transferred"] += n
            start, size = where(n)
            self._land(req, buf, start, n, size)
        except BaseException as exc:
            self._abort(req, exc)
            return
        self._end(req)

    def _rescue_soon(
        self, req: _Request, store: Any, key: str, at_head: bool, exc: BaseException
    ) -> None:
        self._spawn(self._rescue(req, store, key, exc, at_head))

    def _get_two(self, req: _Request, store: Any, key: str, refused: str = "") -> None:
        """A GET as two obstore futures: the answer (its range and the object's size),
        then its body.  ``refused``: the store URL whose whole-range GET of this object
        failed (see :meth:`_got_whole`)."""
        import obstore

        if req.start < 0:
            options: dict[str, Any] | None = {"range": {"suffix": -req.start}}
        elif req.end < 0:
            options = {"range": {"offset": req.start}} if req.start else None
        else:
            options = {"range": (req.start, req.end)}
        fut = obstore.get_async(store, key, options=options)
        fut.add_done_callback(partial(self._got_head, req, store, key, refused))

    def _got_whole(
        self, req: _Request, store: Any, key: str, store_url: str, fut: asyncio.Future[Any]
    ) -> None:
        """A whole object read as ``bytes=0-(2**62-1)``: a store answers with the object
        (clamped to its end, RFC 9110 14.1.2), so its size is the length of the body.
        Each whole-object GET costs one future and one loop wake-up instead of two (over
        HTTP at 0 ms, crops of an array of 80 KB chunk objects took 6.6 ms of CPU per MiB
        with two, 5.7-6.2 with one: BENCHMARKS.md).  A missing object fails as a plain
        GET would; any other refusal -- an empty object has no byte 0 (S3 answers 416,
        nginx 200), a server that ignores ranges answers 200, and object_store refuses a
        200 to a ranged GET -- takes the plain GET, and a store that refused a non-empty
        object gets plain GETs from then on."""
        self._body(
            req, fut, partial(self._whole_refused, req, store, key, store_url), lambda n: (0, n)
        )

    def _whole_refused(
        self, req: _Request, store: Any, key: str, store_url: str, exc: BaseException
    ) -> None:
        from obstore.exceptions import NotFoundError

        if isinstance(exc, (FileNotFoundError, NotFoundError)):
            self._rescue_soon(req, store, key, True, exc)
            return
        self.counters["remote_requests"] += 1
        self._get_two(req, store, key, refused=store_url)

    def _got_head(
        self, req: _Request, store: Any, key: str, refused: str, fut: asyncio.Future[Any]
    ) -> None:
        try:
            exc = fut.exception()
            if exc is not None:
                self._rescue_soon(req, store, key, True, exc)
                return
            res = fut.result()
            if refused and int(res.meta["size"]) > 0:  # not the empty object's refusal
                self._no_whole_range.add(refused)
            res.bytes_async().add_done_callback(partial(self._got_body, req, store, key, res))
        except BaseException as exc:
            self._abort(req, exc)

    def _got_body(
        self, req: _Request, store: Any, key: str, res: Any, fut: asyncio.Future[Any]
    ) -> None:
        self._body(
            req,
            fut,
            partial(self._rescue_soon, req, store, key, False),
            lambda n: (int(res.range[0]), int(res.meta["size"])),
        )

    async def _rescue(
        self, req: _Request, store: Any, key: str, exc: BaseException, at_head: bool
    ) -> None:
        """A GET that failed: a suffix GET the store refuses (Azure) is a HEAD and a
        ranged GET; a range past the end completes as such; else the error."""
        try:
            from obstore.exceptions import NotSupportedError

            if at_head and req.start < 0 and isinstance(exc, NotSupportedError):
                await self._suffix_by_head(req, store, key)
                return
            if isinstance(exc, Exception):
                size = await self._size_if_past_end(store, key, req, exc)
                if size is not None:
                    self._past_end(req, size)
                    return
            self._fail(req, errno_of(exc), describe(exc))
        except BaseException as exc2:
            self._fail_safe(req, exc2)
        finally:
            self._end(req)

    async def _suffix_by_head(self, req: _Request, store: Any, key: str) -> None:
        import obstore

        try:
            size = int((await obstore.head_async(store, key))["size"])
            self.counters["remote_requests"] += 1
            start = max(0, size + req.start)
            options = {"range": (start, size)} if start < size else None
            res = await obstore.get_async(store, key, options=options)
            buf = await res.bytes_async()
        except Exception as exc:
            self._fail(req, errno_of(exc), describe(exc))
            return
        n = len(buf)
        self.counters["remote_bytes_transferred"] += n
        self._land(req, buf, int(res.range[0]), n, int(res.meta["size"]))

    async def _empty_at(self, req: _Request, store: Any, key: str) -> None:
        """Empty ranges at one offset past 0 and nothing else: a HEAD tells whether the
        offset is past the object's end (it fails like any range starting there)."""
        import obstore

        self.counters["remote_requests"] += 1
        try:
            size = int((await obstore.head_async(store, key))["size"])
            if req.start > size:
                self._past_end(req, size)
            else:
                self._finish(req, [(t, 0, 0, o, 0, size, 0) for t, o, _ln in req.rows])
        except Exception as exc:
            self._fail(req, errno_of(exc), describe(exc))
        except BaseException as exc:
            self._fail_safe(req, exc)
        finally:
            self._end(req)

    async def _size_if_past_end(
        self, store: Any, key: str, req: _Request, exc: Exception
    ) -> int | None:
        """The object's size when a ranged GET failed because the range starts past its
        end (HTTP 416), else None."""
        text = str(exc)
        if req.start <= 0 or ("416" not in text and "Range" not in text and "range" not in text):
            return None
        import obstore

        try:
            meta = await obstore.head_async(store, key)
        except Exception:
            return None
        size = int(meta["size"])
        return size if req.start >= size else None

    async def _write(self, req: _Request) -> None:
        try:
            await self._put(req)
        except BaseException as exc:
            self._fail_safe(req, exc)
        finally:
            self._end(req)

    async def _put(self, req: _Request) -> None:
        import obstore

        store_url, key = url.split(req.url)
        if not key or key.endswith("/"):
            self._fail(req, -errno.EISDIR, "a URL ending in '/' names a prefix, not an object")
            return
        store = store_for(store_url, self.settings)
        data = memoryview(view(req.data, req.nbytes)) if req.nbytes else b""
        self.counters["remote_requests"] += 1
        try:
            await obstore.put_async(store, key, data)
        except Exception as exc:
            self._fail(req, errno_of(exc), describe(exc))
            return
        tag, _off, ln = req.rows[0]
        self.counters["remote_bytes_transferred"] += req.nbytes
        self._finish(req, [(tag, 0, 0, 0, ln, req.nbytes, 0)])

    # -- results -------------------------------------------------------------------------
