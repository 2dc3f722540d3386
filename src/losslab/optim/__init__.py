"""losslab.optim: optimizers from the literature, faithful to the authors' code and fast.

Every optimizer is a ``torch.optim.Optimizer`` registered in :data:`registry` (``losslab list optimizers``) and
can be built by name with :func:`create`. :func:`schedule_scheduler` drives any optimizer with a
:mod:`losslab.schedules` schedule. See docs/optim.md for the user guide and the differences from other libraries.
"""

from losslab.optim._catalogue import OptimizerInfo, create, registry, schedule_scheduler
from losslab.optim.adamp import SGDP, AdamP
from losslab.optim.averaging import WeightAverage
from losslab.optim.diffgrad import DiffGrad
from losslab.optim.dot import DOT
from losslab.optim.fira import Fira
from losslab.optim.galore import GaLore
from losslab.optim.kfac import KFAC
from losslab.optim.lobster import LOBSTER, MagnitudePruner
from losslab.optim.momo import MoMo, MoMoAdam
from losslab.optim.orthograd import OrthoGrad, orthogonalize_
from losslab.optim.sam import SAM
from losslab.optim.scale import SCALE, scale_param_groups
from losslab.optim.scaling_rules import batch_scaled_lr, top_singular_values, width_scaled_param_groups
from losslab.optim.sgd_sai import SGDSaI
from losslab.optim.spam import SPAM

__all__ = [
    "AdamP",
    "DOT",
    "DiffGrad",
    "Fira",
    "GaLore",
    "KFAC",
    "LOBSTER",
    "MagnitudePruner",
    "MoMo",
    "MoMoAdam",
    "OptimizerInfo",
    "OrthoGrad",
    "SAM",
    "SCALE",
    "SGDP",
    "SGDSaI",
    "SPAM",
    "WeightAverage",
    "batch_scaled_lr",
    "create",
    "orthogonalize_",
    "registry",
    "scale_param_groups",
    "schedule_scheduler",
    "top_singular_values",
    "width_scaled_param_groups",
]
