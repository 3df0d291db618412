"""Fixtures the e2e tier takes from the integration tier rather than copying them: the API on a
real uvicorn (``api``), the fake institutions (``partners``) and a real router + relay over them
(``start``)."""

from tests.integration.test_api import api
from tests.integration.test_partners import partners, start

__all__ = ["api", "partners", "start"]
