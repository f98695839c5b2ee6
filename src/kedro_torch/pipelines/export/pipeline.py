from kedro.pipeline import Pipeline, node

from kedro_torch.pipelines.export import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                nodes.export_model,
                ["trained_state_dict", "model_spec", "label_map"],
                ["torchscript_model", "exported_program"],
                name="export",
            ),
            # Reads the exports back through the catalog, i.e. from the files written.
            node(
                nodes.verify_exports,
                ["torchscript_model", "exported_program", "trained_state_dict", "model_spec",
                 "label_map", "model_input", "params:data", "params:export"],
                "export_report",
                name="verify_exports",
            ),
        ]
    )
