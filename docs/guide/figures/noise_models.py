"""The five noise models fitted to the same 2-D data (the figure of the guide's model page).

The data are three clusters: a long tilted one, a small round one and a wide one along the
axes. Each other panel fits a mixture of K = 3 components with one noise model by maximum
likelihood: a ``MixtureDensityHead`` on a constant input, so the mixture does not depend on
x and the panel shows what each covariance family can represent. Ellipses are the 1 and 2
standard-deviation contours of each component, shaded by its weight.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Ellipse

from mixture_density import MixtureDensityHead, fit

torch.set_num_threads(1)  # small models: one thread is fastest (and the build shares the CPU)
torch.manual_seed(0)
rng = np.random.default_rng(0)
clusters = [
    rng.multivariate_normal([-1.5, -0.5], [[1.0, 0.85], [0.85, 1.0]], 700),  # long, tilted
    rng.multivariate_normal([1.8, 1.6], [[0.05, 0.0], [0.0, 0.05]], 300),  # small, round
    rng.multivariate_normal([1.8, -1.6], [[0.6, 0.0], [0.0, 0.08]], 500),  # wide, flat
]
y = torch.as_tensor(np.concatenate(clusters))
h = torch.ones(len(y), 1, dtype=y.dtype)  # one constant feature: p(y | x) = p(y)

noise_types = ["full", "diagonal", "isotropic", "isotropic_across_clusters", "fixed"]
fig, axes = plt.subplots(2, 3, figsize=(12, 7.6), layout="constrained")
axes = axes.ravel()
axes[0].scatter(y[:, 0], y[:, 1], s=2, color="0.4")
axes[0].set_title("the data: three clusters", fontsize=10)
for ax, noise_type in zip(axes[1:], noise_types):
    level = {"fixed_noise_level": 0.35} if noise_type == "fixed" else {}
    head = MixtureDensityHead(1, 2, n_components=3, noise_type=noise_type, **level).double()
    head.initialize(y)  # k-means start, as the estimator does
    result = fit(head, h, y, epochs=60, batch_size=256, lr=2e-2, val_fraction=0, seed=0)
    with torch.no_grad():
        mixture = head(h[:1])  # batch (1,): the same mixture for every input
        nll = -mixture.log_prob(y[:, None]).mean().item()
        weights = mixture.probs[0].numpy()
        means = mixture.loc[0].numpy()
        covariances = mixture.component_covariance_matrix[0].numpy()
    ax.scatter(y[:, 0], y[:, 1], s=2, color="0.6")
    for w, mu, cov in zip(weights, means, covariances):
        values, vectors = np.linalg.eigh(cov)
        angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))
        for n_std in (1, 2):
            width, height = 2 * n_std * np.sqrt(values[::-1])
            ax.add_patch(
                Ellipse(mu, width, height, angle=angle, fill=False, lw=1.5,
                        color="tab:blue", alpha=0.3 + 0.7 * w / weights.max())
            )  # fmt: skip
    ax.set_title(f"{noise_type}: NLL {nll:.2f} nats per point", fontsize=10)
for ax in axes:
    ax.set_xlim(-5, 4.5)
    ax.set_ylim(-4, 3.5)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
