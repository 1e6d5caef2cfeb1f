"""Activation functions by name, for ``MixtureDensityNetwork(activation=...)`` (private).

A name resolves to a class (a short name of :data:`ACTIVATIONS`, or any ``torch.nn``
activation class name in any case), and a class to the name that resolves back to it, so that
``MixtureDensityNetwork.config`` round-trips. ``torch.nn``'s activation classes are found
through its public namespace.
"""

from __future__ import annotations

from torch import nn

__all__ = ["ACTIVATIONS", "resolve_activation"]

# Short activation names; any class name from torch.nn's activations (any case) works too.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
}


def resolve_activation(activation: object) -> tuple[type[nn.Module], str]:
    """Activation class and the name that resolves back to it (for ``config``).

    Raises:
        ValueError: a name that is neither a short name nor a ``torch.nn`` activation class.
        TypeError: neither a name nor an ``nn.Module`` subclass.

    Example:
        >>> resolve_activation("leaky_relu"), resolve_activation("hardswish")
        ((<class 'torch.nn.modules.activation.LeakyReLU'>, 'leaky_relu'), (<class 'torch.nn.modules.activation.Hardswish'>, 'hardswish'))
        >>> resolve_activation(nn.GELU)
        (<class 'torch.nn.modules.activation.GELU'>, 'GELU')
    """  # noqa: E501
    if isinstance(activation, str):
        key = activation.strip().lower()
        if key in ACTIVATIONS:
            return ACTIVATIONS[key], activation
        found = _torch_activations().get(key.replace("_", ""))
        if found is not None:
            return found, activation
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)} or a torch.nn activation class "
            f"name, got {activation!r}."
        )
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        cls: type[nn.Module] = activation
        if getattr(nn, cls.__name__, None) is not cls:
            # Outside torch.nn: recorded for information; the constructor cannot resolve it.
            return cls, f"{cls.__module__}.{cls.__qualname__}"
        return cls, cls.__name__
    raise TypeError(
        f"activation must be a name or an nn.Module subclass, got "
        f"{type(activation).__name__}: {activation!r}."
    )


def _torch_activations() -> dict[str, type[nn.Module]]:
    """``torch.nn``'s activation classes by lower-case name, from its public namespace."""
    found: dict[str, type[nn.Module]] = {}
    for name in dir(nn):
        obj = getattr(nn, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, nn.Module)
            and obj.__module__ == "torch.nn.modules.activation"
        ):
            found[name.lower()] = obj
    return found
