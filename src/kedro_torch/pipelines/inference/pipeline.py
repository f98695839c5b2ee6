from kedro.pipeline import Pipeline, node

from kedro_torch.pipelines.inference import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                nodes.predict,
                ["inference_images", "inference_table", "trained_state_dict", "model_spec",
                 "label_map", "params:inference"],
                ["inference_predictions", "inference_failures", "inference_masks",
                 "inference_coco_results"],
                name="predict",
            ),
        ]
    )
