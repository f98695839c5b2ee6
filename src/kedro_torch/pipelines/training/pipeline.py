from kedro.pipeline import Pipeline, node

from kedro_torch.pipelines.training import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                nodes.ingest,
                ["raw_images", "raw_manifest", "raw_table", "params:data"],
                "image_manifest",
                name="ingest",
            ),
            node(
                nodes.prepare_model_input,
                ["image_manifest", "previous_image_cache", "params:data"],
                ["model_input", "label_map", "preprocessing", "data_quality_report",
                 "decoded_images", "image_cache"],
                name="transform",
            ),
            node(
                nodes.build_dataloaders,
                ["model_input", "preprocessing", "decoded_images", "params:data",
                 "params:training"],
                "dataloaders",
                name="build_dataloaders",
            ),
            node(
                nodes.build_model,
                ["label_map", "preprocessing", "params:data", "params:model",
                 "params:training", "pretrained_state_dict"],
                "model",
                name="build_model",
            ),
            node(
                nodes.train_model,
                ["model", "dataloaders", "training_checkpoints", "model_input", "label_map",
                 "preprocessing", "params:data", "params:model", "params:training"],
                ["trained_state_dict", "training_history", "model_spec"],
                name="train",
            ),
            # From here on every input is a saved file: `--from-nodes evaluate` reruns
            # evaluation and packaging on the latest trained model.
            node(
                nodes.evaluate_model,
                ["trained_state_dict", "model_spec", "model_input", "label_map",
                 "training_history", "image_cache", "params:data", "params:training",
                 "params:evaluation"],
                {
                    "report": "evaluation_report",
                    "metrics": "test_metrics",
                    "predictions": "test_predictions",
                    "per_class": "per_class_table",
                    "plots": "evaluation_plots",
                },
                name="evaluate",
            ),
            node(
                nodes.package_model,
                ["trained_state_dict", "model_spec", "label_map", "evaluation_report",
                 "model_input", "params:inference", "params:mlflow"],
                "mlflow_model",
                name="package_model",
            ),
        ]
    )
