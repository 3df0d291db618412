"""What the CSS documents share: namespace, the XSD, a hardened parser, error locations."""

from __future__ import annotations

import re
import threading
from importlib.resources import files

from lxml import etree

from schemas.errors import FieldError

FORMAT_VERSION = 1
NAMESPACE = f"urn:sn:css:jokko:v{FORMAT_VERSION}"
NS_PREFIX = "{" + NAMESPACE + "}"
XSD_RESOURCE = "css-v1.xsd"
CONTENT_TYPE = "application/xml"


def qname(local: str) -> str:
    """``{urn:sn:css:jokko:v1}local``: the Clark name lxml uses for a CSS element."""
    return NS_PREFIX + local


_per_thread = threading.local()
"""lxml parsers and schema validators must not be used by two threads at once (eight push
threads validating CSS answers through one shared XMLSchema crashed the relay): each thread
compiles its own, on first use, never at import."""


def schema() -> etree.XMLSchema:
    """The v1 XSD, read from package data and compiled once per thread."""
    compiled: etree.XMLSchema | None = getattr(_per_thread, "schema", None)
    if compiled is None:
        raw = files(__package__).joinpath(XSD_RESOURCE).read_bytes()
        compiled = _per_thread.schema = etree.XMLSchema(etree.fromstring(raw, parser=safe_parser()))
    return compiled


def safe_parser() -> etree.XMLParser:
    """No entity expansion, no DTD loading, no network: an XXE or a billion laughs goes nowhere."""
    parser: etree.XMLParser | None = getattr(_per_thread, "parser", None)
    if parser is None:
        parser = _per_thread.parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=False,
        )
    return parser


def parse(raw: bytes, *, what: str) -> tuple[etree._Element | None, list[FieldError]]:
    """Parse ``raw`` safely; a document with a DOCTYPE is refused outright (XXE, entity bombs)."""
    if not isinstance(raw, bytes):
        return None, [FieldError("", f"{what} must be bytes", "not_bytes")]
    try:
        root = etree.fromstring(raw, parser=safe_parser())
    except etree.XMLSyntaxError as exc:
        line, column = exc.position
        return None, [
            FieldError(f"{line}:{column}", f"not well-formed XML: {exc.msg}", "xml_syntax")
        ]
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        return None, [
            FieldError("1:0", "a DOCTYPE is not allowed (entities refused)", "dtd_forbidden")
        ]
    return root, []


def check_root(root: etree._Element, expected: set[str]) -> list[FieldError]:
    """The root's namespace (hence format version) and name must be ones this adapter speaks."""
    qn = etree.QName(root)
    loc = f"{root.sourceline}:/{qn.localname}"
    if qn.namespace != NAMESPACE:
        got = qn.namespace or "no namespace"
        version_hint = (
            "unsupported format version"
            if qn.namespace and qn.namespace.startswith("urn:sn:css:jokko:")
            else "wrong namespace"
        )
        return [
            FieldError(
                loc, f"{version_hint}: expected {NAMESPACE}, got {got}", "namespace_mismatch"
            )
        ]
    if qn.localname not in expected:
        return [
            FieldError(
                loc,
                f"root element {qn.localname} is not one of {', '.join(sorted(expected))}",
                "root_unexpected",
            )
        ]
    return []


_QUOTED_VALUES = (
    (re.compile(r"The value '.*?' (?=is not)", re.DOTALL), "The value "),
    (re.compile(r": '.*?' (?=is not a valid value)", re.DOTALL), ": The value "),
)


def redact(message: str) -> str:
    """Drop the offending value from libxml2's message: documents carry names and NINs."""
    for pattern, replacement in _QUOTED_VALUES:
        message = pattern.sub(replacement, message)
    return message


def readable_path(root: etree._Element, path: str | None) -> str:
    """libxml2 writes ``/*/*[2]`` for default-namespace elements; name them instead."""
    if not path:
        return "/"
    try:
        found = root.getroottree().xpath(path)
    except etree.XPathError:
        return path
    if not isinstance(found, list) or not found or not isinstance(found[0], etree._Element):
        return path
    steps = []
    node: etree._Element | None = found[0]
    while node is not None:
        name = local(node)
        parent = node.getparent()
        if parent is not None:
            same = [c for c in parent if c.tag == node.tag]
            if len(same) > 1:
                name += f"[{same.index(node) + 1}]"
        steps.append(name)
        node = parent
    return "/" + "/".join(reversed(steps))


def local(element: etree._Element) -> str:
    return etree.QName(element).localname


def schema_errors(root: etree._Element) -> list[FieldError]:
    """XSD errors as ``line:path`` located field errors (messages carry no document values)."""
    xsd = schema()
    if xsd.validate(root):
        return []
    return [
        FieldError(
            f"{e.line}:{readable_path(root, e.path)}",
            redact(e.message),
            f"xsd_{e.type_name.lower()}",
        )
        for e in xsd.error_log
    ]
