"""What a dump is written with: plain .npy/.json/.jsonl/.pkl/.pt files in one folder, each listed with
its shape and a description, so a manifest can say what every file is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nait_pipeline.lib.io.lake import atomic_path, write_json


class Dump:
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.files: dict[str, dict] = {}
        out_dir.mkdir(parents=True, exist_ok=True)

    def array(self, name: str, values: np.ndarray, description: str) -> None:
        with atomic_path(self.out_dir / name, ".npy") as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, values)
        self.files[name] = {"shape": list(values.shape), "dtype": str(values.dtype), "description": description}

    def json(self, name: str, value, description: str) -> None:
        write_json(value, self.out_dir / name)
        self.files[name] = {"description": description}

    def pickle(self, name: str, value, description: str) -> None:
        """For official scripts that read pickles (LP's subset.py); plain lists and dicts only."""
        import pickle

        with atomic_path(self.out_dir / name, ".pkl") as tmp, open(tmp, "wb") as handle:
            pickle.dump(value, handle)
        self.files[name] = {"description": description}

    def jsonl(self, name: str, records: list[dict], description: str) -> None:
        with atomic_path(self.out_dir / name, ".jsonl") as tmp, open(tmp, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.files[name] = {"rows": len(records), "description": description}


def torch_file(dump: Dump, name: str, values: np.ndarray, description: str) -> None:
    """A tensor file for official scripts that ``torch.load`` their inputs."""
    import torch

    path = dump.out_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".pt") as tmp:
        torch.save(torch.from_numpy(np.ascontiguousarray(values)), tmp)
    dump.files[name] = {"shape": list(values.shape), "dtype": str(values.dtype), "description": description}
