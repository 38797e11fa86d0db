"""The architecture registry, the layers' arithmetic and `cnn summary`.

Parameter counts are the seeds' Keras `model.summary()` numbers; they are counted on abstract
models (nnx.eval_shape), so VGG-16's 138M parameters cost nothing. Forward passes build each
network inside one jitted function on a small input, to keep compilation short.
"""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnncli.errors import CnnError
from cnncli.models import ARCHS, abstract_model, count_params, create_model, flops_per_image, get_arch, summarize
from cnncli.models.layers import max_pool

# (arch, input shape, classes) -> (total, trainable, non-trainable), as Keras printed them.
KERAS_COUNTS = [
    ("net1", (28, 28, 1), 10, 6_442_762, 6_442_762, 0),
    ("net1", (32, 32, 3), 10, 8_409_418, 8_409_418, 0),
    ("net2", (28, 28, 1), 10, 1_625_866, 1_625_866, 0),
    ("net2", (32, 32, 3), 10, 2_117_962, 2_117_962, 0),
    ("mlp", (28, 28, 1), 10, 669_706, 669_706, 0),
    ("workshop", (28, 28, 1), 10, 121_930, 121_930, 0),
    ("lenet5", (28, 28, 1), 10, 61_706, 61_706, 0),
    ("catsdogs", (128, 128, 3), 2, 12_942_273, 12_940_801, 1_472),
    ("vgg16", (224, 224, 3), 1000, 138_357_544, 138_357_544, 0),
]


@pytest.mark.parametrize("arch,shape,classes,total,trainable,frozen", KERAS_COUNTS)
def test_parameter_counts_equal_keras(arch, shape, classes, total, trainable, frozen):
    assert count_params(abstract_model(arch, shape, classes)) == (total, trainable, frozen)


def test_counts_of_a_real_model_equal_the_abstract_ones():
    model = create_model("catsdogs", (24, 24, 3), 2)
    assert count_params(model) == count_params(abstract_model("catsdogs", (24, 24, 3), 2))
    assert count_params(model)[2] == 2 * (32 + 64 + 128 + 512)  # BatchNorm running mean and variance


def test_seed_nets_start_from_keras_initialisers():
    model = create_model("net2", (8, 8, 1), 10, seed=0)
    dense = model.layers[3]  # 4x4x64 = 1024 -> 128
    w = np.asarray(dense.weight[...])
    limit = math.sqrt(6 / (1024 + 128))  # glorot uniform
    assert np.abs(w).max() <= limit and abs(w.std() - limit / math.sqrt(3)) < 0.02 * limit
    assert not np.asarray(dense.bias[...]).any()
    again = create_model("net2", (8, 8, 1), 10, seed=0).layers[3].weight[...]
    other = create_model("net2", (8, 8, 1), 10, seed=1).layers[3].weight[...]
    assert np.array_equal(w, again) and not np.array_equal(w, other)


def test_dense_stores_the_transposed_kernel_of_nnx_linear():
    # (out, in) for its faster gradient (blocks.Dense); the same draws as nnx.Linear, key for key,
    # so a seed gives the weights it gave before, in this layer and in the ones built after it.
    from cnncli.models.blocks import KERAS_KERNEL_INIT, Dense

    ours, theirs = nnx.Rngs(params=3), nnx.Rngs(params=3)
    dense, linear = Dense(6, 4, rngs=ours), nnx.Linear(6, 4, kernel_init=KERAS_KERNEL_INIT, rngs=theirs)
    assert dense.weight.shape == (4, 6)
    np.testing.assert_array_equal(dense.weight[...], linear.kernel[...].T)
    np.testing.assert_array_equal(jax.random.key_data(ours.params()), jax.random.key_data(theirs.params()))
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.testing.assert_allclose(dense(x), linear(x), rtol=1e-6)


def test_batchnorm_settings():
    cats = abstract_model("catsdogs", (128, 128, 3), 2)
    bn = [layer for layer in cats.layers if layer.kind == "batch_normalization"]
    assert len(bn) == 4 and all((b.momentum, b.epsilon) == (0.99, 1e-3) for b in bn)  # Keras
    res = abstract_model("resnet_cifar", (32, 32, 3), 10)
    assert res.layers[0].bn.momentum == 0.9


def _out(n, k, s, p):
    """O = (W - K + 2P) / S + 1, rounded down."""
    return (n - k + 2 * p) // s + 1


def test_output_shapes_follow_the_formula():
    rows = {r["name"]: r["output_shape"] for r in summarize("workshop", (28, 28, 1), 10)["layers"]}
    assert rows["conv2d"] == [_out(28, 3, 1, 0)] * 2 + [32] == [26, 26, 32]  # valid
    assert rows["max_pooling2d"] == [_out(26, 2, 2, 0)] * 2 + [32] == [13, 13, 32]
    assert rows["conv2d_1"][:2] == [_out(13, 3, 1, 0)] * 2 == [11, 11]
    assert rows["flatten"] == [5 * 5 * 64]
    rows = {r["name"]: r["output_shape"] for r in summarize("net2", (28, 28, 1), 10)["layers"]}
    assert rows["conv2d"][:2] == [_out(28, 3, 1, 1)] * 2 == [28, 28]  # same: P = (K - 1) / 2
    assert rows["conv2d_1"][:2] == [_out(28, 3, 2, 1)] * 2 == [14, 14]  # strided
    rows = {r["name"]: r["output_shape"] for r in summarize("lenet5", (28, 28, 1), 10)["layers"]}
    assert rows["conv2d"] == [_out(28, 5, 1, 2)] * 2 + [6] == [28, 28, 6]
    assert rows["conv2d_1"] == [_out(14, 5, 1, 0)] * 2 + [16] == [10, 10, 16]
    assert rows["flatten"] == [400]


@pytest.mark.parametrize("padding,expected", [
    ("VALID", [8, -16, 11, 1]),
    ("SAME", [0, 8, -16, 11, 1, -4]),
    ([(2, 2)], [-1, 0, 8, -16, 11, 1, -4, 1]),  # full: K - 1 zeros on each side
])
def test_seed002_one_dimensional_convolution(padding, expected):
    # nnx.Conv runs jax.lax.conv_general_dilated, as every model's conv does; it cross-correlates,
    # which for this symmetric kernel is the same as convolving.
    conv = nnx.Conv(1, 1, (3,), padding=padding, use_bias=False, rngs=nnx.Rngs(0))
    conv.kernel[...] = jnp.array([-1.0, 2.0, -1.0]).reshape(3, 1, 1)
    signal = jnp.array([1.0, 2, -5, 4, 2, -1]).reshape(1, 6, 1)
    assert conv(signal).ravel().tolist() == expected


def test_seed004_max_pooling():
    fmap = np.array([[1, 6, 0, 3, 4, 4], [3, 4, 3, 2, 5, 4], [2, 3, 1, 1, 4, 4],
                     [3, 1, 1, 2, 3, 2], [4, 5, 0, 1, 1, 3], [5, 3, 2, 2, 2, 4]], np.float32)
    out = max_pool(jnp.asarray(fmap).reshape(1, 6, 6, 1), 2, 2)
    assert out.reshape(3, 3).tolist() == [[6, 3, 5], [3, 2, 4], [5, 2, 4]]


FORWARD_SHAPES = {"catsdogs": ((24, 24, 3), 2), "vgg16": ((32, 32, 3), 10), "resnet_photo": ((16, 16, 3), 2),
                  "resnet_cifar": ((8, 8, 3), 10), "resnet20": ((8, 8, 3), 10), "airbench94": ((25, 25, 3), 10)}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_forward_pass_in_train_and_eval_mode(arch):
    shape, classes = FORWARD_SHAPES.get(arch, ((12, 12, 1), 10))
    spec = get_arch(arch)

    @jax.jit
    def both_modes(x):
        model = create_model(arch, shape, classes)
        train = model(x)
        model.eval()
        return train, model(x), model(x)

    x = jax.random.uniform(jax.random.key(0), (3, *shape))
    train, ev, ev2 = both_modes(x)
    width = 1 if spec.binary_head and classes == 2 else classes
    assert train.shape == ev.shape == (3, width)
    assert jnp.isfinite(train).all() and jnp.isfinite(ev).all()
    assert jnp.array_equal(ev, ev2)  # eval mode is deterministic
    stochastic = spec.dropout or any(
        layer.kind in ("batch_normalization", "conv_bn", "basic_block", "pool_stage", "conv_group") for layer in
        abstract_model(arch, shape, classes).layers)
    assert bool(jnp.any(train != ev)) == bool(stochastic)  # dropout and batch statistics act in train mode only


def test_too_small_inputs_fail_cleanly():
    for arch, side in (("lenet5", 12), ("workshop", 10), ("cnn003", 12), ("fastcnn", 10)):
        with pytest.raises(CnnError, match=f"arch {arch} needs inputs of at least {side}x{side}; got 8x8"):
            abstract_model(arch, (8, 8, 1), 10)
        abstract_model(arch, (side, side, 1), 10)
    for arch in ("net1", "net2", "mlp", "resnet_cifar", "resnet_photo"):  # the offline digits are 8x8
        assert count_params(abstract_model(arch, (8, 8, 1), 10))[0] > 0


def test_options_are_checked():
    with pytest.raises(CnnError, match="unknown arch 'resnet50'; known: net1, net2, mlp"):
        get_arch("resnet50")
    with pytest.raises(CnnError, match="--dropout does not apply"):
        abstract_model("net1", (28, 28, 1), 10, dropout=0.3)
    with pytest.raises(CnnError, match="unknown activation"):
        abstract_model("mlp", (28, 28, 1), 10, activation="softsign")
    with pytest.raises(CnnError, match="--activation does not apply"):
        abstract_model("catsdogs", (128, 128, 3), 2, activation="tanh")
    with pytest.raises(CnnError, match="at least 2 classes"):
        abstract_model("net1", (28, 28, 1), 1)


def test_activation_and_dropout_reach_the_layers():
    default = abstract_model("mlp", (28, 28, 1), 10)
    assert [layer.activation for layer in default.layers if layer.kind == "dense"] == ["sigmoid", "sigmoid", None]
    assert [layer.rate for layer in default.layers if layer.kind == "dropout"] == [0.2, 0.2]
    tuned = abstract_model("mlp", (28, 28, 1), 10, activation="relu", dropout=0.5)
    assert [layer.activation for layer in tuned.layers if layer.kind == "dense"] == ["relu", "relu", None]
    assert [layer.rate for layer in tuned.layers if layer.kind == "dropout"] == [0.5, 0.5]
    # seed 003's CNN: the first conv is linear as written; the others take the activation
    cnn = abstract_model("cnn003", (28, 28, 1), 10, activation="tanh")
    assert [layer.activation for layer in cnn.layers if layer.kind == "conv2d"] == [None, "tanh", "tanh"]


def test_defaults_are_training_options():
    from dataclasses import fields

    from cnncli.train.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    for spec in ARCHS.values():
        assert set(spec.defaults) <= known, spec.name
    assert get_arch("net1").defaults["batch_size"] == 128 and get_arch("net1").defaults["epochs"] == 16
    assert get_arch("workshop").defaults["optimizer"] == "rmsprop" and get_arch("workshop").defaults["val_split"] == 0.1
    assert get_arch("catsdogs").binary_head and get_arch("catsdogs").defaults["image_size"] == 128


def test_flops_count_convolutions_and_dense_layers():
    macs = (28 * 28 * 32 * 3 * 3 * 1) + (28 * 28 * 64 * 3 * 3 * 32) + (28 * 28 * 64 * 128) + (128 * 10)
    assert flops_per_image("net1", (28, 28, 1), 10) == 2 * macs == 42_200_576
    assert flops_per_image("vgg16", (224, 224, 3), 1000) == 2 * 15_470_264_320  # the known 15.5 GMACs


def test_registry_import_is_light():
    code = "import sys, cnncli.models; print(cnncli.models.ARCHS['net1'].name, 'jax' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["net1", "False"], r.stderr


def test_cli_summary_table(run_cnn):
    code, out, _ = run_cnn("summary", "--arch", "net1", "--dataset", "mnist")
    assert code == 0
    lines = out.splitlines()
    assert any(line.split()[:2] == ["conv2d_1", "Conv"] and "(28, 28, 64)" in line and "18,496" in line
               for line in lines)
    assert any(line.startswith("dense ") and "(128,)" in line and "6,422,656" in line for line in lines)
    assert "Total params: 6,442,762 (24.58 MiB)" in out
    assert "Non-trainable params: 0" in out
    assert "21,100,288 MACs, 42,200,576 FLOPs" in out


def test_cli_summary_json(run_cnn):
    code, out, _ = run_cnn("summary", "--arch", "catsdogs", "--dataset", "cats_vs_dogs", "--json")
    s = json.loads(out)
    assert code == 0 and len(out.splitlines()) == 1
    assert (s["input_shape"], s["num_classes"], s["binary_head"]) == ([128, 128, 3], 2, True)
    assert (s["total_params"], s["trainable_params"], s["non_trainable_params"]) == (12_942_273, 12_940_801, 1_472)
    assert s["param_bytes"] == 4 * 12_942_273 and s["param_memory"] == "49.37 MiB"
    assert sum(r["params"] for r in s["layers"]) == s["total_params"]
    assert s["flops"] == 2 * s["macs"] > 0


def test_cli_summary_errors(run_cnn):
    code, out, err = run_cnn("summary", "--arch", "nope", "--input-shape", "8,8,1",
                              "--classes", "10")
    # A usage error (the choices of --arch are the registry's), before anything is built.
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: --arch must be one of net1, ")
    code, _, err = run_cnn("summary", "--arch", "lenet5", "--dataset", "digits")
    assert code != 0 and err == "error: arch lenet5 needs inputs of at least 12x12; got 8x8\n"
    code, _, err = run_cnn("summary", "--arch", "net1", "--input-shape", "28,28")
    assert code != 0 and err.startswith("error: --input-shape")


def test_fastcnn_is_the_workshop_convs_with_batchnorm():
    # Same two convolutions as seed 004's workshop (so the same conv MACs) without biases, a BN after
    # each pool (scale, bias trainable; mean, var not) and a linear head from the 5x5x64 maps:
    # (288 + 64+64) + (18,432 + 128+128) + 16,010.
    model = abstract_model("fastcnn", (28, 28, 1), 10)
    assert count_params(model) == (35_114, 34_922, 192)
    workshop_convs = 26 * 26 * 32 * 9 + 11 * 11 * 64 * 9 * 32
    assert flops_per_image("fastcnn", (28, 28, 1), 10) == 2 * (workshop_convs + 1600 * 10)
    rows = summarize("fastcnn", (28, 28, 1), 10)["layers"]
    assert [(r["type"], r["output_shape"]) for r in rows[:2]] == [
        ("Conv 32 3x3 valid + MaxPool 2 + BN + relu", [13, 13, 32]), ("Conv 64 3x3 valid + MaxPool 2 + BN + relu", [5, 5, 64])]
    assert summarize("resnet_cifar", (32, 32, 3), 10)["layers"][1]["type"] == (
        "Conv 32 3x3 + MaxPool 2 + BN + relu, +residual conv")  # the residual stage it shares code with


@pytest.mark.parametrize("cin,stride,padding,activation", [(1, 1, "same", "relu"), (3, 2, "valid", "tanh"),
                                                            (3, 1, "valid", None), (8, 2, "same", "sigmoid")])
def test_conv2d_layer_is_nnx_conv_then_activation(cin, stride, padding, activation):
    """The Conv2D layer (fused for first layers) computes what its nnx.Conv and the activation would."""
    from cnncli.models.blocks import Conv2D, activate

    layer = Conv2D(cin, 4, 3, stride, padding, activation, rngs=nnx.Rngs(0))
    layer.conv.bias[...] = jnp.linspace(-1.0, 1.0, 4)  # non-zero, so a dropped or misplaced bias shows
    x = jax.random.normal(jax.random.key(1), (4, 9, 9, cin))
    want = activate(activation, layer.conv(x))
    np.testing.assert_allclose(layer(x), want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
