"""PyTorch (eager, CPU) reference of cnn's net1/net2: `python benchmarks/torch_ref.py --arch net1`.

Same layers, sizes and optimizer (Adam, lr 1e-3) as `cnn`; PyTorch's default NCHW layout and
thread count. Prints JSON lines (see _common.py). Needs `pip install -e .[bench]`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, modes, parse_args, serve, time_steps  # noqa: E402


class SamePool(nn.Module):
    """2x2 max pool at stride 1, "same": Keras/XLA pad the extra row and column at the end."""

    def forward(self, x):
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2, 1)


def build(arch: str, shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """net1: conv32, conv64, pool 2x2/1 same, dense 128, dense; net2: conv32, conv64/2, dense 128, dense."""
    h, w, c = shape
    if arch == "net1":
        body = [nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), SamePool()]
        flat = h * w * 64
    else:
        # padding=1 at stride 2 gives Keras' "same" output size ceil(n / 2) for every n.
        body = [nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU()]
        flat = -(-h // 2) * -(-w // 2) * 64
    return nn.Sequential(*body, nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, num_classes))


def main() -> None:
    args = parse_args("torch")
    torch.manual_seed(0)
    model = build(args.arch, args.input_shape, args.num_classes)
    h, w, c = args.input_shape
    x = torch.randn(args.batch_size, c, h, w)
    y = torch.randint(0, args.num_classes, (args.batch_size,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    # bf16: autocast runs convolutions and linear layers in bf16 (fp32 weights and optimizer), as
    # PyTorch's CPU mixed precision does; fp32: a context that does nothing.
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")  # noqa: E731

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        return loss.item()  # forces the step to finish

    @torch.inference_mode()
    def infer_step():
        with autocast():
            return model(x).argmax(-1).sum().item()

    if args.serve:
        model.train(args.mode == "train")
        return serve("torch", torch.__version__, train_step if args.mode == "train" else infer_step, args)
    for mode in modes(args):
        model.train(mode == "train")
        emit("torch", torch.__version__, args, mode, time_steps(train_step if mode == "train" else infer_step, args))


if __name__ == "__main__":
    main()
