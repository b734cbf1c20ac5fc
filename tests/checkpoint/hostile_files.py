"""Weights files a hostile or careless user may hand over: code-running pickles in every format, damaged files, and
a legitimate detectron2 model-zoo pickle. Shared by the checkpoint and tool tests."""
import collections
import os
import pickle

import numpy as np
import torch

from focus_detr.engine.checkpoint import save_weights

# (file name, how it is written): every format and extension a weights option accepts
MALICIOUS_FORMATS = ["evil.pkl", "evil_zip.pth", "evil_legacy.pth", "evil.pyth", "evil.pt", "evil.weights"]


class _Payload:
    """Unpickling this runs ``touch <marker>``: what an attacker's file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_malicious(path, marker):
    """Writes a weights file at ``path`` whose loading with plain pickle / ``weights_only=False`` creates ``marker``.
    ``*.pkl``: a plain pickle; ``*_legacy.*``: torch's legacy (non-zip) format; ``*.pyth``/``*.pt``: torch zip files;
    ``*_zip.*``: a torch zip file; anything else: a plain pickle under a foreign extension."""
    path = str(path)
    content = {"model": {"backbone.weight": torch.zeros(1)}, "trainer": _Payload(marker)}
    name = os.path.basename(path)
    if name.endswith(".pkl") or not name.endswith((".pth", ".pyth", ".pt")):
        with open(path, "wb") as f:
            pickle.dump({"model": {"w": np.zeros(1)}, "__author__": _Payload(marker)}, f)
    elif "_legacy" in name:
        torch.save(content, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(content, path)
    return path


def write_detectron2_pkl(path, state_dict, protocol=pickle.HIGHEST_PROTOCOL):
    """A detectron2 model-zoo style ``.pkl``: numpy arrays under "model", an author, matching heuristics on."""
    weights = collections.OrderedDict((name, value.detach().cpu().numpy()) for name, value in state_dict.items())
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}, f, protocol)
    return str(path)


def damaged_files(folder):
    """{description: path} of files that are not usable weights."""
    folder = str(folder)
    good = os.path.join(folder, "good.pth")
    torch.save({"model": {"w": torch.zeros(1000)}}, good)
    data = open(good, "rb").read()
    files = {
        "zero-byte": b"",
        "truncated": data[: len(data) // 2],
        "random bytes": np.random.default_rng(0).bytes(4096),
        "not a pickle": b"weights: [1, 2, 3]\n",
        "not a zip": b"PK\x03\x04" + np.random.default_rng(1).bytes(200),
    }
    large = os.path.join(folder, "large.pth")
    torch.save({"model": {"w": torch.zeros(100000)}}, large)
    files["cut inside a record"] = open(large, "rb").read()[:5000]  # torch's reader: OSError "Invalid argument"
    os.remove(large)
    safetensors = os.path.join(folder, "good.safetensors")
    save_weights(safetensors, {"w": torch.zeros(1000)})
    files["truncated safetensors"] = open(safetensors, "rb").read()[:-100]
    os.remove(safetensors)
    paths = {}
    for index, (description, content) in enumerate(files.items()):
        paths[description] = os.path.join(folder, f"damaged_{index}.pth")
        with open(paths[description], "wb") as f:
            f.write(content)
    paths["wrong layout (a list)"] = os.path.join(folder, "list.pth")
    torch.save([1, 2, 3], paths["wrong layout (a list)"])
    paths["wrong layout (strings as weights)"] = os.path.join(folder, "strings.pth")
    torch.save({"model": {"w": "not a tensor"}}, paths["wrong layout (strings as weights)"])
    os.remove(good)
    return paths
