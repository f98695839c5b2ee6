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
                ["model", "dataloaders", "training_checkpoints", "label_map",
                 "params:training", "params:model"],
                ["trained_state_dict", "training_history", "trained_model"],
                name="train",
            ),
            node(
                nodes.evaluate_model,
                ["trained_model", "dataloaders", "label_map", "training_history",
                 "params:training", "params:evaluation"],
                ["evaluation_report", "test_metrics", "test_predictions",
                 "confusion_matrix_plot", "learning_curve_plot", "reliability_diagram",
                 "per_class_metrics_plot", "prediction_gallery"],
                name="evaluate",
            ),
            node(
                nodes.package_model,
                ["trained_state_dict", "label_map", "normalization", "evaluation_report",
                 "params:data",
                 "params:model", "params:inference", "params:mlflow"],
                ["model_spec", "mlflow_model"],
                name="package_model",
            ),
        ]
    )
