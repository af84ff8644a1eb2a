"""Model wrappers, the model zoo and training."""

from scrutiny.models.query import QueryModel
from scrutiny.models.weights import load_factory, load_weights, save_weights
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.models.zoo import MLP, RECIPES, SmallCNN, build, load_built, pretrained, save_built

__all__ = ["MLP", "RECIPES", "QueryModel", "SmallCNN", "TorchModel", "as_model", "build",
           "load_built", "load_factory", "load_weights", "pretrained", "save_built", "save_weights"]

from scrutiny.models.http import HttpModel, ModelUnavailableError, serve  # noqa: E402
from scrutiny.models.onnx import OnnxModel  # noqa: E402  (onnxruntime is imported lazily)

__all__ += ["HttpModel", "ModelUnavailableError", "OnnxModel", "serve"]
