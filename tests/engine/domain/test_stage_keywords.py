"""``Stage(name, label, label_zh=..., phase=...)``: the two easily swapped texts by
keyword. The older all-positional form still builds the same stage, with a warning that
shows the keyword form; a value that is not text is refused naming the field."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest

from stagecoach.engine.domain.pipeline import Stage


def test_the_keyword_form_builds_the_stage():
    stage = Stage("lead", "Lead", label_zh="线索", phase="acquisition")
    assert (stage.name, stage.label, stage.label_zh, stage.phase) == (
        "lead",
        "Lead",
        "线索",
        "acquisition",
    )
    assert Stage(name="lead", label="Lead", label_zh="线索", phase="acquisition") == stage
    assert stage.to_dict() == {
        "name": "lead",
        "label": "Lead",
        "label_zh": "线索",
        "phase": "acquisition",
    }
    assert Stage.from_dict(stage.to_dict()) == stage
    assert replace(stage, phase="delight").phase == "delight"


def test_the_positional_form_still_works_and_says_how_to_write_it():
    with pytest.warns(FutureWarning, match="by keyword") as caught:
        stage = Stage("lead", "Lead", "线索", "acquisition")
    assert stage == Stage("lead", "Lead", label_zh="线索", phase="acquisition")
    assert str(caught[0].message) == (
        "Stage 'lead': pass label_zh='线索', phase='acquisition' by keyword (Stage(name,"
        " label, label_zh='线索', phase='acquisition')); the positional form will be removed"
    )
    assert caught[0].filename == __file__


def test_name_and_label_alone_need_no_keyword():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Stage("lead", "Lead") == Stage(name="lead", label="Lead")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: Stage("lead", "Lead", label_zh=None),  # type: ignore[arg-type]
            r"Stage 'lead': label_zh must be text, not None; write Stage\('lead', 'Lead',"
            r" label_zh='线索', phase='acquisition'\)",
        ),
        (
            lambda: Stage("lead", "Lead", phase=("acquisition",)),  # type: ignore[arg-type]
            r"Stage 'lead': phase must be text, not \('acquisition',\).*\(the phase's name\)",
        ),
        (lambda: Stage("lead", 3), r"Stage 'lead': label must be text, not 3"),  # type: ignore[arg-type]
        (
            lambda: Stage("lead", "Lead", "线索", "acquisition", "extra"),
            r"Stage 'lead': takes name and label by position, then label_zh= and phase= by"
            r" keyword; 5 values were given by position",
        ),
        (
            lambda: Stage("lead", "Lead", "线索", label_zh="线索"),
            r"Stage 'lead': label_zh is given twice; give it by keyword",
        ),
    ],
)
def test_a_wrong_stage_is_refused_naming_the_field(build, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with pytest.raises(TypeError, match=message):
            build()
