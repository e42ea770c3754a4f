"""pytorch-fid's own network, built offline with given weights: the reference for the
parity tests, the golden fixtures and the speed benchmark. Needs PyTorch, torchvision and
pytorch-fid (CPU is enough); nothing in the library imports this module.

pytorch-fid's ``fid_inception_v3()`` downloads its weights while building the network;
here that download function is swapped, for the duration of the build, for one that
returns the state dict we pass, so the network is pytorch-fid's code, unmodified, with
our weights (``jaxvision.pretrained.inception.random_state_dict(seed)`` in the tests).
"""

from __future__ import annotations

from typing import Mapping
from unittest import mock

import numpy as np


def pytorch_fid_network(state_dict: Mapping[str, np.ndarray]):
    """``pytorch_fid.inception.InceptionV3([3])`` (pool3 output; it resizes to 299 and
    scales by 2x - 1 itself) in eval mode on the CPU, loaded with ``state_dict``."""
    import torch
    from pytorch_fid import inception as pfi

    sd = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state_dict.items()}
    for name in list(sd):
        if name.endswith(".running_mean"):
            sd[name[: -len("running_mean")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)

    def fake_download(url, *args, **kwargs):
        assert url == pfi.FID_WEIGHTS_URL, url
        return sd

    with mock.patch.object(pfi, "load_state_dict_from_url", fake_download):
        net = pfi.InceptionV3([pfi.InceptionV3.DEFAULT_BLOCK_INDEX])
    return net.eval()


def pytorch_fid_features(net, fc_weight, images_uint8) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-fid's pool3 features of uint8 NHWC images (as its image loader feeds them:
    ``ToTensor``, i.e. ``/ 255``), and the IS logits ``pool3 @ fc.weight.T`` (no bias)."""
    import torch

    x = np.asarray(images_uint8)
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float().div(255)
    with torch.no_grad():
        pool = net(t)[0].squeeze(3).squeeze(2)
        logits = pool @ torch.from_numpy(np.asarray(fc_weight, dtype=np.float32)).T
    return pool.numpy(), logits.numpy()
