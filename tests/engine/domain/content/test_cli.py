"""``stagecoach content``: list, show, validate and preview, as a marketer runs them."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stagecoach.engine.cli.content import content_app
from stagecoach.engine.domain.content import ContentError, UnknownContentError

runner = CliRunner()


def run(*args: str):
    return runner.invoke(content_app, list(args))


def test_list_shows_every_bundled_item():
    result = run("list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["ID", "KIND", "STAGE"]
    assert len(lines) == 23
    assert any(line.startswith("coupon-annual-plan") and "2027-06-30" in line for line in lines)


def test_list_as_json():
    items = json.loads(run("list", "--json").output)
    assert {"id", "kind", "stage", "version"} <= set(items[0])


def test_show_prints_front_matter_version_and_files():
    result = run("show", "survey-nps")
    assert result.exit_code == 0, result.output
    assert "kind:         survey" in result.output
    assert "wechat.zh-CN.cs.yaml" in result.output


def test_show_an_unknown_id_suggests_the_closest():
    result = run("show", "survey-npx")
    assert isinstance(result.exception, UnknownContentError)
    assert "survey-nps" in result.exception.fix


def test_validate_the_bundled_catalog():
    result = run("validate")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 22 items, 88 variants")


def test_validate_lists_every_problem_with_its_fix(write_item):
    write_item("one", kind="brochure")
    root = write_item("two", files={"email.en.subject.j2": "{{ missing }}"})
    result = run("validate", str(root))
    assert result.exit_code == 1
    assert "one/item.md: kind: unknown kind 'brochure'. Fix: use one of whitepaper" in result.output
    assert "two/email.en.subject.j2: template: undefined variable missing" in result.output
    assert "2 problems in" in result.output


def test_preview_renders_the_email_with_attributes(tmp_path):
    out = tmp_path / "preview.html"
    result = run(
        "preview", "trial-invitation", "--locale", "en",
        "--attr", "first_name=Ana", "--contact-attr", "company=ACME", "--html-out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Subject: Try Ironbridge Cloud on your own machines, free for 30 days" in result.output
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in result.output
    assert "Hi Ana," in result.output
    assert "ACME's own equipment" in result.output
    html = out.read_text(encoding="utf-8")
    assert "Hi Ana," in html
    assert "/t/c/" in html


def test_preview_wechat_prints_the_api_body():
    result = run("preview", "wp-digital-transformation", "--channel", "wechat", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["wechat"]["data"]["keyword1"]["value"] == "制造业数字化转型白皮书"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--attr", "novalue"], "NAME=VALUE"),
        (["--locale", "fr"], "no email variant in fr"),
    ],
)
def test_preview_bad_input_is_a_content_error(args, match):
    result = run("preview", "trial-invitation", *args)
    assert isinstance(result.exception, ContentError)
    assert match in result.exception.one_line()
