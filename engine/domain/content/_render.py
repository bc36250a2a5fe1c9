"""The sandboxed Jinja2 environments, the static template checks, and link rewriting."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator, Mapping

import css_inline
from jinja2 import DictLoader, StrictUndefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

BUILTIN_NAMES = frozenset({"content_id", "kind", "locale", "title", "asset_url", "unsubscribe_url"})
"""Names every template may use without declaring them; the library fills them in."""

WECHAT_FIELD_LIMIT = 20
"""WeChat template-message field values: at most 20 characters, one line."""


def make_environment(
    templates: Mapping[str, str], *, html_mode: bool
) -> ImmutableSandboxedEnvironment:
    """A sandboxed environment over ``templates`` (name to source).

    Immutable sandbox: templates cannot call ``list.append`` and friends either.
    ``StrictUndefined``: a missing variable fails loudly instead of sending a blank.
    The default globals (``cycler``, ``joiner``, ``namespace``, ``lipsum``, ``range``,
    ``dict``) are removed: marketing copy needs none of them, and each is a handle someone
    could try to climb towards Python internals from.
    """
    env = ImmutableSandboxedEnvironment(
        loader=DictLoader(dict(templates)),
        undefined=StrictUndefined,
        autoescape=html_mode,
        auto_reload=False,
        keep_trailing_newline=False,
        cache_size=-1,
    )
    env.globals.clear()
    return env


def _walk(node: nodes.Node) -> Iterator[nodes.Node]:
    yield node
    for child in node.iter_child_nodes():
        yield from _walk(child)


def internals_access(ast: nodes.Template) -> list[str]:
    """Expressions in ``ast`` that reach for Python internals (dunder or private names).

    The sandbox already refuses them at render time; refusing them at load time as well
    means such a template never reaches the catalog, even on a branch sample values miss.
    """
    found: list[str] = []
    for node in _walk(ast):
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            found.append(f".{node.attr}")
        elif isinstance(node, nodes.Name) and node.name.startswith("_"):
            found.append(node.name)
        elif isinstance(node, nodes.Const) and isinstance(node.value, str) and "__" in node.value:
            found.append(repr(node.value))
    return found


# css_inline (html5ever) writes attribute names in lower case and values double-quoted,
# so a literal-prefixed pattern is exact here, and several times faster than \b + IGNORECASE.
_HREF = re.compile(r'href="((?i:https?)://[^"]+)"')


def rewrite_links(markup: str, replace: Callable[[str], str | None]) -> str:
    """Every ``href="http(s)://..."`` in ``markup`` replaced by ``replace(url)``.

    ``markup`` is serialised by css_inline (html5ever), so attributes are double-quoted
    and ``&`` is written ``&amp;``: the URL is unescaped before ``replace`` sees it.
    ``replace`` returns ``None`` to keep a link as it is (our own unsubscribe link).
    """

    def _sub(match: re.Match[str]) -> str:
        new = replace(html.unescape(match.group(1)))
        if new is None:
            return match.group(0)
        return f'href="{html.escape(new, quote=True)}"'

    return _HREF.sub(_sub, markup)


def make_inliner() -> css_inline.CSSInliner:
    """One inliner, built once. Remote stylesheets are never fetched: rendering does no I/O
    and a template cannot make a worker call a URL of its choosing."""
    return css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)


def add_pixel(markup: str, pixel_url: str) -> str:
    """``markup`` with a 1x1 open-tracking image just before ``</body>``."""
    tag = (
        f'<img src="{html.escape(pixel_url, quote=True)}" width="1" height="1" alt="" '
        'style="display:block;border:0;width:1px;height:1px">'
    )
    index = markup.rfind("</body>")
    if index == -1:
        return markup + tag
    return markup[:index] + tag + markup[index:]


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (line breaks included) made one space."""
    return " ".join(text.split())


def fit_wechat_field(text: str) -> str:
    """A field value made to fit WeChat's limits at send time.

    Load-time validation guarantees the defaults fit; a contact attribute may still be
    long (a company name), and WeChat rejects the whole message for one long field, so the
    value is shortened with an ellipsis rather than failing the send.
    """
    flat = one_line(text)
    if len(flat) <= WECHAT_FIELD_LIMIT:
        return flat
    return flat[: WECHAT_FIELD_LIMIT - 1] + "…"
