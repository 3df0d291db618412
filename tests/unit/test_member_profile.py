from __future__ import annotations

import pytest

from adapters.base import Institution, MemberProfile, message_id
from schemas import Branch, MemberEnrolled, MemberUpdated, Package
from schemas.examples import load_examples

pytestmark = pytest.mark.unit


def test_profile_is_taken_from_the_enrolment() -> None:
    enrolled = next(e for e in load_examples() if isinstance(e, MemberEnrolled))
    p = MemberProfile.from_enrolment(enrolled)
    assert p.member_id == enrolled.member_id
    assert p.opted_branches == frozenset(enrolled.payload.opted_branches)
    assert (p.package, p.region) == (enrolled.payload.package, enrolled.payload.region)


def test_profile_update_keeps_what_is_not_changed() -> None:
    enrolled = next(e for e in load_examples() if isinstance(e, MemberEnrolled))
    update = next(e for e in load_examples() if isinstance(e, MemberUpdated))
    narrowed = update.model_copy(
        update={
            "payload": update.payload.model_copy(
                update={
                    "changes": update.payload.changes.model_copy(
                        update={
                            "opted_branches": (Branch.HEALTH, Branch.OLD_AGE),
                            "package": Package.COMPLEMENTARY,
                            "region": None,
                            "departement": None,
                        }
                    )
                }
            )
        }
    )
    p = MemberProfile.from_enrolment(enrolled).updated(narrowed)
    assert p.opted_branches == {Branch.HEALTH, Branch.OLD_AGE}
    assert p.package == Package.COMPLEMENTARY
    assert (p.region, p.departement) == (enrolled.payload.region, enrolled.payload.departement)


def test_message_ids_are_derived_and_distinct() -> None:
    e = load_examples()[0].event_id
    a = message_id(Institution.CMU, e, "fhir.transaction")
    assert a == message_id(Institution.CMU, e, "fhir.transaction")
    others = {
        message_id(Institution.CSS, e, "fhir.transaction"),
        message_id(Institution.CMU, e, "fhir.transaction", 1),
        message_id(Institution.CMU, e, "css.affiliation"),
    }
    assert a not in others
    assert len(others) == 3
