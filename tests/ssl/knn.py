"""20-NN balanced accuracy of an encoder on UNI's TCGA LUAD/LUSC tiles, read from the zip."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier

CLASSES = ("LUAD", "LUSC")


def load_tiles(zip_path: Path, size_px: int) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """split -> ((N, 3, size, size) 0-1 float images, (N,) labels), resized bicubic."""
    out: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    with zipfile.ZipFile(zip_path) as archive:
        for name in sorted(archive.namelist()):
            parts = name.split("/")
            if not name.endswith(".jpg") or len(parts) != 4:
                continue
            _, split, label, _ = parts
            image = Image.open(io.BytesIO(archive.read(name))).convert("RGB")
            image = image.resize((size_px, size_px), Image.Resampling.BICUBIC)
            out[split][0].append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
            out[split][1].append(CLASSES.index(label))
    return {k: (torch.stack(x).float() / 255.0, np.array(y)) for k, (x, y) in out.items()}


@torch.no_grad()
def embed(model: torch.nn.Module, images: torch.Tensor, mean, std) -> np.ndarray:
    """L2-normalised CLS embeddings of (N, 3, H, W) 0-1 images."""
    model.eval()
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    feats = torch.cat([model((b - m) / s) for b in images.split(64)])
    return torch.nn.functional.normalize(feats, dim=1).numpy()


def knn_balanced_accuracy(model, tiles, mean, std, k: int = 20) -> float:
    """Fit k-NN (Euclidean on L2-normalised features) on train, score balanced accuracy on test."""
    x_train, y_train = embed(model, tiles["train"][0], mean, std), tiles["train"][1]
    x_test, y_test = embed(model, tiles["test"][0], mean, std), tiles["test"][1]
    knn = KNeighborsClassifier(n_neighbors=k).fit(x_train, y_train)
    return float(balanced_accuracy_score(y_test, knn.predict(x_test)))
