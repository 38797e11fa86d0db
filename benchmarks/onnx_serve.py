"""The peer `serve_load.py --vs onnxruntime` measures `cnn serve` against: the run's ONNX export
(`cnn export RUN --format onnx`) behind the smallest FastAPI app a user would write to serve it.

    python benchmarks/onnx_serve.py MODEL.onnx PORT

POST /predict takes one image as the raw body and answers {"results": [{"class", "probability"}]}
(the shape of `cnn serve`'s answer, so the same load generator checks both); GET /health. The image
is decoded by Pillow, converted to the channels the model takes and resized to its input (bilinear);
the export holds the normalisation, the test-time views and the calibration. A body Pillow cannot
read is a 400. One onnxruntime call per request, in FastAPI's thread pool: what the tutorials do.
"""

import io
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

path, port = sys.argv[1], int(sys.argv[2])
meta = json.loads({p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}["cnn"])
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
_, h, w, c = meta["input"]["shape"]
mode, classes = ("L" if c == 1 else "RGB"), meta["classes"]
app = FastAPI()


def run(data: bytes):
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # noqa: BLE001 - not an image: the client's fault
        return JSONResponse({"error": f"not an image ({type(e).__name__})"}, status_code=400)
    x = np.asarray(img.convert(mode).resize((w, h), Image.BILINEAR), np.uint8).reshape(1, h, w, c)
    p = session.run(None, {session.get_inputs()[0].name: x})[0][0]
    best = int(np.argmax(p))
    return {"results": [{"class": classes[best], "probability": float(p[best])}]}


@app.post("/predict")
async def predict(request: Request):
    data = await request.body()
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(run, data)


@app.get("/health")
async def health():
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
