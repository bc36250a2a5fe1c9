"""Compile-once email HTML: CSS inlined at load, per-contact values spliced in at send.

CSS inlining costs more than the Jinja render itself, yet for almost every template the
styles do not depend on the contact. When the per-contact names (the declared variables and
``unsubscribe_url``) appear only as plain ``{{ name }}`` output (no filter, no condition, no
loop, no assignment), the HTML is a fixed skeleton with holes. We render it once with marker
values, inline the CSS once, and cut the result into literal text, value holes and link
holes. A send then joins the pieces, escaping each value and signing each link.

The skeleton is used only after proving it: at load, for sample values (with HTML
characters in them), the spliced output must equal the full render-then-inline output
once entities are decoded. Any template that fails the static rule or that proof takes
the full path at every send, with identical results.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import css_inline
from jinja2 import Template, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import escape

from ._render import rewrite_links

_MARKER = "stagecoachslot{}x"
_LITERAL, _VALUE, _LINK = 0, 1, 2
_PROBES = ('<b>&"Ann\'s" & co</b>', "{{ 7*7 }} Zoë 王工 https://x.example/?a=1&b=2")


@dataclass(frozen=True)
class Skeleton:
    """Pre-inlined HTML cut into pieces: (0, text), (1, variable name), (2, url, literal)."""

    parts: tuple[tuple[Any, ...], ...]
    rewrite_after: bool
    """A link contains a per-contact value: run the full link rewrite after splicing."""

    def render(self, values: Mapping[str, str], track: Callable[[str], str | None]) -> str:
        """The HTML for ``values`` with each static link passed through ``track``."""
        out: list[str] = []
        for part in self.parts:
            if part[0] == _LITERAL:
                out.append(part[1])
            elif part[0] == _VALUE:
                out.append(str(escape(values[part[1]])))
            else:
                tracked = track(part[1])
                out.append(part[2] if tracked is None else html.escape(tracked, quote=True))
        markup = "".join(out)
        return rewrite_links(markup, track) if self.rewrite_after else markup


def _walk(node: nodes.Node, parent: nodes.Node | None) -> Iterator[tuple[nodes.Node, Any]]:
    yield node, parent
    for child in node.iter_child_nodes():
        yield from _walk(child, node)


def _only_printed(ast: nodes.Template, names: frozenset[str]) -> bool:
    return all(
        isinstance(parent, nodes.Output)
        for node, parent in _walk(ast, None)
        if isinstance(node, nodes.Name) and node.name in names
    )


def build_skeleton(
    env: ImmutableSandboxedEnvironment,
    name: str,
    template: Template,
    context: Mapping[str, Any],
    per_contact: frozenset[str],
    inliner: css_inline.CSSInliner,
    unsubscribe_name: str = "unsubscribe_url",
) -> Skeleton | None:
    """A proven skeleton for ``template``, or ``None`` to use the full path.

    Args:
        env: The HTML environment (its loader resolves the layouts).
        name: The template's loader name.
        template: The compiled template.
        context: A full render context (its per-contact values are replaced by markers).
        per_contact: Names whose values change per contact.
        inliner: The CSS inliner sends use.
        unsubscribe_name: The per-contact name holding our own (never tracked) link.
    """
    loader = env.loader
    if loader is None:
        return None
    # The template and every layout it extends or includes must follow the static rule.
    pending, seen = [name], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        source = loader.get_source(env, current)[0]
        if _MARKER.split("{")[0] in source:
            return None  # the template itself contains our marker text: cannot cut safely
        ast = env.parse(source)
        if not _only_printed(ast, per_contact):
            return None
        pending.extend(ref for ref in _referenced(ast) if ref is not None)

    names = sorted(per_contact)
    markers = {n: _MARKER.format(i) for i, n in enumerate(names)}
    marked = template.render({**context, **markers})
    inlined = inliner.inline(marked)
    if any(marked.count(m) != inlined.count(m) for m in markers.values()):
        return None  # css_inline moved or dropped a value (inside <style>, say): not safe

    by_marker = {m: n for n, m in markers.items()}
    pattern = re.compile(
        "|".join(re.escape(m) for m in sorted(markers.values(), key=len, reverse=True))
        + r'|(?<=href=")(?i:https?)://[^"]+(?=")'
    )
    parts: list[tuple[Any, ...]] = []
    rewrite_after = False
    position = 0
    for match in pattern.finditer(inlined):
        if match.start() > position:
            parts.append((_LITERAL, inlined[position : match.start()]))
        token = match.group(0)
        if token in by_marker:
            parts.append((_VALUE, by_marker[token]))
        elif any(m in token for m in by_marker):
            rewrite_after = True  # a personalised URL: track it after splicing
            parts.extend(_split_values(token, pattern, by_marker))
        else:
            parts.append((_LINK, html.unescape(token), token))
        position = match.end()
    parts.append((_LITERAL, inlined[position:]))
    # A value printed inside an href (other than our own unsubscribe link) is a URL the
    # contact's data supplies: the full rewrite after splicing tracks it like any link.
    for var, marker in markers.items():
        if var != unsubscribe_name and re.search(r'href="[^"]*' + re.escape(marker), inlined):
            rewrite_after = True
    skeleton = Skeleton(
        parts=tuple(p for p in parts if p != (_LITERAL, "")), rewrite_after=rewrite_after
    )

    # Prove it: spliced output equals the full path's for awkward sample values.
    for probe in _PROBES:
        values = {n: probe for n in names}
        full = inliner.inline(template.render({**context, **values}))
        spliced = skeleton.render(values, lambda _url: None)
        if html.unescape(full) != html.unescape(spliced):
            return None
    return skeleton


def _split_values(
    token: str, pattern: re.Pattern[str], by_marker: Mapping[str, str]
) -> list[tuple[Any, ...]]:
    parts: list[tuple[Any, ...]] = []
    position = 0
    for match in pattern.finditer(token):
        if match.group(0) in by_marker:
            if match.start() > position:
                parts.append((_LITERAL, token[position : match.start()]))
            parts.append((_VALUE, by_marker[match.group(0)]))
            position = match.end()
    parts.append((_LITERAL, token[position:]))
    return parts


def _referenced(ast: nodes.Template) -> Iterator[str | None]:
    yield from meta.find_referenced_templates(ast)
