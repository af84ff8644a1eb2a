"""An MLServer runtime serving a scrutiny zoo model (imported by MLServer, not by the tests).

``ZooRuntime`` is a custom MLServer runtime (an ``MLModel`` subclass): it loads
``scrutiny.models.pretrained(zoo)``, answers Open Inference Protocol requests with
the logits (or probabilities, or labels: ``output`` in the model's settings) and
counts the inputs each model served, all of them at ``GET /scrutiny/served``
(``{"model name": count}``): the server's own count, to compare with what
scrutiny reports. ``mlserver_process.start_mlserver`` starts it.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.handlers import custom_handler
from mlserver.types import InferenceRequest, InferenceResponse

# MLServer re-imports this module for each model it loads: the counts live outside it
_SERVED: dict[str, int] = sys.modules.setdefault(
    "oip_runtime_counts", types.ModuleType("oip_runtime_counts")).__dict__.setdefault("served", {})


class ZooRuntime(MLModel):
    """A scrutiny zoo model behind MLServer; counts the inputs it served."""

    async def load(self) -> bool:
        from scrutiny.models import pretrained

        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        torch.set_num_threads(int(extra.get("threads", 1)))
        self._net = pretrained(extra.get("zoo", "digits-cnn"), progress=False)
        self._output = extra.get("output", "logits")
        _SERVED[self.name] = 0
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        with torch.no_grad():
            logits = self._net(torch.from_numpy(x))
        _SERVED[self.name] += len(x)
        if self._output == "label":
            out = logits.argmax(dim=1).numpy()
        elif self._output == "probs":
            out = logits.softmax(dim=1).numpy()
        else:
            out = logits.numpy()
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output(self._output, out)])

    @custom_handler(rest_path="/scrutiny/served", rest_method="GET")
    async def served(self) -> dict:
        return dict(_SERVED)
