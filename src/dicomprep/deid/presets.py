"""Named de-identification recipes (``deid.preset``) reproducing the seed procedures.

A preset is layered on the full PS3.15 Annex E basic profile (see
:mod:`.profile`) unless ``deid.preset_only`` asks for the preset alone:

* ``basic`` — the profile and the options of ``deid.options``, nothing more.
* ``orbitct`` — the OrbitCT export's recipe: mask PatientName, PatientID,
  PatientBirthDate, PatientSex, PatientAge, PatientAddress, the referring and
  performing physicians, the operators, InstitutionName/Address and
  AccessionNumber; remove **all** private attributes (no safe-private
  allowlist).
* ``cdti`` — the cardiac diffusion (cDTI) export's anonymisation: patient
  name/ID replaced by the pseudonym, birth date removed, patient characteristics
  kept (age capped, sex, size, weight: needed for cardiac analysis), dates shifted,
  series/protocol descriptions and image comments kept but cleaned (the
  converters name sequences from them), vendor diffusion/geometry private
  attributes kept through the allowlist.

Each recipe also lists its steps, in order, for ``share/audit.yaml`` (what the
cDTI export's ``anon_pipeline.yml`` recorded).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TypeVar

from pydicom.datadict import tag_for_keyword

from ..errors import ConfigError

#: The profile options (:class:`~.profile.ProfileOptions`; not imported: profile.py imports this module).
Options = TypeVar("Options")

#: Mask action of the presets: a dummy of the VR (PN, LO, DA ...); P = pseudonym.
MASK = "D"


@dataclass(frozen=True)
class Preset:
    """A named recipe: per-keyword actions, option changes and its documented steps."""

    name: str
    description: str
    keyword_actions: dict = field(default_factory=dict)
    force_options: dict = field(default_factory=dict)
    remove_all_private: bool = False
    steps: tuple = ()

    def adjust_options(self, options: Options) -> Options:
        """The options with this preset's forced values applied."""
        return replace(options, **self.force_options) if self.force_options else options

    def actions(self, options: Options) -> dict[int, str]:
        """``tag -> primitive action`` overriding the profile for this preset."""
        out = {}
        for keyword, action in self.keyword_actions.items():
            tag = tag_for_keyword(keyword)
            if tag is None:  # pragma: no cover - keywords are checked by the tests
                raise ValueError(f"preset {self.name}: unknown keyword {keyword}")
            out[int(tag)] = action
        return out


PRESETS: dict[str, Preset] = {
    "basic": Preset(
        name="basic",
        description="PS3.15 Annex E Basic Application Level Confidentiality Profile with the configured options.",
        steps=("basic profile",),
    ),
    "orbitct": Preset(
        name="orbitct",
        description="OrbitCT export recipe: mask patient, physician, operator, institution and accession "
                    "attributes; remove all private attributes.",
        keyword_actions={
            "PatientName": "P", "PatientID": "P", "PatientBirthDate": MASK, "PatientSex": MASK,
            "PatientAge": MASK, "PatientAddress": MASK, "ReferringPhysicianName": MASK,
            "PerformingPhysicianName": MASK, "OperatorsName": MASK, "InstitutionName": MASK,
            "InstitutionAddress": MASK, "AccessionNumber": MASK,
        },
        force_options={"retain_safe_private": False},
        remove_all_private=True,
        steps=(
            "mask PatientName, PatientID (pseudonym)",
            "mask PatientBirthDate, PatientSex, PatientAge, PatientAddress",
            "mask ReferringPhysicianName, PerformingPhysicianName, OperatorsName",
            "mask InstitutionName, InstitutionAddress, AccessionNumber",
            "remove all private attributes",
        ),
    ),
    "cdti": Preset(
        name="cdti",
        description="Cardiac diffusion export recipe: pseudonymise patient, keep patient characteristics, "
                    "shift dates, clean descriptors, keep vendor diffusion/geometry private attributes.",
        keyword_actions={
            "PatientName": "P", "PatientID": "P", "PatientBirthDate": "X",
            "PatientAge": "A", "PatientSex": "K", "PatientSize": "K", "PatientWeight": "K",
        },
        force_options={
            "retain_patient_characteristics": True, "retain_longitudinal_modified_dates": True,
            "clean_descriptors": True, "retain_safe_private": True,
        },
        steps=(
            "replace PatientName and PatientID with the patient pseudonym",
            "remove PatientBirthDate; keep PatientAge (capped at 90Y), PatientSex, PatientSize, PatientWeight",
            "shift dates by the per-patient offset",
            "clean SeriesDescription, ProtocolName, ImageComments of identifiers",
            "keep vendor diffusion/geometry private attributes (allowlist), remove other private attributes",
        ),
    ),
}


def get_preset(name: str | None) -> Preset:
    """The preset named in ``deid.preset``."""
    name = name or "basic"
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"config: deid.preset is {name!r}; allowed values: {', '.join(PRESETS)}.") from None
