"""The file MLflow runs to build the logged model when it loads it ("models from
code"), so loading the model unpickles nothing. The model's config, given when it
was logged, says which kind of model it is."""

from mlflow.models import ModelConfig, set_model

from kedro_torch.tracking.model import MODEL_KINDS

set_model(MODEL_KINDS[ModelConfig().get("kind")]())
