"""airbench94: the whitening conv, the Dirac init, the BatchNorm-shift learning rate, and a real run.

The unit tests use small random inputs; the run trains on 512 real CIFAR-10 images for one epoch
(skipped without $CNN_DATA_DIR) to check what only training shows: the whitening kernel is set
from the data, is never trained, and travels in the checkpoint to `cnn evaluate`.
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cnncli.models import count_params, create_model
from cnncli.models.airbench import _dirac_init, whitening_kernel
from cnncli.runs import checkpoint
from cnncli.train import resolve
from cnncli.train.optim import lookahead, make_optimizer, norm_bias_mask


def _patches(x, size=2):
    w = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))
    return w.transpose(0, 1, 2, 4, 5, 3).reshape(-1, size * size * x.shape[-1])


def test_whitening_kernel_whitens_2x2_patches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 10, 10, 3)).astype(np.float32)
    x[..., 1] += 2 * x[..., 0]  # correlated channels, as colour channels are
    k = whitening_kernel(x)
    assert k.shape == (2, 2, 3, 24)
    out = _patches(x) @ k.reshape(12, 24)
    cov = out[:, :12].T @ out[:, :12] / len(out)
    # Uncorrelated outputs, each of variance lambda / (lambda + eps) (just under 1), largest lambda first.
    lam = np.linalg.eigvalsh(_patches(x).astype(np.float64).T @ _patches(x) / len(out))[::-1]
    np.testing.assert_allclose(cov, np.diag(lam / (lam + 5e-4)), atol=1e-5)
    np.testing.assert_array_equal(k[..., 12:], -k[..., :12])  # the negatives: GELU keeps both signs


def test_dirac_init_passes_the_first_channels_through():
    w = _dirac_init(jax.random.key(0), (3, 3, 4, 6))
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 4))
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(y[..., :4], x, atol=1e-6)
    assert float(jnp.abs(w[..., 4:]).max()) <= 1 / np.sqrt(9 * 4)  # PyTorch's U(+-1/sqrt(fan_in)) elsewhere
    assert float(jnp.abs(w[..., 4:]).min()) > 0


def test_model_counts_the_frozen_kernel_as_not_trainable():
    model = create_model("airbench94", (32, 32, 3), 10)
    total, trainable, frozen = count_params(model)
    # BN shifts only (no scales): 2 x (64 + 256 + 256) biases, and 2 running statistics each.
    assert frozen == 2 * 2 * (64 + 256 + 256) + 2 * 2 * 3 * 24  # + the 2x2x3x24 whitening kernel
    assert trainable == 24 + 9 * (24 * 64 + 64 * 64 + 64 * 256 + 3 * 256 * 256) + 2 * (64 + 256 + 256) + 2560


def test_bn_bias_lr_scales_the_batchnorm_shifts_only():
    model = create_model("airbench94", (32, 32, 3), 10)
    _, params, _ = nnx.split(model, nnx.Param, ...)
    mask = norm_bias_mask(model, params)
    picked = [p for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m]
    assert sorted(p.shape[0] for p in picked) == [64, 64, 256, 256, 256, 256]
    cfg = resolve(dict(arch="airbench94", dataset="cifar10", optimizer="sgd", momentum=0.0, lr=0.1,
                       weight_decay=0.0, schedule="constant", warmup_epochs=0.0, bn_bias_lr=64.0))
    tx = make_optimizer(cfg, 10, None, mask)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for u, m in zip(jax.tree.leaves(updates), jax.tree.leaves(mask)):
        np.testing.assert_allclose(np.asarray(u), -6.4 if m else -0.1, rtol=1e-6)


def test_bn_bias_lr_must_be_positive():
    from cnncli.errors import CnnError

    with pytest.raises(CnnError, match="--bn-bias-lr"):
        resolve(dict(arch="airbench94", dataset="cifar10", bn_bias_lr=0.0)).validate()


def test_training_whitens_from_the_data_and_keeps_the_kernel(tmp_path, data_dir):
    from cnncli.data import load_dataset
    from cnncli.train.prepare import _init_from_data

    r = subprocess.run([sys.executable, "-m", "cnncli.cli", "train", "--arch", "airbench94", "--dataset", "cifar10",
                        "--limit", "512", "--epochs", "1", "--batch-size", "128", "--val-split", "0",
                        "--no-tta-flip", "--tta-shift", "0", "--out", str(tmp_path), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)
    _, arrays = checkpoint.load(Path(run["run_dir"]) / "checkpoints" / "last.msgpack")
    [key] = [k for k in arrays if k.endswith("layers/0/kernel")]
    assert not key.startswith("params/")  # not trained: it lives with the BatchNorm statistics

    # What the engine computed before the first step, rebuilt here: training left it as it was.
    ds = load_dataset("cifar10", data_dir=str(data_dir), val_split=0.0, limit=512, seed=0)
    model = create_model("airbench94", ds.shape, 10, seed=0)
    _init_from_data(model, ds.train.x, ds.mean, ds.std, 0)
    np.testing.assert_array_equal(arrays[key], np.asarray(model.layers[0].kernel[...]))

    ev = subprocess.run([sys.executable, "-m", "cnncli.cli", "evaluate", run["run_dir"], "--checkpoint", "last",
                         "--json"], capture_output=True, text=True)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["accuracy"] == pytest.approx(run["test_accuracy"], abs=1e-6)


def test_lookahead_follows_airbench():
    # airbench's loop on one weight moved by a constant step: every 5 steps
    # ema <- ema + (1 - d) (w - ema), w <- ema, with d = 0.95^5 (t/T)^3; the last step ends on the EMA.
    total, step = 13, 0.5
    w, ema = 1.0, 1.0
    for t in range(1, total + 1):
        w += step
        if t % 5 == 0:
            d = 0.95**5 * (t / total) ** 3
            ema += (1 - d) * (w - ema)
            w = ema
    w = ema
    tx = optax.chain(optax.sgd(-step), lookahead(total))  # sgd(-lr) with gradient 1: a step of +0.5
    params = {"w": jnp.array(1.0)}
    state = tx.init(params)
    for _ in range(total):
        updates, state = tx.update({"w": jnp.array(1.0)}, state, params)
        params = optax.apply_updates(params, updates)
    assert float(params["w"]) == pytest.approx(w, rel=1e-6)
    assert w != 1.0 + total * step  # the EMA did move it


def _airbench_tx(**options):
    model = create_model("airbench94", (32, 32, 3), 10)
    _, params, _ = nnx.split(model, nnx.Param, ...)
    cfg = resolve(dict(arch="airbench94", dataset="cifar10", optimizer="sgd", momentum=0.0, lr=0.1,
                       schedule="constant", warmup_epochs=0.0, lookahead=False, **options))
    return params, make_optimizer(cfg, 10, None, norm_bias_mask(model, params))


@pytest.mark.parametrize("decay_biases", [False, True])
def test_decay_biases_decays_shifts_at_the_unscaled_rate(decay_biases):
    params, tx = _airbench_tx(weight_decay=0.01, bn_bias_lr=64.0, decay_biases=decay_biases)
    params = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    decay = -0.1 * 0.01  # lr x wd x weight, with zero gradients
    assert float(updates["layers"][1]["conv1"]["kernel"][0, 0, 0, 0]) == pytest.approx(decay)
    # airbench scales the shifts' learning rate by 64, not their decay.
    assert float(updates["layers"][1]["norm1"]["bias"][0]) == pytest.approx(decay if decay_biases else 0.0)
    assert float(updates["layers"][0]["bias"][0]) == pytest.approx(decay if decay_biases else 0.0)


def test_onecycle_runs_from_lr_start_to_lr_end():
    from cnncli.train.optim import learning_rate

    cfg = resolve(dict(arch="airbench94", dataset="cifar10", epochs=7, lr=1.0, lr_start=0.2, lr_end=0.07,
                       warmup_epochs=1.6, schedule="onecycle"))
    lr = learning_rate(cfg, 100)
    assert [float(lr(s)) for s in (0, 160, 700)] == pytest.approx([0.2, 1.0, 0.07])
    from cnncli.errors import CnnError

    with pytest.raises(CnnError, match="fractions of the peak"):
        resolve(dict(arch="airbench94", dataset="cifar10", lr_end=2.0))
