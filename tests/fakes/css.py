"""A fake CSS endpoint: ``POST /css/v1/documents`` takes one signed CSS v1 XML document.

It answers every verified request with an ``Acknowledgement`` of one ``Receipt`` for the signed
``webhook-id``, which ``adapters.css.parse_ack`` reads:

* 200 accepted, with a CSS ``fileNumber`` (``CSS-AF-000001``: the two letters name the kind);
* 400 rejected ``R001`` for a body that is not XML, has a DOCTYPE, is in another namespace,
  fails ``css-v1.xsd``, or whose ``messageId`` is not the signed ``webhook-id``;
* 422 rejected ``R042`` (or ``Faults.reject_code``) for a member in ``reject_members``.

The XSD check uses ``xmlschema``, not the adapter's lxml validator, so the fake is a second,
independent reading of the schema. A refused signature gets a plain-text 401: no ``Receipt``,
since the id is unproven and the refusal is about the channel, not the document.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from importlib.resources import files

import xmlschema
from lxml import etree

from adapters.base import AckStatus, Institution
from adapters.css import NAMESPACE, split_batch
from router.signing import SignatureRejected
from tests.fakes.base import Answer, HttpFake, ReceivedMessage

XML = "application/xml"
MALFORMED = "R001"
REASON_TEXTS = {
    "R001": "Document non conforme au format CSS v1",
    "R010": "Assuré inconnu de la CSS (affiliation manquante)",
    "R011": "Assuré déjà affilié à la branche",
    "R020": "Ayant droit inconnu ou déjà enregistré",
    "R030": "Période close pour les déclarations",
    "R031": "Référence de paiement déjà déclarée",
    "R032": "Annulation d'une déclaration inconnue",
    "R042": "Numéro d'identification inconnu",
    "R050": "Assuré non couvert AT/MP à la date de l'accident",
    "R060": "Prestation maternité non ouverte",
    "R099": "Autre motif",
}
"""FORMAT.md's reason code table, worded as CSS would."""
FILE_PREFIX = {
    "Affiliation": "AF",
    "AffiliationChange": "AM",
    "ContributionDeclaration": "CD",
    "WorkAccidentDeclaration": "AT",
    "MaternityBenefitRequest": "MA",
}


@cache
def css_schema() -> xmlschema.XMLSchema:
    """css-v1.xsd compiled once per process (about a second)."""
    return xmlschema.XMLSchema(str(files("adapters.css").joinpath("css-v1.xsd")))


_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


NS = "{" + NAMESPACE + "}"


def _acknowledgement_root() -> etree._Element:
    issued = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return etree.Element(
        NS + "Acknowledgement", nsmap={None: NAMESPACE}, formatVersion="1", issuedAt=issued
    )


def acknowledgement(
    message_id: str, *, file_number: str | None = None, reason: tuple[str, str] | None = None
) -> bytes:
    """An ``Acknowledgement`` with one ``Receipt``: accepted with a file number, or rejected."""
    root = _acknowledgement_root()
    receipt = etree.SubElement(root, NS + "Receipt", messageId=message_id)
    if reason is None:
        receipt.set("status", "accepted")
        receipt.set("fileNumber", file_number or "CSS-000000")
    else:
        receipt.set("status", "rejected")
        etree.SubElement(receipt, NS + "Reason", code=reason[0]).text = reason[1]
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


class FakeCSS(HttpFake):
    institution = Institution.CSS
    path = "/css/v1/documents"

    def split(self, body: bytes) -> tuple[str, list[tuple[str, bytes]]] | None:
        return split_batch(body)

    def combine(self, answers: list[Answer]) -> Answer:
        """One Acknowledgement holding every document's Receipt."""
        root = _acknowledgement_root()
        for a in answers:
            root.extend(etree.fromstring(a.body, parser=_PARSER).iter(NS + "Receipt"))
        return Answer(200, XML, etree.tostring(root, xml_declaration=True, encoding="UTF-8"))

    def unauthorized(self, error: SignatureRejected) -> Answer:
        return Answer(401, "text/plain", f"signature refused: {error.reason}".encode())

    def answer(
        self, message_id: str, body: bytes, content_type: str
    ) -> tuple[Answer, ReceivedMessage]:
        member: str | None = None

        def refused(status: int, code: str, text: str) -> tuple[Answer, ReceivedMessage]:
            ack = acknowledgement(message_id, reason=(code, text))
            kept = ReceivedMessage(message_id, member, body, AckStatus.REJECTED, code)
            return Answer(status, XML, ack), kept

        try:
            root = etree.fromstring(body, parser=_PARSER)
        except etree.XMLSyntaxError:
            return refused(400, MALFORMED, "Document XML mal formé")
        member = root.get("memberId")
        if root.getroottree().docinfo.doctype:
            return refused(400, MALFORMED, "DOCTYPE interdit")
        qname = etree.QName(root)
        if qname.namespace != NAMESPACE or qname.localname not in FILE_PREFIX:
            return refused(400, MALFORMED, f"Document inconnu (attendu : {NAMESPACE})")
        errors = list(css_schema().iter_errors(body)) if self.schema_checks else []  # no DOCTYPE
        if errors:
            # the path only: a reason may quote a value, and values are personal data
            return refused(400, MALFORMED, f"Non conforme à css-v1.xsd en {errors[0].path}")
        if root.get("messageId") != message_id:
            return refused(400, MALFORMED, "messageId différent du webhook-id signé")
        if self.faults.rejects(member):
            code = self.reject_code()
            return refused(422, code, REASON_TEXTS.get(code, REASON_TEXTS["R099"]))
        number = f"CSS-{FILE_PREFIX[qname.localname]}-{self.recorder.next_seq():06d}"
        ack = acknowledgement(message_id, file_number=number)
        kept = ReceivedMessage(message_id, member, body, AckStatus.ACCEPTED, institution_ref=number)
        return Answer(200, XML, ack), kept

    def extract(self) -> str:
        """CSS's reconciliation statement (CSV) of the documents it accepted."""
        from tests.fakes import holdings

        return holdings.css_extract(holdings.accepted_bodies(self.received))
