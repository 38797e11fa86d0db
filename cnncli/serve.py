"""`cnn serve`: a trained run (or an export) behind HTTP, on FastAPI and uvicorn.

`create_app(model)` builds the service around a loaded model (FastAPI's tutorial layout), so tests
call it in-process with its TestClient; `serve` only adds `uvicorn.run`, which stops cleanly on
Ctrl-C and SIGTERM.

Routes: POST /predict (one image as the raw body, or several as multipart form files), POST
/explain (the saliency picture of `cnn explain`, PNG), GET /health, GET /model (the run's summary,
`export.metadata`), GET / (a page to drop photos on; everything it loads is served from here).

Images are decoded and prepared exactly as `cnn predict` prepares files (`predict.prepare`): a
thumbnail on the event loop, a photo in the thread pool. POST /predict bypasses FastAPI's request
machinery (see `service`); the other routes are plain FastAPI. Concurrent requests meet in the `Batcher`: one worker thread runs whatever
has arrived within `max_wait_ms` (up to `max_batch` images) as one jitted call, its batch padded
to a power of two so that only a few shapes ever compile. A bad input costs its own request only:
a 4xx with the line `cnn predict` prints for that file; nothing reaches a client as a traceback.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations (Request) at run time.

import asyncio
import contextlib
import io
import signal
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CnnError

PAGE = Path(__file__).with_name("static") / "index.html"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
MAX_FILES = 64  # form files per request: more is a client bug, not a use
QUICK_BYTES, QUICK_PIXELS = 64 * 1024, 256 * 256  # an image this small is decoded on the event loop


class Batcher:
    """Collects the images of concurrent requests and runs them as one call on one worker thread.

    A call starts as soon as the worker is free and nothing more is on its way: `max_batch` images
    are waiting, or every request the server has begun (`arriving`) has queued its images and the
    event loop has had a turn to read more, or `max_wait_ms` have passed since the first one. Waiting
    the full time whenever fewer than `max_batch` clients are connected would cap throughput at a
    batch per `max_wait_ms`; images that arrive while a call runs form the next one.
    """

    def __init__(self, model, max_batch: int = 32, max_wait_ms: float = 5.0):
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait_ms / 1000
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="cnn-batch")  # one call at a time: JAX uses the cores
        self.pending: list = []  # (images, future) in arrival order
        self.waiting = 0  # images in `pending`
        self.arriving = 0  # requests begun (`expect`) that have not queued their images yet
        self.wake: asyncio.Event | None = None
        self.task = None
        self.batches = self.images = 0  # for /health: how well requests are being batched
        self.ready = False  # every batch shape compiled (`start`)

    async def start(self, warm: bool = False) -> None:
        self.wake = asyncio.Event()
        self.ready = not warm
        if warm:
            # Compile every batch shape before requests need it, in the background: on a new machine
            # that also measures the layers' forms (over a minute on a busy 2-core host, #43), and the
            # server answers /health ("ready": false) meanwhile; a request waits behind the warm-up.
            done = asyncio.get_running_loop().run_in_executor(self.pool, self._warm)
            done.add_done_callback(self._warmed)
        self.task = asyncio.create_task(self._work())

    def _warmed(self, future) -> None:
        self.ready = True
        if not future.cancelled() and future.exception() is not None:  # the first request will say it
            print(f"note: warming up failed ({future.exception()})", file=sys.stderr)

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.pool.shutdown(wait=True)

    @contextlib.contextmanager
    def expect(self):
        """Around a request's reading and decoding: the next call waits for its images (or its error)."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    def submit(self, x: np.ndarray) -> asyncio.Future:
        """The future class probabilities of the uint8 batch `x`, computed with other requests' images."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((x, future))
        self.waiting += len(x)
        self.wake.set()
        return future

    async def probabilities(self, x: np.ndarray) -> np.ndarray:
        return await self.submit(x)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            deadline = loop.time() + self.max_wait
            seen = -1
            # A turn of the loop (sleep(0)) lets requests whose bytes are already here reach the queue.
            while self.waiting < self.max_batch and loop.time() < deadline and (self.arriving or seen != self.waiting):
                seen = self.waiting
                await asyncio.sleep(0 if not self.arriving else min(2e-4, max(0.0, deadline - loop.time())))
            items, n = [], 0
            while self.pending and (not items or n + len(self.pending[0][0]) <= self.max_batch):
                items.append(self.pending.pop(0))
                n += len(items[-1][0])
            self.waiting -= n
            if not self.pending:
                self.wake.clear()
            try:
                probs = await loop.run_in_executor(self.pool, self._run, np.concatenate([x for x, _ in items]))
            except Exception as e:  # a failed call fails its requests, not the worker
                for _, future in items:
                    if not future.done():
                        future.set_exception(e)
                continue
            start = 0
            for x, future in items:
                if not future.done():  # its client may have gone
                    future.set_result(probs[start : start + len(x)])
                start += len(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        self.batches, self.images = self.batches + 1, self.images + n
        size = min(self.max_batch, bucket(n))
        if n < size:  # pad to the bucket so the jitted call sees one of a few shapes
            x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
        return self.model.probabilities(x, batch_size=size)[:n]

    def _warm(self) -> None:
        size = 1
        while True:
            self.model.probabilities(np.zeros((size, *self.model.input_shape), np.uint8), batch_size=size)
            if size >= self.max_batch:
                break
            size = min(self.max_batch, size * 2)


def _quick(data: bytes) -> bool:
    """Whether `data` decodes in well under a millisecond: few bytes and, by its header, few pixels."""
    if len(data) > QUICK_BYTES:
        return False
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.width * im.height <= QUICK_PIXELS
    except Exception:  # not an image Pillow knows: `prepare` refuses it as quickly
        return True


def bucket(n: int) -> int:
    """The power of two at or above n."""
    return 1 << max(0, n - 1).bit_length()


def create_app(model, *, info: dict | None = None, max_batch: int = 32, max_wait_ms: float = 5.0,
               max_upload_mb: float = 20.0, top_k: int = 3, warm: bool = False):
    """The FastAPI app serving `model` (a `Run` or an `exported.Exported`); `info` is GET /model's body."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    batcher = Batcher(model, max_batch, max_wait_ms)
    limit = Limit(int(max_upload_mb * 1024 * 1024), max_upload_mb)
    explain_lock = threading.Lock()  # matplotlib's pyplot (the explain picture) is not thread-safe

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start(warm)
        yield
        await batcher.stop()

    app = FastAPI(title="cnn", summary="Image classification with a cnn run", lifespan=lifespan)

    @app.exception_handler(Exception)
    async def internal(request, exc):  # a bug: logged here with its traceback, one line to the client
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
        return _error(500, f"internal error ({type(exc).__name__}); the server goes on")

    @app.post("/explain")
    async def explain(request: Request, invert: str = "auto"):
        """The saliency picture `cnn explain` draws, as PNG, for one image."""
        if not hasattr(model, "model"):
            return _error(501, "saliency maps need the run directory (serve the run, not an export)")
        files = await _uploads(request, limit)
        if isinstance(files, JSONResponse):
            return files
        name, data = files[0]
        try:
            png = await run_in_threadpool(_explain_png, model, name, data, invert, explain_lock)
        except CnnError as e:  # the reason alone: the message of a file would name the temporary copy
            return _error(400, f"{name}: {getattr(e, 'reason', None) or e}")
        return Response(png, media_type="image/png")

    @app.get("/health")
    async def health():
        return {"status": "ok", "ready": batcher.ready, "batches": batcher.batches, "images": batcher.images}

    @app.get("/model")
    async def model_info():
        return {**(info or {}), "serving": {"max_batch": max_batch, "max_wait_ms": max_wait_ms,
                                            "max_upload_mb": max_upload_mb, "saliency": hasattr(model, "model")}}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text()

    return _direct_predict(app, lambda request: _predict(request, model, batcher, limit, top_k), internal)


def _direct_predict(app, predict, internal):
    """The ASGI app served: POST /predict, the route under load, goes straight to `predict`: FastAPI's
    per-request machinery (its middleware stack, parameter validation, response encoding) cost more than
    the model's share of a one-image request. Everything else is FastAPI's `app`."""
    from fastapi import Request

    async def service(scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/predict" or scope["method"] != "POST":
            return await app(scope, receive, send)
        started = False

        async def sending(message):
            nonlocal started
            started = True
            await send(message)

        try:
            response = await predict(Request(scope, receive))
        except Exception as e:
            response = await internal(None, e)
        if not started:
            await response(scope, receive, sending)

    service.api = app  # the FastAPI app itself (its routes, its OpenAPI document)
    return service


@dataclass(frozen=True)
class Limit:
    """The largest request body accepted (--max-upload-mb), in bytes and as the user gave it."""

    bytes: int
    mb: float


def _error(status: int, message: str, **extra):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, **extra}, status_code=status)


async def _uploads(request, limit: Limit):
    """(name, bytes) of each image sent: the raw body, or every file of a multipart form; or the
    4xx response saying what is wrong with the request."""
    size = request.headers.get("content-length")
    if size and size.isdigit() and int(size) > limit.bytes:
        return _error(413, f"request of {int(size) / 2**20:.1f} MB is over the {limit.mb:g} MB limit "
                           "(--max-upload-mb)")
    body = bytearray()
    async for chunk in request.stream():  # counted as it arrives: a body without a length cannot exceed either
        body += chunk
        if len(body) > limit.bytes:
            return _error(413, f"request is over the {limit.mb:g} MB limit (--max-upload-mb)")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        request._body = bytes(body)  # Starlette's form parser reads the body it finds here
        try:
            form = await request.form(max_files=MAX_FILES)
        except Exception as e:
            return _error(400, f"bad multipart form ({str(e)[:80]})")
        files = [(v.filename or k, await v.read()) for k, v in form.multi_items() if hasattr(v, "read")]
        if not files:
            return _error(400, "empty request: send image files in the form (or an image as the body)")
        return files
    if not body:
        return _error(400, "empty request: send an image as the body (or files in a multipart form)")
    return [(request.headers.get("x-filename") or "image", bytes(body))]


def _prepare_all(files, model, invert) -> list:
    """Each upload decoded and fitted to the model's input, or the one-line reason it cannot be."""
    from . import predict as P

    out = []
    for name, data in files:
        try:
            out.append(P.prepare(data, model, invert))
        except CnnError as e:
            out.append(str(e))
    return out


async def _predict(request, model, batcher: "Batcher", limit: Limit, top_k: int):
    """POST /predict: classify one or several images; per image {file, class, probability, top_k, note}
    or {file, error}."""
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from . import predict as P

    invert, k = request.query_params.get("invert", "auto"), request.query_params.get("top_k", str(top_k))
    if invert not in P.INVERT_CHOICES:
        return _error(400, f"invert must be one of {', '.join(P.INVERT_CHOICES)}, not {invert!r}")
    if not k.lstrip("-").isdigit() or int(k) < 1:
        return _error(400, f"top_k must be a whole number of at least 1, not {k!r}")
    files = await _uploads(request, limit)
    if isinstance(files, JSONResponse):
        return files
    with batcher.expect():
        # A thumbnail (an MNIST digit: ~50 us) is decoded here; a thread hop would cost more than
        # that. A photo goes to the thread pool, so that the loop goes on serving meanwhile.
        prepared = _prepare_all(files, model, invert) if all(map(_quick, (d for _, d in files))) else \
            await run_in_threadpool(_prepare_all, files, model, invert)
        good = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
        probs = batcher.submit(np.stack([prepared[i].x for i in good])) if good else None
    probs = P.calibrated(model, await probs) if good else None
    row = {i: r for r, i in enumerate(good)}
    results = [{"file": name, "error": p} if isinstance(p, str) else
               P.result(model, name, probs[row[i]], p.notes, int(k))
               for i, ((name, _), p) in enumerate(zip(files, prepared))]
    if not good:  # nothing could be classified: the client's input, and the line `cnn predict` prints
        first = results[0]
        return _error(400, f"{first['file']}: {first['error']}", results=results)
    return JSONResponse({"results": results})


def _explain_png(run, name: str, data: bytes, invert: str, lock) -> bytes:
    """`explain.explain` on the upload (it reads and writes files: temporary ones here)."""
    from .explain import explain

    with tempfile.TemporaryDirectory() as d:
        image = Path(d) / (Path(name).name or "image")
        image.write_bytes(data)
        with lock:
            r = explain(run, image, str(Path(d) / "saliency.png"), invert)
        return Path(r["png"]).read_bytes()


def model_info(model) -> dict:
    """GET /model's body: the export's metadata, or the same document made from a run directory."""
    if hasattr(model, "meta"):
        return dict(model.meta)
    from .export import metadata

    return metadata(model)


def require() -> None:
    """One line naming the extra when the serving stack is not installed."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise CnnError(f"cnn serve needs {', '.join(missing)}: pip install -e '.[serve]'")


def serve(model, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, say=print, **options) -> None:
    """Serve `model` until Ctrl-C or SIGTERM (uvicorn handles both and finishes open requests)."""
    import uvicorn

    app = create_app(model, info=model_info(model), warm=True, **options)
    where = "only this machine can connect; --host 0.0.0.0 for every interface" if host in (
        "127.0.0.1", "localhost", "::1") else "reachable from other machines"
    say(f"serving {getattr(model, 'path', None) or model.dir} on http://{host}:{port} ({where}); Ctrl-C stops")
    # uvicorn finishes the open requests on SIGINT/SIGTERM, then raises the signal again for the handler
    # it found: a no-op here, so that a stop asked for is a clean exit (0, "stopped"), not a kill.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    say("stopped")
