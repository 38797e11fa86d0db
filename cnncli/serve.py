"""`cnn serve`: a trained run (or an export) behind HTTP, on FastAPI and uvicorn.

`create_app(model)` builds the service around a loaded model (FastAPI's tutorial layout), so tests
call it in-process with its TestClient; `serve` only adds `uvicorn.run`, which stops cleanly on
Ctrl-C and SIGTERM.

Routes: POST /predict (one image as the raw body, or several as multipart form files), POST
/explain (the saliency picture of `cnn explain`, PNG), GET /health, GET /model (the run's summary,
`export.metadata`), GET / (a page to drop photos on; everything it loads is served from here).

Images are decoded and prepared exactly as `cnn predict` prepares files (`predict.prepare`), in
FastAPI's thread pool. Concurrent requests meet in the `Batcher`: one worker thread runs whatever
has arrived within `max_wait_ms` (up to `max_batch` images) as one jitted call, its batch padded
to a power of two so that only a few shapes ever compile. A bad input costs its own request only:
a 4xx with the line `cnn predict` prints for that file; nothing reaches a client as a traceback.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations (Request) at run time.

import asyncio
import signal
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import CnnError

PAGE = Path(__file__).with_name("static") / "index.html"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
MAX_FILES = 64  # form files per request: more is a client bug, not a use


class Batcher:
    """Collects the images of concurrent requests and runs them as one call on one worker thread."""

    def __init__(self, model, max_batch: int = 32, max_wait_ms: float = 5.0):
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait_ms / 1000
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="cnn-batch")  # one call at a time: JAX uses the cores
        self.queue: asyncio.Queue | None = None
        self.task = None
        self.batches = self.images = 0  # for /health: how well requests are being batched

    async def start(self, warm: bool = False) -> None:
        self.queue = asyncio.Queue()
        if warm:  # compile every batch shape before the first request, not during it
            await asyncio.get_running_loop().run_in_executor(self.pool, self._warm)
        self.task = asyncio.create_task(self._work())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.pool.shutdown(wait=True)

    async def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities of the uint8 batch `x`, computed together with other requests' images."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((x, future))
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            n = len(items[0][0])
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                items.append(item)
                n += len(item[0])
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


def bucket(n: int) -> int:
    """The power of two at or above n."""
    return 1 << max(0, n - 1).bit_length()


def create_app(model, *, info: dict | None = None, max_batch: int = 32, max_wait_ms: float = 5.0,
               max_upload_mb: float = 20.0, top_k: int = 3, warm: bool = False):
    """The FastAPI app serving `model` (a `Run` or an `export.Exported`); `info` is GET /model's body."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    from . import predict as P

    batcher = Batcher(model, max_batch, max_wait_ms)
    limit = int(max_upload_mb * 1024 * 1024)
    explain_lock = threading.Lock()  # matplotlib's pyplot (the explain picture) is not thread-safe

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start(warm)
        yield
        await batcher.stop()

    app = FastAPI(title="cnn", summary="Image classification with a cnn run", lifespan=lifespan)

    def error(status: int, message: str, **extra):
        return JSONResponse({"error": message, **extra}, status_code=status)

    @app.exception_handler(Exception)
    async def internal(request, exc):  # a bug: logged here with its traceback, one line to the client
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
        return error(500, f"internal error ({type(exc).__name__}); the server goes on")

    async def uploads(request: Request) -> list[tuple[str, bytes]] | JSONResponse:
        """(name, bytes) of each image sent: the raw body, or every file of a multipart form."""
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > limit:
            return error(413, f"request of {int(size) / 2**20:.1f} MB is over the {max_upload_mb:g} MB limit "
                              "(--max-upload-mb)")
        body = bytearray()
        async for chunk in request.stream():  # counted as it arrives: a body without a length cannot exceed either
            body += chunk
            if len(body) > limit:
                return error(413, f"request is over the {max_upload_mb:g} MB limit (--max-upload-mb)")
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            request._body = bytes(body)  # Starlette's form parser reads the body it finds here
            try:
                form = await request.form(max_files=MAX_FILES)
            except Exception as e:
                return error(400, f"bad multipart form ({str(e)[:80]})")
            files = [(v.filename or k, await v.read()) for k, v in form.multi_items() if hasattr(v, "read")]
            if not files:
                return error(400, "empty request: send image files in the form (or an image as the body)")
            return files
        if not body:
            return error(400, "empty request: send an image as the body (or files in a multipart form)")
        return [(request.headers.get("x-filename") or "image", bytes(body))]

    def prepare(files, invert):
        out = []
        for name, data in files:
            try:
                out.append(P.prepare(data, model, invert))
            except CnnError as e:
                out.append(str(e))
        return out

    @app.post("/predict")
    async def predict(request: Request, top_k: int = top_k, invert: str = "auto"):
        """Classify one or several images; per image {file, class, probability, top_k, note} or {file, error}."""
        if invert not in P.INVERT_CHOICES:
            return error(400, f"invert must be one of {', '.join(P.INVERT_CHOICES)}, not {invert!r}")
        if top_k < 1:
            return error(400, "top_k must be at least 1")
        files = await uploads(request)
        if isinstance(files, JSONResponse):
            return files
        prepared = await run_in_threadpool(prepare, files, invert)
        good = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
        probs = P.calibrated(model, await batcher.probabilities(np.stack([prepared[i].x for i in good]))) if good else None
        row = {i: r for r, i in enumerate(good)}
        results = [{"file": name, "error": p} if isinstance(p, str) else
                   P.result(model, name, probs[row[i]], p.notes, top_k)
                   for i, ((name, _), p) in enumerate(zip(files, prepared))]
        if not good:  # nothing could be classified: the client's input, and the line `cnn predict` prints
            first = results[0]
            return error(400, f"{first['file']}: {first['error']}", results=results)
        return {"results": results}

    @app.post("/explain")
    async def explain(request: Request, invert: str = "auto"):
        """The saliency picture `cnn explain` draws, as PNG, for one image."""
        if not hasattr(model, "model"):
            return error(501, "saliency maps need the run directory (serve the run, not an export)")
        files = await uploads(request)
        if isinstance(files, JSONResponse):
            return files
        name, data = files[0]
        try:
            png = await run_in_threadpool(_explain_png, model, name, data, invert, explain_lock)
        except CnnError as e:  # the reason alone: the message of a file would name the temporary copy
            return error(400, f"{name}: {getattr(e, 'reason', None) or e}")
        return Response(png, media_type="image/png")

    @app.get("/health")
    async def health():
        return {"status": "ok", "batches": batcher.batches, "images": batcher.images}

    @app.get("/model")
    async def model_info():
        return {**(info or {}), "serving": {"max_batch": max_batch, "max_wait_ms": max_wait_ms,
                                            "max_upload_mb": max_upload_mb, "saliency": hasattr(model, "model")}}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text()

    return app


def _explain_png(run, name: str, data: bytes, invert: str, lock) -> bytes:
    """`explain.explain` on the upload (it reads and writes files: temporary ones here)."""
    from .explain import explain

    with tempfile.TemporaryDirectory() as d:
        image = Path(d) / (Path(name).name or "image")
        image.write_bytes(data)
        with lock:
            r = explain(run, image, str(Path(d) / "saliency.png"), invert)
        return Path(r["png"]).read_bytes()


def model_info(model, checkpoint: str = "best") -> dict:
    """GET /model's body: the export's metadata, or the same document made from a run directory."""
    if hasattr(model, "meta"):
        return dict(model.meta)
    from .evaluate import _checkpoint_used
    from .export import metadata

    used, epoch = _checkpoint_used(Path(model.dir), checkpoint)
    return metadata(model, used, epoch)


def require() -> None:
    """One line naming the extra when the serving stack is not installed."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise CnnError(f"cnn serve needs {', '.join(missing)}: pip install -e '.[serve]'")


def serve(model, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, checkpoint: str = "best",
          say=print, **options) -> None:
    """Serve `model` until Ctrl-C or SIGTERM (uvicorn handles both and finishes open requests)."""
    import uvicorn

    app = create_app(model, info=model_info(model, checkpoint), warm=True, **options)
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
