"""Built-in explanation methods; importing this package registers them."""

from . import contrastive, hedge, lrp, rap, rsp  # noqa: F401
from . import gradients  # noqa: F401
from . import agf, cam, deeplift, fullgrad, pattern  # noqa: F401
from . import rap_journal  # noqa: F401
from . import attention_maps, transformers  # noqa: F401
