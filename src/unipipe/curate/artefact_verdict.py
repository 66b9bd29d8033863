"""The slide verdict (pass / warn / fail) from artefact fractions of tissue area and stain type."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

from unipipe.curate.artefact_stain import StainType
from unipipe.errors import ConfigError

__all__ = ["Verdict", "VerdictParams", "judge"]

Verdict = Literal["pass", "warn", "fail"]
_SEVERITY = {"ignore": 0, "warn": 1, "fail": 2}


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerdictParams:
    """Limits of the slide verdict (config ``curate.artefacts.verdict``).

    Fractions are of the tissue area. A class over its warn limit makes the slide
    "warn", over its fail limit "fail"; the same holds for all artefacts together.

    Attributes:
        warn_fraction: default warn limit of one artefact class.
        fail_fraction: default fail limit of one artefact class.
        class_warn_fraction: per-class warn limits, by class name (override the default).
        class_fail_fraction: per-class fail limits, by class name.
        warn_total_fraction: warn limit of all artefact classes together.
        fail_total_fraction: fail limit of all artefact classes together.
        min_tissue_mm2: a slide with less tissue than this (mm²) fails.
        non_he_stain: what a stain that does not look like H&E (IHC, or no eosin; see
            ``StainParams``) does to the verdict: "warn" (default), "fail" or "ignore".
            Mass-100K is H&E only. No verdict removes a slide from the shards or from
            pretraining today; drop flagged slides from the manifest to exclude them.
    """

    warn_fraction: float = 0.05
    fail_fraction: float = 0.5
    class_warn_fraction: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"glass": 0.15}
    )
    class_fail_fraction: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"glass": 0.6}
    )
    warn_total_fraction: float = 0.2
    fail_total_fraction: float = 0.6
    min_tissue_mm2: float = 0.05
    non_he_stain: Literal["ignore", "warn", "fail"] = "warn"

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_warn_fraction", dict(self.class_warn_fraction))
        object.__setattr__(self, "class_fail_fraction", dict(self.class_fail_fraction))
        pairs = [("warn_fraction", "fail_fraction"), ("warn_total_fraction", "fail_total_fraction")]
        for warn, fail in pairs:
            if not 0 <= getattr(self, warn) <= getattr(self, fail) <= 1:
                raise ConfigError(
                    f"curate.artefacts.verdict needs 0 <= {warn} <= {fail} <= 1, got "
                    f"{getattr(self, warn)!r} and {getattr(self, fail)!r}"
                )
        for name in ("class_warn_fraction", "class_fail_fraction"):
            for cls, value in getattr(self, name).items():
                if not 0 <= value <= 1:
                    raise ConfigError(f"curate.artefacts.verdict.{name}.{cls} must be in [0, 1]")
        if self.min_tissue_mm2 < 0:
            raise ConfigError("curate.artefacts.verdict.min_tissue_mm2 must be >= 0")
        if self.non_he_stain not in _SEVERITY:
            raise ConfigError(
                f"curate.artefacts.verdict.non_he_stain must be one of {sorted(_SEVERITY)}, "
                f"got {self.non_he_stain!r}"
            )

    def limits(self, name: str) -> tuple[float, float]:
        """(warn, fail) fraction limits of artefact class ``name``."""
        return (
            float(self.class_warn_fraction.get(name, self.warn_fraction)),
            float(self.class_fail_fraction.get(name, self.fail_fraction)),
        )


def judge(
    fractions: Mapping[str, float],
    tissue_mm2: float,
    params: VerdictParams,
    *,
    stain: StainType | None = None,
) -> tuple[Verdict, list[str]]:
    """The verdict and its reasons, in words, from artefact fractions of tissue area.

    Args:
        fractions: artefact class name -> fraction of the tissue area.
        tissue_mm2: tissue area of the slide in mm².
        params: the limits.
        stain: the slide's stain type; a non-H&E one adds its reason at the severity
            ``params.non_he_stain``.
    """
    reasons: list[tuple[int, str]] = []  # (severity 1 = warn, 2 = fail, text)
    if tissue_mm2 < params.min_tissue_mm2:
        reasons.append(
            (2, f"only {tissue_mm2:.3f} mm² of tissue (fail below {params.min_tissue_mm2} mm²)")
        )
    for name, fraction in fractions.items():
        warn, fail = params.limits(name)
        severity = 2 if fraction > fail else 1 if fraction > warn else 0
        if severity:
            reasons.append(
                (
                    severity,
                    f"{name} covers {100 * fraction:.1f}% of tissue "
                    f"(warn above {100 * warn:g}%, fail above {100 * fail:g}%)",
                )
            )
    total = sum(fractions.values())
    severity = (
        2 if total > params.fail_total_fraction else 1 if total > params.warn_total_fraction else 0
    )
    if severity:
        reasons.append(
            (
                severity,
                f"artefacts cover {100 * total:.1f}% of tissue in all "
                f"(warn above {100 * params.warn_total_fraction:g}%, "
                f"fail above {100 * params.fail_total_fraction:g}%)",
            )
        )
    if stain is not None and stain.reason and _SEVERITY[params.non_he_stain]:
        reasons.append((_SEVERITY[params.non_he_stain], stain.reason))
    worst = max((s for s, _ in reasons), default=0)
    verdict: Verdict = ("pass", "warn", "fail")[worst]
    return verdict, [text for _, text in reasons]
