"""Plots for asset metadata: saved as PNG beside the data and embedded in the UI as markdown."""

from __future__ import annotations

import base64
from pathlib import Path

import dagster as dg

from nait_pipeline.lib.io.lake import atomic_path


def bar_plot(values, labels, title: str, ylabel: str, destination: Path) -> dg.MarkdownMetadataValue:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3), dpi=90)
    axis.bar([str(label) for label in labels], values, color="#4f6db8")
    axis.set_title(title)
    axis.set_ylabel(ylabel)
    axis.tick_params(axis="x", labelsize=7)
    return _save(figure, destination, title)


def _save(figure, destination: Path, title: str) -> dg.MarkdownMetadataValue:
    """Lay out, write atomically, close, and embed a figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_path(destination, ".png") as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return embedded_png(destination, title)


def embedded_png(path: Path, title: str) -> dg.MarkdownMetadataValue:
    """A PNG file shown inline in the Dagster UI."""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")


def histogram_plot(values, title: str, xlabel: str, destination: Path, bins: int = 40) -> dg.MarkdownMetadataValue:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 2.6), dpi=90)
    axis.hist(values, bins=bins, color="#4f6db8")
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("examples")
    return _save(figure, destination, title)


def heatmap_plot(matrix, labels, title: str, destination: Path) -> dg.MarkdownMetadataValue:
    """A labelled square matrix (overlaps between subsets) with its values written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(3.0, 0.55 * len(labels) + 1.5)
    figure, axis = plt.subplots(figsize=(size + 1, size), dpi=90)
    image = axis.imshow(matrix, vmin=0.0, vmax=1.0, cmap="Blues")
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    axis.set_yticks(range(len(labels)), labels, fontsize=7)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                      color="white" if value > 0.6 else "black")
    axis.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.046)
    return _save(figure, destination, title)


def contribution_heatmap(matrix, row_labels, title: str, destination: Path) -> dg.MarkdownMetadataValue:
    """Rows (examples) by columns (layers, 1 first), values scaled to [-1, 1], diverging colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 0.3 * len(row_labels) + 1.5), dpi=90)
    image = axis.imshow(matrix, vmin=-1.0, vmax=1.0, cmap="RdBu_r", aspect="auto")
    axis.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
    axis.set_xticks(range(matrix.shape[1]), [str(i + 1) for i in range(matrix.shape[1])], fontsize=6)
    axis.set_xlabel("layer")
    axis.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.03)
    return _save(figure, destination, title)
