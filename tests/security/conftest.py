from tests.security.helpers import clients, recorder  # noqa: F401 - fixtures
