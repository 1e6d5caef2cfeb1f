"""Sphinx inventories of the outside objects that the documentation links to.

The build must not reach the network, and the projects' own ``objects.inv`` files cannot be
fetched here (their hosts are not reachable) and would go stale in the repository. Instead
the tables below list every object of Python, torch, numpy, scikit-learn and matplotlib that
the API pages and the guide refer to, with its page in that project's online documentation.
:func:`write_all` writes them as inventories (``objects.inv``, version 2) that
``sphinx.ext.intersphinx`` reads from disk, so references resolve the same way offline and
the links work for a reader who is online. A reference missing here fails the nitpicky
build ("reference target not found"): add its line.

A line is ``name role page``: the object's URL is ``base + page + "#" + name`` (``#module-``
for a module), and ``$`` in ``page`` stands for ``name``. A line ``alias = name`` gives
another spelling of the same object: annotations reach Sphinx as written (``nn.Module``,
``np.ndarray``) or under the defining module (``torch._C.Generator``).
"""

from __future__ import annotations

import zlib
from pathlib import Path

PYTHON = """
int                        class      library/functions.html
float                      class      library/functions.html
bool                       class      library/functions.html
object                     class      library/functions.html
str                        class      library/stdtypes.html
list                       class      library/stdtypes.html
tuple                      class      library/stdtypes.html
dict                       class      library/stdtypes.html
None                       data       library/constants.html
ValueError                 exception  library/exceptions.html
TypeError                  exception  library/exceptions.html
OSError                    exception  library/exceptions.html
RuntimeError               exception  library/exceptions.html
ImportError                exception  library/exceptions.html
ModuleNotFoundError        exception  library/exceptions.html
KeyboardInterrupt          exception  library/exceptions.html
collections.abc.Callable   class      library/collections.abc.html
collections.abc.Iterable   class      library/collections.abc.html
collections.abc.Iterator   class      library/collections.abc.html
collections.abc.Mapping    class      library/collections.abc.html
collections.abc.Sequence   class      library/collections.abc.html
typing.Any                 data       library/typing.html
typing.Literal             data       library/typing.html
os.PathLike                class      library/os.html
pathlib.Path               class      library/pathlib.html
enum.Enum                  class      library/enum.html
csv                        module     library/csv.html
argparse                   module     library/argparse.html
"""

TORCH = """
torch.Tensor                                    class     tensors.html
torch.Size                                      class     size.html
torch.dtype                                     class     tensor_attributes.html
torch.device                                    class     tensor_attributes.html
torch.Generator                                 class     generated/$.html
torch.multinomial                               function  generated/$.html
torch.compile                                   function  generated/$.html
torch.nn.Module                                 class     generated/$.html
torch.nn.LSTM                                   class     generated/$.html
torch.nn.GRU                                    class     generated/$.html
torch.nn.parallel.DistributedDataParallel       class     generated/$.html
torch.optim.AdamW                               class     generated/$.html
torch.distributions.distribution.Distribution   class     distributions.html
torch.distributions.distribution.Distribution.set_default_validate_args  method  distributions.html
torch.distributions.mixture_same_family.MixtureSameFamily  class  distributions.html
torch.distributions.multivariate_normal.MultivariateNormal  class  distributions.html
torch.utils.data.Dataset                        class     data.html
torch.utils.data.IterableDataset                class     data.html
torch.utils.data.DataLoader                     class     data.html
Tensor = torch.Tensor
torch._C.Generator = torch.Generator
torch.nn.modules.module.Module = torch.nn.Module
nn.Module = torch.nn.Module
torch.distributions.Distribution = torch.distributions.distribution.Distribution
torch.distributions.Distribution.set_default_validate_args = torch.distributions.distribution.Distribution.set_default_validate_args
torch.distributions.MixtureSameFamily = torch.distributions.mixture_same_family.MixtureSameFamily
torch.distributions.MultivariateNormal = torch.distributions.multivariate_normal.MultivariateNormal
torch.utils.data.dataset.Dataset = torch.utils.data.Dataset
torch.utils.data.dataset.IterableDataset = torch.utils.data.IterableDataset
"""  # noqa: E501 (one object per line)

NUMPY = """
numpy.ndarray                     class     reference/generated/$.html
numpy.dtype                       class     reference/generated/$.html
numpy.random.Generator            class     reference/random/generator.html
numpy.random.RandomState          class     reference/random/legacy.html
np.ndarray = numpy.ndarray
np.random.RandomState = numpy.random.RandomState
numpy.random.mtrand.RandomState = numpy.random.RandomState
"""

SKLEARN = """
sklearn.base.BaseEstimator         class      modules/generated/$.html
sklearn.base.RegressorMixin        class      modules/generated/$.html
sklearn.exceptions.NotFittedError  exception  modules/generated/$.html
sklearn.pipeline.Pipeline          class      modules/generated/$.html
sklearn.impute.SimpleImputer       class      modules/generated/$.html
sklearn.set_config                 function   modules/generated/$.html
"""

MATPLOTLIB = """
matplotlib.axes.Axes         class     api/_as_gen/$.html
matplotlib.figure.Figure     class     api/_as_gen/$.html
matplotlib.pyplot.subplots   function  api/_as_gen/$.html
Axes = matplotlib.axes.Axes
"""

#: Inventory name -> (project, base URL of its documentation, table).
PROJECTS = {
    "python": ("Python", "https://docs.python.org/3/", PYTHON),
    "torch": ("PyTorch", "https://docs.pytorch.org/docs/stable/", TORCH),
    "numpy": ("NumPy", "https://numpy.org/doc/stable/", NUMPY),
    "sklearn": ("scikit-learn", "https://scikit-learn.org/stable/", SKLEARN),
    "matplotlib": ("Matplotlib", "https://matplotlib.org/stable/", MATPLOTLIB),
}


def entries(table: str) -> list[tuple[str, str, str]]:
    """``(name, role, uri)`` of every line of ``table``; ``uri`` relative to the base."""
    rows: dict[str, tuple[str, str]] = {}
    out = []
    for line in table.strip().splitlines():
        if " = " in line:
            alias, name = (part.strip() for part in line.split(" = "))
            role, uri = rows[name]
        else:
            name, role, page = line.split()
            anchor = f"module-{name}" if role == "module" else name
            alias, uri = name, page.replace("$", name) + "#" + anchor
            rows[name] = role, uri
        out.append((alias, role, uri))
    return out


def write_all(directory: Path) -> dict[str, tuple[str, Path]]:
    """Write one inventory per project into ``directory``; ``{name: (base URL, file)}``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for key, (project, base_url, table) in PROJECTS.items():
        # Priority 1 (ordinary object), display name "-" (the name itself).
        lines = "".join(f"{name} py:{role} 1 {uri} -\n" for name, role, uri in entries(table))
        data = (
            b"# Sphinx inventory version 2\n"
            + f"# Project: {project}\n# Version: \n".encode()
            + b"# The remainder of this file is compressed using zlib.\n"
            + zlib.compress(lines.encode())
        )
        path = directory / f"{key}.inv"
        if not path.is_file() or path.read_bytes() != data:  # unchanged files keep their mtime
            path.write_bytes(data)
        written[key] = (base_url, path)
    return written
