from kedro.pipeline import Pipeline, node

from kedro_torch.pipelines.training import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                nodes.ingest_images,
                ["raw_images", "raw_manifest", "params:data"],
                "image_manifest",
                name="ingest",
            ),
            node(
                nodes.prepare_model_input,
                ["image_manifest", "previous_image_cache", "params:data"],
                ["model_input", "label_map", "normalization", "data_quality_report",
                 "decoded_images", "image_cache"],
                name="transform",
            ),
            node(
                nodes.build_dataloaders,
                ["model_input", "normalization", "decoded_images", "params:data",
                 "params:training"],
                "dataloaders",
                name="build_dataloaders",
            ),
            node(
                nodes.build_model,
                ["label_map", "params:data", "params:model", "params:training",
                 "pretrained_state_dict"],
                "model",
                name="build_model",
            ),
            node(
                nodes.train_model,
                ["model", "dataloaders", "training_checkpoints", "model_input", "label_map",
                 "normalization", "params:data", "params:model", "params:training"],
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
                    "confusion_matrix": "confusion_matrix_plot",
                    "learning_curve": "learning_curve_plot",
                    "reliability": "reliability_diagram",
                    "per_class": "per_class_metrics_plot",
                    "gallery": "prediction_gallery",
                },
                name="evaluate",
            ),
            node(
                nodes.package_model,
                ["trained_state_dict", "model_spec", "label_map", "evaluation_report",
                 "params:inference", "params:mlflow"],
                "mlflow_model",
                name="package_model",
            ),
        ]
    )
