"""Lloyd's k-means on a few thousand targets, for ``MixtureDensityHead.initialize`` (private)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kmeans"]


def kmeans(
    data: Tensor, n_clusters: int, n_iter: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means. ``data (n, D)`` -> centers ``(K, D)``, labels ``(n,)``.

    Seeds: the ``(k + 1/2) / K`` quantiles in 1-D (deterministic, ordered), k-means++ otherwise.
    An empty cluster keeps its previous center.

    Example:
        >>> data = torch.tensor([[0.0], [0.1], [5.0], [5.2]])
        >>> centers, labels = kmeans(data, 2, n_iter=10, generator=torch.Generator())
        >>> centers[:, 0].tolist(), labels.tolist()
        ([0.05000000074505806, 5.099999904632568], [0, 0, 1, 1])
    """
    n, D = data.shape
    if D == 1:
        levels = (torch.arange(n_clusters, dtype=data.dtype) + 0.5) / n_clusters
        centers = torch.quantile(data[:, 0], levels).unsqueeze(-1)  # (K, 1)
    else:
        first = int(torch.randint(n, (1,), generator=generator))
        chosen = [data[first]]
        nearest = (data - data[first]).square().sum(-1)  # (n,) squared distance to the seeds
        for _ in range(1, n_clusters):
            if bool((nearest > 0).any()):
                index = int(torch.multinomial(nearest, 1, generator=generator))
            else:  # every point already coincides with a seed
                index = int(torch.randint(n, (1,), generator=generator))
            chosen.append(data[index])
            nearest = torch.minimum(nearest, (data - data[index]).square().sum(-1))
        centers = torch.stack(chosen)  # (K, D)

    labels = torch.cdist(data, centers).argmin(-1)  # (n,)
    for _ in range(n_iter):
        onehot = torch.nn.functional.one_hot(labels, n_clusters).to(data.dtype)  # (n, K)
        counts = onehot.sum(0)  # (K,)
        sums = onehot.T @ data  # (K, D)
        centers = torch.where(
            counts.unsqueeze(-1) > 0, sums / counts.clamp_min(1.0).unsqueeze(-1), centers
        )
        new_labels = torch.cdist(data, centers).argmin(-1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return centers, labels
