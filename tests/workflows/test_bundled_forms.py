"""The bundled journeys and pipelines are written in the authoring forms (one import,
keywords, nested branches, an enrolment anchor) and still compile to the versions
already published: those hashes are pinned by running enrolments and recorded histories.
"""

from __future__ import annotations

import re
from pathlib import Path

from stagecoach.engine.domain.journeys import AnchoredWaitStep, ValidationContext
from stagecoach.workflows.events import CATALOG
from stagecoach.workflows.journeys import JOURNEYS, compile_journeys
from stagecoach.workflows.pipeline import PIPELINES

# The versions published before the authoring forms existed (see also
# tests/engine/domain/snapshots/serial.json). A new hash here is a new version.
PUBLISHED_JOURNEYS = {
    "b2b_nurture": "cab061fc6e350fb3ba9194c6c2bd1bc297f658ea1c03b204396fb3003664c9dd",
    "nps_survey": "0175c7918c8552c9d2ac088828a4f2c704b1f65713a8b38eeccfb81bdbd70c94",
    "onboarding": "84029fa29551237c0741fbb583ec90c9521cddb23e5d0a0d38d4dcde91da2305",
    "value_nurture": "8f0c56bf04e2ec11b2bd06689b995063ac73b9070962e8b6a6c970f541128373",
    # Issue 23's delight journeys: new, so new versions.
    "cross_sell": "fafef6e0df0e34ee1df57be7eeb1366eca436f30e54441c9c18d972a30fb134a",
    "replenishment": "f185f9231dc19a37ade79ce8bf7b9661e6769515006b068edb890ee561933f56",
    "win_back": "3e2928d8a304c106405174c9ff8b14e5f6b7adfa81e588b75c64fe9e32b5600c",
}
PUBLISHED_PIPELINES = {
    "b2b_funnel": "e72a4a929f2e6e20af8076eb1f6eee337baaf720374bca6837671d385d36068a",
    # Issue 23 added the dormant state and the dormant and won_back detours: a new version
    # (was 70f6b8799dc8249880a1a4785116df97b02e187335546d1752059595ca54457e), then the
    # dormant detour read churn risk instead of p_alive (was cf72f52c...), then waited for
    # a value refresh's verdict, so that an import of old orders makes no one dormant
    # (was 5a31a1c2...).
    "default": "456dcb31c9544339b773925c9816e1951c7852cd25e3b571f87bad302f0ae316",
}

EXAMPLES = Path(__file__).parents[2] / "examples"
BUNDLED = EXAMPLES / "lifecycle" / "lifecycle"


def test_bundled_journeys_keep_their_published_versions() -> None:
    ctx = ValidationContext(frozenset(CATALOG.names()), frozenset(PIPELINES["default"].stage_names))
    specs = compile_journeys(ctx)
    assert {name: spec.version for name, spec in specs.items()} == PUBLISHED_JOURNEYS


def test_bundled_pipelines_keep_their_published_versions() -> None:
    assert {name: p.version for name, p in PIPELINES.items()} == PUBLISHED_PIPELINES


def test_the_bundled_definitions_are_written_in_the_authoring_forms() -> None:
    for path in sorted(BUNDLED.glob("journeys/*.py")):
        source = path.read_text("utf-8")
        if path.name == "__init__.py":
            continue
        assert "\nfrom stagecoach import " in source, path.name
        assert "stagecoach.engine.domain" not in source, path.name
        assert "wait(days=" not in source, path.name
    assert "then=[" in (BUNDLED / "journeys" / "b2b_nurture.py").read_text("utf-8")
    assert any(isinstance(s, AnchoredWaitStep) for s in JOURNEYS["value_nurture"].steps)
    lifecycle = (BUNDLED / "pipeline.py").read_text("utf-8")
    funnel = (EXAMPLES / "b2b_funnel" / "b2b_funnel" / "pipeline.py").read_text("utf-8")
    for pipeline in (lifecycle, funnel):
        assert not re.search(r'Stage\("\w+", "[^"]*", "', pipeline)
    assert lifecycle.count("label_zh=") == 9  # seven stages and two phases
    assert funnel.count("label_zh=") == 5  # four stages and one phase
