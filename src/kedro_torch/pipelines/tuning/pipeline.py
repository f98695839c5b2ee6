from kedro.pipeline import Pipeline, node

from kedro_torch.pipelines import training
from kedro_torch.pipelines.tuning import nodes


def create_pipeline(**kwargs) -> Pipeline:
    # The training pipeline's own data stages: files checked and decoded once per study.
    data_stages = training.create_pipeline().only_nodes("ingest", "transform")
    return data_stages + Pipeline(
        [
            node(
                nodes.tune,
                ["model_input", "label_map", "preprocessing", "decoded_images",
                 "pretrained_state_dict", "study_storage", "params:data", "params:model",
                 "params:training", "params:tuning"],
                {
                    "best_params": "best_params",
                    "metrics": "tuning_metrics",
                    "trials": "tuning_trials",
                    "optimization_history": "optimization_history_plot",
                    "param_importances": "param_importances_plot",
                    "parallel_coordinate": "parallel_coordinate_plot",
                },
                name="tune",
            ),
            node(
                nodes.train_final_model,
                ["best_params", "model_input", "label_map", "preprocessing", "decoded_images",
                 "pretrained_state_dict", "params:data", "params:model", "params:training",
                 "params:tuning", "params:evaluation", "params:inference", "params:mlflow"],
                None,
                name="train_final_model",
            ),
        ]
    )
