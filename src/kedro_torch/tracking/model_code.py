"""The file MLflow runs to build the logged model when it loads it ("models from
code"), so loading the model unpickles nothing."""

from mlflow.models import set_model

from kedro_torch.tracking.model import ImageClassifierModel

set_model(ImageClassifierModel())
