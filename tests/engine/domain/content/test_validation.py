"""A broken catalog fails validation with the file, the field and the fix, every time."""

from __future__ import annotations

from pathlib import Path

import pytest

from stagecoach.engine.domain.content import (
    ContentLibrary,
    ContentProblem,
    ContentValidationError,
)


def problems_of(root: Path) -> tuple[ContentProblem, ...]:
    with pytest.raises(ContentValidationError) as caught:
        ContentLibrary.load(root)
    return caught.value.problems


def only_problem(root: Path) -> ContentProblem:
    problems = problems_of(root)
    assert len(problems) == 1, [p.one_line() for p in problems]
    return problems[0]


def test_a_minimal_valid_item_loads(write_item):
    library = ContentLibrary.load(write_item())
    assert [i.id for i in library.items] == ["sample"]


def test_front_matter_that_does_not_parse_names_the_file_and_the_line(write_item):
    root = write_item(raw_item_md="---\nid: sample\nkind: [whitepaper\n---\n")
    problem = only_problem(root)
    assert problem.file == "content/sample/item.md"
    assert problem.field == "front matter"
    assert "does not parse" in problem.message
    assert "YAML syntax" in problem.fix


def test_an_item_without_front_matter_is_refused(write_item):
    problem = only_problem(write_item(raw_item_md="# Just a title\n"))
    assert problem.field == "front matter"
    assert "'---'" in problem.fix


def test_unknown_kind_lists_the_kinds(write_item):
    problem = only_problem(write_item(kind="brochure"))
    assert (problem.field, problem.file) == ("kind", "content/sample/item.md")
    assert "'brochure'" in problem.message
    assert "whitepaper" in problem.fix
    assert "referral_offer" in problem.fix


def test_unknown_stage_lists_the_funnel_stages(write_item):
    problem = only_problem(write_item(stage="lead"))
    assert problem.field == "stage"
    assert "awareness, evaluation, purchase, retention, advocacy" in problem.fix


def test_a_misspelt_field_is_reported_not_ignored(write_item):
    problem = only_problem(write_item(priorty=5))
    assert problem.field == "priorty"
    assert "unknown field" in problem.message


def test_a_missing_required_field_is_reported(write_item):
    problem = only_problem(write_item(asset_url=None))
    assert problem.field == "asset_url"
    assert "missing" in problem.message


def test_template_syntax_error_names_the_template_and_line(write_item):
    root = write_item(files={"email.en.txt.j2": "Hello\n{{ first_name }\n{{ unsubscribe_url }}"})
    problem = only_problem(root)
    assert problem.file == "content/sample/email.en.txt.j2"
    assert problem.field == "template line 2"
    assert "syntax error" in problem.message


def test_an_undeclared_variable_is_a_validation_error_not_a_blank(write_item):
    root = write_item(files={"email.en.subject.j2": "News for {{ company }}"})
    problem = only_problem(root)
    assert problem.file == "content/sample/email.en.subject.j2"
    assert "undefined variable company" in problem.message
    assert "declare each under 'variables:'" in problem.fix


def test_an_undeclared_variable_on_a_branch_defaults_never_take_is_still_found(write_item):
    source = "{% if first_name == 'x' %}{{ job_title }}{% endif %}News"
    problem = only_problem(write_item(files={"email.en.subject.j2": source}))
    assert "job_title" in problem.message


def test_a_variable_without_a_default_for_a_declared_locale_is_refused(write_item):
    root = write_item(locales=["en"], variables={"first_name": {"zh-CN": "朋友"}})
    problem = only_problem(root)
    assert problem.field == "variables.first_name.en"


@pytest.mark.parametrize(
    "expression",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ first_name|attr('__class__') }}",
        "{{ first_name['__class__'] }}",
        "{{ first_name._private }}",
    ],
)
def test_a_template_reaching_for_python_internals_fails_validation(write_item, expression):
    root = write_item(files={"email.en.subject.j2": f"News {expression}"})
    problem = only_problem(root)
    assert problem.file == "content/sample/email.en.subject.j2"
    assert "Python internals" in problem.message


def test_an_oversized_wechat_field_names_item_locale_and_field(write_item):
    data = {
        "template_id": "TM-1",
        "data": {"keyword1": "A title that is much too long for WeChat"},
    }
    import yaml

    root = write_item(files={"wechat.en.template.yaml": yaml.safe_dump(data)})
    problem = only_problem(root)
    assert problem.file == "content/sample/wechat.en.template.yaml"
    assert problem.field == "data.keyword1"
    assert "sample (en)" in problem.message
    assert "20" in problem.message


def test_a_long_default_overflowing_a_wechat_field_is_caught_at_load(write_item):
    root = write_item(variables={"first_name": {"en": "a rather long default name"}})
    problem = only_problem(root)
    assert problem.field == "data.first"


def test_a_line_break_in_a_wechat_field_is_refused(write_item):
    data = {"template_id": "TM-1", "data": {"first": "Hi{{ '\\n' }}there"}}
    import yaml

    problem = only_problem(write_item(files={"wechat.en.template.yaml": yaml.safe_dump(data)}))
    assert problem.field == "data.first"
    assert "line break" in problem.message


def test_a_declared_locale_without_its_templates_is_a_missing_variant(write_item):
    root = write_item(files={"email.en.html.j2": None})
    problem = only_problem(root)
    assert problem.file == "content/sample/item.md"
    assert problem.field == "locales"
    assert "no email.en.html.j2" in problem.message
    assert problem.fix == "add email.en.html.j2, or remove en from locales"


def test_a_declared_locale_without_a_wechat_variant_is_reported(write_item):
    problem = only_problem(write_item(files={"wechat.en.template.yaml": None}))
    assert "channel wechat" in problem.message


def test_templates_for_an_undeclared_locale_are_reported(write_item):
    problem = only_problem(write_item(files={"email.fr.subject.j2": "Bonjour"}))
    assert "does not declare it" in problem.message


def test_an_email_without_a_visible_unsubscribe_link_is_refused(write_item):
    root = write_item(files={"email.en.txt.j2": "Hello {{ first_name }}"})
    problem = only_problem(root)
    assert problem.file == "content/sample/email.en.txt.j2"
    assert problem.field == "unsubscribe_url"


def test_every_problem_is_reported_at_once(write_item):
    write_item("one", kind="brochure")
    root = write_item("two", stage="nowhere", files={"email.en.subject.j2": "{{ nope }}"})
    problems = problems_of(root)
    assert {(p.file, p.field) for p in problems} == {
        ("content/one/item.md", "kind"),
        ("content/two/item.md", "stage"),
    }


def test_the_error_reads_as_one_line_with_each_fix(write_item):
    with pytest.raises(ContentValidationError) as caught:
        ContentLibrary.load(write_item(kind="brochure"))
    line = caught.value.one_line()
    assert "\n" not in line
    assert "content/sample/item.md: kind: unknown kind 'brochure'" in line


def test_an_id_that_differs_from_its_directory_is_refused(write_item):
    problem = only_problem(write_item("sample", id="other"))
    assert problem.field == "id"


def test_a_template_that_fails_when_rendered_is_a_validation_error(write_item):
    problem = only_problem(write_item(files={"email.en.subject.j2": "News {{ 1 / 0 }}"}))
    assert problem.file == "content/sample/email.en.subject.j2"
    assert problem.field == "email.en"
    assert "division by zero" in problem.message


def test_a_missing_catalog_directory_is_reported(tmp_path):
    problem = only_problem(tmp_path / "nowhere")
    assert problem.field == "directory"
