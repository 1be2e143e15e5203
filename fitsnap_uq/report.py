"""Reports: one document written as Markdown and as HTML (same content), and the plots they show.

:class:`Report` collects headings, paragraphs, tables and images and writes ``report.md`` and
``report.html`` side by side (the HTML embeds nothing: images are the same PNG files beside it). The
plot functions take numpy arrays and write a PNG; they know nothing of FitSNAP or LAMMPS.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fitsnap_uq.io import atomic_write
from fitsnap_uq.plotting import pyplot, save

_CSS = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;"
        "line-height:1.45;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:.9em}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}"
        "figure{margin:1.5em 0}figcaption{font-size:.9em;color:#555}img{max-width:100%}"
        "code{background:#f3f3f3;padding:0 .2em}")


@dataclass
class Report:
    """A document of blocks, written as Markdown and HTML.

    Attributes:
        title: the document's title (``# title`` / ``<h1>``).
        blocks: (kind, payload) in order; kinds: heading, text, table, image, code.
    """

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, paragraph: str) -> None:
        """A paragraph (plain text; ``code`` spans in backticks are kept)."""
        self.blocks.append(("text", paragraph))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def table(self, frame: pd.DataFrame, floatfmt: str = ".4g") -> None:
        self.blocks.append(("table", (frame, floatfmt)))

    def image(self, path: str | Path, caption: str) -> None:
        """A figure; ``path`` relative to the report's folder."""
        self.blocks.append(("image", (str(path), caption)))

    # ----------------------------------------------------------------- output
    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, payload in self.blocks:
            if kind == "heading":
                out += ["#" * payload[0] + " " + payload[1], ""]
            elif kind == "text":
                out += [payload, ""]
            elif kind == "code":
                out += ["```", payload, "```", ""]
            elif kind == "table":
                frame, fmt = payload
                out += [frame.to_markdown(index=False, floatfmt=fmt), ""]
            elif kind == "image":
                path, caption = payload
                out += [f"![{caption}]({path})", "", f"*{caption}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
               f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>",
               f"<h1>{html.escape(self.title)}</h1>"]
        for kind, payload in self.blocks:
            if kind == "heading":
                level = min(payload[0], 6)
                out.append(f"<h{level}>{html.escape(payload[1])}</h{level}>")
            elif kind == "text":
                out.append(f"<p>{_inline_code(payload)}</p>")
            elif kind == "code":
                out.append(f"<pre><code>{html.escape(payload)}</code></pre>")
            elif kind == "table":
                frame, fmt = payload
                out.append(frame.to_html(index=False, float_format=lambda x, f=fmt: format(x, f),
                                         border=0))
            elif kind == "image":
                path, caption = payload
                out.append(f"<figure><img src='{html.escape(path)}' alt='{html.escape(caption)}'>"
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out)

    def write(self, folder: str | Path, stem: str = "report") -> tuple[Path, Path]:
        """Write ``<stem>.md`` and ``<stem>.html`` in ``folder`` (atomically); return their paths."""
        folder = Path(folder)
        paths = []
        for suffix, text in ((".md", self.markdown()), (".html", self.html())):
            path = folder / f"{stem}{suffix}"
            atomic_write(path, text.encode("utf-8"))
            paths.append(path)
        return paths[0], paths[1]


def _inline_code(text: str) -> str:
    parts = text.split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p)
                   for i, p in enumerate(parts))


# --------------------------------------------------------------------- plots
def parity_plot(path: str | Path, panels: Sequence[dict[str, Any]], title: str = "") -> Path:
    """Parity plots with error bars, one panel each.

    Args:
        panels: dicts with ``truth`` (n,), ``mean`` (n,), ``half`` (n,) interval half-width (same unit),
            ``label`` (e.g. ``"force component"``), ``unit`` (e.g. ``"eV/A"``) and ``level`` (e.g. 0.95).
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for ax, p in zip(axes[0], panels):
        truth, mean, half = (np.asarray(p[k], dtype=float) for k in ("truth", "mean", "half"))
        inside = np.abs(truth - mean) <= half
        ax.errorbar(truth[inside], mean[inside], yerr=half[inside], fmt="o", ms=3, lw=0.8, alpha=0.6,
                    color="tab:blue", label=f"truth inside {p['level']:.0%} interval ({inside.mean():.0%})")
        ax.errorbar(truth[~inside], mean[~inside], yerr=half[~inside], fmt="o", ms=3, lw=0.8, alpha=0.8,
                    color="tab:red", label="truth outside")
        lo = float(min(truth.min(), (mean - half).min()))
        hi = float(max(truth.max(), (mean + half).max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.4", lw=1, ls="--")
        rmse = float(np.sqrt(np.mean((truth - mean) ** 2)))
        ax.set_xlabel(f"QM {p['label']} ({p['unit']})")
        ax.set_ylabel(f"SNAP {p['label']} ({p['unit']})")
        ax.set_title(f"{p['label']}: RMSE {rmse:.3g} {p['unit']}", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path, dpi=110)


def md_uncertainty_plot(path: str | Path, runs: dict[str, tuple[np.ndarray, np.ndarray]],
                        threshold: float | None = None, quantity: str = "per-atom force std",
                        unit: str = "eV/A") -> Path:
    """Per-atom uncertainty along MD runs: median, 5-95% band and maximum over the atoms.

    Args:
        runs: {label: (time (T,) in ps, values (T, N) per atom and frame)}.
        threshold: a horizontal line (e.g. the flagging threshold), same unit.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for (label, (time, values)), color in zip(runs.items(), ("tab:red", "tab:blue", "tab:green")):
        values = np.asarray(values, dtype=float)
        ax.fill_between(time, np.percentile(values, 5, axis=1), np.percentile(values, 95, axis=1),
                        color=color, alpha=0.2, lw=0)
        ax.plot(time, np.median(values, axis=1), color=color, lw=1.5, label=f"{label}: median (5-95% band)")
        ax.plot(time, values.max(axis=1), color=color, lw=1, ls=":", label=f"{label}: max over atoms")
    if threshold is not None:
        ax.axhline(threshold, color="0.3", ls="--", lw=1, label=f"flagging threshold {threshold:g} {unit}")
    ax.set_xlabel("time (ps)")
    ax.set_ylabel(f"{quantity} ({unit})")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path, dpi=110)


def learning_curve_plot(path: str | Path, qm_calls: np.ndarray, force_rmse: np.ndarray,
                        energy_rmse: np.ndarray) -> Path:
    """Test force (eV/A) and energy (meV/atom) RMSE against labelled configurations."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4))
    ax.plot(qm_calls, force_rmse, "o-", color="tab:blue", label="force RMSE")
    ax.set_xlabel("labelled training configurations (QM calls)")
    ax.set_ylabel("test force RMSE (eV/A)", color="tab:blue")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(qm_calls, 1000 * np.asarray(energy_rmse), "s--", color="tab:orange", label="energy RMSE")
    ax2.set_ylabel("test energy RMSE (meV/atom)", color="tab:orange")
    ax2.set_ylim(bottom=0)
    ax.set_title("Active learning: error on an independent QM test set", fontsize=10)
    fig.tight_layout()
    return save(fig, path, dpi=110)


def ensemble_plot(path: str | Path, time: np.ndarray, values: np.ndarray, label: str, unit: str,
                  average: dict[str, float] | None = None, average_from: float | None = None) -> Path:
    """One MD observable over a posterior ensemble: each replica, the mean and the 95% prediction band
    (:func:`fitsnap_uq.timeseries.prediction_band`: Student t over the K replicas, not their quantiles).

    Args:
        time: (T,) ps. values: (K, T) the observable of each replica.
        average: optional interval of the replicas' time averages (``mean``, ``lo``, ``hi``), drawn
            over the averaging window from ``average_from`` (ps) to the end.
    """
    from fitsnap_uq.timeseries import prediction_band

    plt = pyplot()
    values = np.asarray(values, dtype=float)
    band = prediction_band(values, axis=0)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for k, row in enumerate(values):
        ax.plot(time, row, color="0.6", lw=0.7, label="replicas" if k == 0 else None)
    ax.fill_between(time, band["lo"], band["hi"], color="tab:blue", alpha=0.2, lw=0,
                    label="95% prediction band over replicas")
    ax.plot(time, band["mean"], color="tab:blue", lw=1.8, label="ensemble mean")
    if average is not None and average_from is not None:
        ax.fill_between([average_from, float(time[-1])], average["lo"], average["hi"], color="tab:red",
                        alpha=0.3, lw=0, label="time average: 95% prediction interval")
        ax.hlines(average["mean"], average_from, float(time[-1]), color="tab:red", lw=1.5)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel(f"{label} ({unit})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path, dpi=110)
