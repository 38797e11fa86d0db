"""Optimizers and learning-rate schedules (Optax), with the Keras defaults the seeds trained with."""

from __future__ import annotations

import jax
import optax

from .config import TrainConfig

# Keras 3 defaults: the seeds' numbers depend on them (Adadelta and Adagrad at lr 1e-3 learn slowly,
# which is what seed 001's optimizer study observed).
DEFAULT_LR = {
    "adam": 1e-3, "adamw": 1e-3, "nadam": 1e-3, "rmsprop": 1e-3,
    "sgd": 1e-2, "adadelta": 1e-3, "adagrad": 1e-3,
}
KERAS_EPS = 1e-7


def learning_rate(cfg: TrainConfig, steps_per_epoch: int):
    """The schedule as a function of the step (or a constant)."""
    peak = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer]
    total = max(cfg.epochs * steps_per_epoch, 1)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "constant":
        if warmup:
            return optax.join_schedules(
                [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
            )
        return peak
    end = peak * cfg.lr_end
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1), end_value=end)
    # onecycle: linear up to the peak, linear down to the end (the triangle airbench uses).
    up = warmup or max(int(0.25 * total), 1)
    return optax.join_schedules(
        [optax.linear_schedule(peak * cfg.lr_start, peak, up), optax.linear_schedule(peak, end, max(total - up, 1))],
        [up],
    )


def _kernel_mask(params):
    # Decay weights (conv kernels, dense matrices), not biases or BatchNorm scales.
    return jax.tree.map(lambda p: p.ndim > 1, params)


def norm_bias_mask(model, params):
    """True for the shifts (biases) of the model's BatchNorms, False for every other parameter."""
    from flax import nnx

    paths = {path + ("bias",) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.BatchNorm)}
    return jax.tree_util.tree_map_with_path(
        lambda path, _: tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey)) in paths, params)


def lookahead(total_steps: int, every: int = 5, decay: float = 0.95**5) -> optax.GradientTransformation:
    """airbench's Lookahead (Zhang et al. 2019): every `every` steps the weights move to an EMA of
    themselves taken at those syncs, whose decay grows as (step / total)^3 up to `decay`, and the last
    step ends on the EMA. Early on it changes nothing; late, it averages out the noise of the last steps.

    Not `optax.lookahead`: its slow step is fixed (no ramp), and it makes the parameters a
    (fast, slow) pair that the train step, the EMA and the checkpoints would all have to unwrap;
    here the slow copy lives in the optimizer state and the parameters stay the model's.
    """
    import jax.numpy as jnp

    def init(params):
        return jnp.zeros([], jnp.int32), jax.tree.map(jnp.copy, params)

    def update(updates, state, params):
        count, slow = state
        count = count + 1
        last = count >= total_steps
        sync = (count % every == 0) | last
        # The last step, unless it is a sync anyway, takes the EMA as it stands (decay 1).
        d = jnp.where(last & (count % every != 0), 1.0, decay * (count / total_steps) ** 3)
        fast = optax.apply_updates(params, updates)
        slow = jax.tree.map(lambda s, f: jnp.where(sync, s + (1.0 - d) * (f - s), s), slow, fast)
        new = jax.tree.map(lambda s, f: jnp.where(sync, s, f), slow, fast)
        return jax.tree.map(lambda n, p: n - p, new, params), (count, slow)

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int, trainable_mask=None,
                   norm_bias=None) -> optax.GradientTransformation:
    """`norm_bias` marks BatchNorm shifts (norm_bias_mask): a tree like the parameters, or None."""
    lr = learning_rate(cfg, steps_per_epoch)
    name = cfg.optimizer
    if name == "adam":
        tx = optax.adam(lr, eps=KERAS_EPS)
    elif name == "adamw":
        tx = optax.adamw(lr, eps=KERAS_EPS, weight_decay=cfg.weight_decay or 1e-4, mask=_kernel_mask)
    elif name == "nadam":
        tx = optax.nadam(lr, eps=KERAS_EPS)
    elif name == "rmsprop":
        tx = optax.rmsprop(lr, decay=0.9, eps=KERAS_EPS, eps_in_sqrt=False)
    elif name == "sgd":
        tx = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.momentum > 0)
    elif name == "adadelta":
        tx = optax.adadelta(lr, rho=0.95, eps=KERAS_EPS)
    else:  # adagrad
        tx = optax.adagrad(lr, initial_accumulator_value=0.1, eps=KERAS_EPS)
    if cfg.weight_decay and name != "adamw":
        # L2 on the gradient (coupled), as PyTorch's and Keras 2's `weight_decay`; AdamW decouples it.
        if not cfg.decay_biases:
            decay = [optax.add_decayed_weights(cfg.weight_decay, mask=_kernel_mask)]
        elif norm_bias is None:  # no BatchNorm shifts marked: every parameter alike
            decay = [optax.add_decayed_weights(cfg.weight_decay)]
        else:
            # Every parameter, as airbench: BatchNorm shifts at wd / bn_bias_lr, so that after the
            # --bn-bias-lr scaling below their decay is wd like everyone's (airbench scales their rate only).
            decay = [optax.add_decayed_weights(cfg.weight_decay, mask=jax.tree.map(lambda s: not s, norm_bias)),
                     optax.add_decayed_weights(cfg.weight_decay / cfg.bn_bias_lr, mask=norm_bias)]
        tx = optax.chain(*decay, tx)
    if cfg.bn_bias_lr != 1.0:
        # Every optimizer's update is proportional to its learning rate, so scaling the update is
        # scaling the rate. airbench94 lets the shifts move 64x faster: with no BN scales to learn,
        # they set each channel's threshold, and their gradients are small.
        tx = optax.chain(tx, optax.masked(optax.scale(cfg.bn_bias_lr), norm_bias))
    if cfg.lookahead:
        tx = optax.chain(tx, lookahead(cfg.epochs * steps_per_epoch))
    if trainable_mask is not None:
        # Transfer learning: frozen parameters get zero updates and no optimizer state.
        tx = optax.multi_transform(
            {"train": tx, "freeze": optax.set_to_zero()},
            jax.tree.map(lambda t: "train" if t else "freeze", trainable_mask),
        )
    return tx

